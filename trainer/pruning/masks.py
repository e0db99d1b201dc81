"""Pruning masks: the bit-packed file format beside an adapter, its JSON report, and re-applying masks to a model.

A mask is a ``torch.bool`` tensor shaped like its weight (``True`` keeps a weight), keyed by the canonical in-memory
module name, the same with and without PEFT (:func:`canonical_name`). See docs/pruning.md ("Files").
"""

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from dataset_builder.atomic import atomic_path, write_json


logger = logging.getLogger(__name__)

MASKS_FILE = "pruning_masks.safetensors"
REPORT_FILE = "pruning.json"
FORMAT = "geollava-pruning-masks/1"

_PEFT_PREFIX = "base_model.model."


def canonical_name(name: str) -> str:
    """The module name a mask is keyed by: the in-memory name without PEFT's prefix and ``.base_layer``.

    ``base_model.model.model.language_model.layers.0.self_attn.q_proj.base_layer`` (a LoRA-wrapped layer) and
    ``model.language_model.layers.0.self_attn.q_proj`` (the plain model) both give the latter.
    """
    return name.removeprefix(_PEFT_PREFIX).replace(".base_layer", "")


def check_full_precision(name: str, weight: torch.Tensor) -> None:
    """Refuse a quantized weight: pruning ranks and zeroes real values, never packed 4-bit or int8 bytes.

    Raises:
        TypeError: If ``weight`` is a bitsandbytes ``Params4bit``/``Int8Params`` or any non-floating tensor.
    """
    kind = type(weight).__name__
    if kind in ("Params4bit", "Int8Params") or not weight.dtype.is_floating_point:
        raise TypeError(
            f"{name}: the weight is a quantized {kind} of dtype {weight.dtype}, not full-precision values. "
            "Pruning packed 4-bit/8-bit bytes would silently corrupt the model (NF4 byte 0 is -absmax, not 0). "
            "Prune the full-precision model first with trainer.pruning.pruned_copy.prune_before_quantization(...), "
            "then load that pruned copy in 4-bit/8-bit."
        )


def mask_sparsity(masks: dict[str, torch.Tensor]) -> tuple[float, dict[str, float]]:
    """The fraction of pruned weights, over all masks and per module.

    Returns:
        ``(overall, per_module)``; ``overall`` weights each module by its size.
    """
    pruned = total = 0
    per_module = {}
    for name, mask in masks.items():
        n_pruned = int(mask.numel() - mask.count_nonzero())
        per_module[name] = n_pruned / mask.numel()
        pruned += n_pruned
        total += mask.numel()
    return (pruned / total if total else 0.0), per_module


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """``np.packbits`` of the flattened boolean mask, as a ``uint8`` tensor (8 weights per byte).

    Raises:
        ValueError: If the mask is not a boolean tensor.
    """
    if mask.dtype != torch.bool:
        raise ValueError(f"mask has dtype {mask.dtype}; masks must be torch.bool (True = kept)")
    return torch.from_numpy(np.packbits(mask.detach().reshape(-1).cpu().numpy()))


def unpack_mask(bits: torch.Tensor, shape) -> torch.Tensor:
    """The boolean mask of ``shape`` that :func:`pack_mask` packed into ``bits``."""
    numel = int(np.prod(shape))
    return torch.from_numpy(np.unpackbits(bits.numpy(), count=numel).astype(bool)).reshape(shape)


@dataclass(frozen=True)
class SavedMasks:
    """Masks as a folder holds them: bit-packed (:func:`pack_mask`), with their shapes and ``pruning.json``'s report.

    The pruned copy (``trainer.pruning.pruned_copy.prune_before_quantization``) returns one, and the training
    callback receives one: masks pass from stage to stage as this value, packed (1/8 of the boolean masks' size).

    Attributes:
        folder: The folder they are saved in (a pruned copy, a ``checkpoint-N`` folder, an adapter folder).
        packed: Canonical module name -> ``uint8`` packed mask.
        shapes: Module -> the weight's shape.
        report: What ``pruning.json`` holds (method, target sparsity, sparsity reached, threshold, ...).
    """

    folder: Path
    packed: dict[str, torch.Tensor]
    shapes: dict[str, list[int]]
    report: dict

    def unpack(self) -> dict[str, torch.Tensor]:
        """Canonical module name -> boolean CPU mask (``True`` = kept)."""
        return {name: unpack_mask(bits, self.shapes[name]) for name, bits in self.packed.items()}

    @classmethod
    def read(cls, directory: str | Path) -> "SavedMasks":
        """Read the masks that :func:`save_masks` wrote into ``directory``, still packed.

        Raises:
            FileNotFoundError: If the folder holds no masks file.
            ValueError: If the file is not a masks file of this format or a packed mask does not fit its shape.
        """
        path = Path(directory) / MASKS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{str(directory)!r} holds no {MASKS_FILE}")
        packed = {}
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ValueError(f"{path}: metadata 'format' is {meta.get('format')!r}, expected {FORMAT!r}")
            shapes = json.loads(meta["shapes"])
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if name not in shapes:
                    raise ValueError(f"{path}: tensor {name!r} has no shape in the metadata")
                shape, bits = shapes[name], f.get_tensor(name)
                needed = (int(np.prod(shape)) + 7) // 8
                if bits.numel() != needed:
                    raise ValueError(f"{path}: {name!r} holds {bits.numel()} bytes, shape {shape} needs {needed}")
                packed[name] = bits
        report = json.loads(meta.get("metadata", "{}"))
        return cls(Path(directory), packed, {name: shapes[name] for name in packed}, report)


def save_masks(masks: dict[str, torch.Tensor], out_dir: str | Path, metadata: dict) -> SavedMasks:
    """Write ``pruning_masks.safetensors`` (bit-packed) and ``pruning.json`` into ``out_dir`` (atomic writes).

    Args:
        masks: Canonical module name -> boolean mask (``True`` = kept).
        out_dir: Folder to write into; created if missing.
        metadata: JSON-serialisable run facts (``method``, ``target_sparsity``, ``threshold``, ...); the sparsity
            reached and the per-module sparsity are computed here from the masks, so they always match the file.

    Returns:
        What was written.

    Raises:
        ValueError: If a mask is not a boolean tensor.
    """
    packed, shapes, pruned = {}, {}, {}
    for name, mask in masks.items():
        try:
            packed[name] = pack_mask(mask)
        except ValueError as error:
            raise ValueError(f"mask {name!r}: {error}") from error
        shapes[name] = list(mask.shape)
        pruned[name] = int(mask.numel() - mask.count_nonzero())
    return save_packed_masks(packed, shapes, pruned, out_dir, metadata)


def save_packed_masks(
    packed: dict[str, torch.Tensor], shapes: dict[str, list[int]], pruned: dict[str, int], out_dir, metadata: dict
) -> SavedMasks:
    """:func:`save_masks` for masks already bit-packed (:func:`pack_mask`), e.g. by the streaming checkpoint pruner.

    Args:
        packed: Canonical module name -> ``uint8`` packed mask.
        shapes: Module -> the weight's shape.
        pruned: Module -> how many of its weights are pruned.
        out_dir: Folder to write into; created if missing.
        metadata: Run facts for ``pruning.json`` (see :func:`save_masks`).

    Returns:
        What was written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sizes = {name: int(np.prod(shape)) for name, shape in shapes.items()}
    n_weights, n_pruned = sum(sizes.values()), sum(pruned.values())
    report = {
        **metadata,
        "sparsity_reached": n_pruned / n_weights if n_weights else 0.0,
        "n_weights": n_weights,
        "n_pruned": n_pruned,
        "per_module_sparsity": {name: pruned[name] / sizes[name] for name in packed},
    }
    st_metadata = {"format": FORMAT, "shapes": json.dumps(shapes), "metadata": json.dumps(report, default=str)}
    with atomic_path(out / MASKS_FILE) as tmp:
        save_file(dict(packed), tmp, metadata=st_metadata)
    write_json(out / REPORT_FILE, report, indent=2)
    logger.info("saved %d pruning masks (sparsity %.4f) to %s", len(packed), report["sparsity_reached"], out)
    return SavedMasks(out, dict(packed), dict(shapes), json.loads(st_metadata["metadata"]))


def load_masks(directory: str | Path) -> dict[str, torch.Tensor] | None:
    """Read the masks that :func:`save_masks` wrote into ``directory``, unpacked.

    Returns:
        Canonical module name -> boolean mask on the CPU, or ``None`` if the folder holds no masks file.

    Raises:
        ValueError: If the file is not a masks file of this format or a packed mask does not fit its shape.
    """
    if not (Path(directory) / MASKS_FILE).is_file():
        return None
    return SavedMasks.read(directory).unpack()


def mask_targets(model: nn.Module, names) -> dict[str, nn.Parameter]:
    """The weights that masks keyed by ``names`` apply to, resolving PEFT's ``.base_layer``.

    Raises:
        ValueError: If a name matches no module with a weight.
    """
    wanted = set(names)
    found = {}
    for name, module in model.named_modules():
        if hasattr(module, "base_layer") or ".lora_" in name or "modules_to_save" in name:
            continue  # the frozen weight of a PEFT-wrapped layer is its base_layer child
        key = canonical_name(name)
        if key in wanted and isinstance(getattr(module, "weight", None), torch.Tensor):
            found[key] = module.weight
    missing = sorted(wanted - found.keys())
    if missing:
        raise ValueError(
            f"{len(missing)} mask(s) match no module of this {type(model).__name__}, e.g. {missing[0]!r}; mask keys "
            "are in-memory module names without PEFT prefixes (were the masks made for another model?)"
        )
    return found


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the pruned weights in place, on a plain model or a ``PeftModel``.

    Args:
        model: The model (its weights must be full precision: apply masks before quantizing).
        masks: Canonical module name -> boolean mask (``True`` = kept), e.g. from :func:`load_masks`.

    Raises:
        TypeError: If a target weight is quantized (bitsandbytes 4-bit/8-bit).
        ValueError: If a mask matches no module or its shape differs from the weight's.
    """
    targets = mask_targets(model, masks)
    for name, weight in targets.items():
        check_full_precision(name, weight)
        mask = masks[name]
        if tuple(mask.shape) != tuple(weight.shape):
            raise ValueError(f"mask {name!r} has shape {tuple(mask.shape)}, the weight has {tuple(weight.shape)}")
        weight.masked_fill_(~mask.to(weight.device), 0)
