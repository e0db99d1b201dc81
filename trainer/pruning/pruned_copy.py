"""The pruned full-precision copy a quantized base is loaded from: pruned first, quantized after, masks returned.

bitsandbytes packs 4-bit weights, and pruning them would zero packed bytes (NF4 code 0 is -absmax, not 0), so the
full-precision checkpoint is pruned into a copy, tensor by tensor from its safetensors shards for magnitude pruning,
and the trainer quantizes that copy. See docs/pruning.md ("QLoRA: prune before quantizing").
"""

import ctypes
import ctypes.util
import json
import logging
import shutil
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForImageTextToText
from transformers.core_model_loading import revert_weight_conversion

from dataset_builder.atomic import atomic_dir
from trainer.pruning.masks import (
    MASKS_FILE,
    REPORT_FILE,
    SavedMasks,
    apply_masks,
    pack_mask,
    save_masks,
    save_packed_masks,
)
from trainer.pruning.methods import (
    FamilyParts,
    PruningConfig,
    collect_targets,
    compute_masks,
    global_threshold,
    layer_mask,
    magnitude_metadata,
    numels,
)


logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrunedCopy:
    """What :func:`prune_before_quantization` wrote: the pruned copy and its masks, for the training callback.

    Attributes:
        path: The folder of the pruned copy (weights, processor files, masks), to load quantized.
        masks: Its masks (``masks.folder`` is ``path``).
    """

    path: Path
    masks: SavedMasks


def prune_before_quantization(
    model_path: str | Path,
    config: PruningConfig,
    out_dir: str | Path,
    family: FamilyParts,
    calibration: Iterable[dict] | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> PrunedCopy:
    """Prune a copy of a base model in its own dtype, for QLoRA: the trainer then loads the copy in 4-bit.

    NF4 and int8 quantization keep pruned weights exactly zero, so pruning first and quantizing after is exact,
    whereas pruning the packed bytes of a loaded 4-bit model corrupts it. The copy holds the model, the processor
    files and the masks (:func:`trainer.pruning.masks.save_masks`); the masks are also returned, for the training
    callback, which saves them beside the adapter.

    * ``magnitude`` streams the checkpoint's safetensors shards tensor by tensor (:func:`prune_checkpoint`): the
      exact global threshold over all target weights, masks in the checkpoint's dtype, the copy written in that
      dtype; peak memory is one weight plus the packed masks.
    * ``wanda`` needs activations: the model is loaded whole (in its own dtype, or ``dtype``) on ``device``,
      calibrated there, pruned and saved with ``save_pretrained``. So is a magnitude checkpoint that cannot be
      streamed (no safetensors, a target missing from the shards) or an explicit ``dtype``.

    Args:
        model_path: Local folder or Hub id of the base model.
        config: The pruning options.
        out_dir: Folder for the pruned copy. If it already holds a copy pruned the same way from the same model, it
            is reused.
        family: The model's family (``trainer.models.families.Family``).
        calibration: Calibration model inputs (wanda only).
        dtype: Load and save the copy in this dtype (the loaded path); ``None`` keeps the checkpoint's.
        device: Where the loaded path runs, Wanda's calibration included (the training device); ``None``: the CPU.

    Returns:
        The pruned copy's folder and its masks.

    Raises:
        FileExistsError: If ``out_dir`` exists and is not such a copy.
    """
    out = Path(out_dir)
    wanted = {"method": config.pruning_method, "target_sparsity": config.pruning_sparsity, "source": str(model_path)}
    if out.exists():
        report_path = out / REPORT_FILE
        report = json.loads(report_path.read_text()) if report_path.is_file() else {}
        if {k: report.get(k) for k in wanted} == wanted:
            logger.info("reusing the pruned copy in %s", out)
            return PrunedCopy(out, SavedMasks.read(out))
        raise FileExistsError(f"out_dir {str(out)!r} exists and is not a copy of {model_path} pruned the same way")
    if config.pruning_method == "magnitude" and dtype is None:
        try:
            return _prune_streaming(model_path, config, out, family)
        except StreamingUnsupported as why:
            logger.warning("cannot prune %s tensor by tensor (%s): loading it whole instead", model_path, why)
    return _prune_loaded(model_path, config, out, family, calibration, dtype, device)


def _prune_streaming(model_path: str | Path, config: PruningConfig, out: Path, family: FamilyParts) -> PrunedCopy:
    folder = local_checkpoint(model_path)
    entries = checkpoint_entries(folder)
    with torch.device("meta"):  # the module tree and names, no weights
        model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(folder))
    targets = target_entries(model, collect_targets(model, family), entries)
    with atomic_dir(out) as tmp:
        pruned = prune_checkpoint(
            folder,
            tmp,
            targets,
            config.pruning_sparsity,
            sample_size=config.pruning_threshold_sample_size,
            exact=config.pruning_exact_threshold,
            seed=config.pruning_seed,
        )
        metadata = {
            "method": "magnitude",
            "target_sparsity": config.pruning_sparsity,
            **magnitude_metadata(config, pruned.threshold),
            "source": str(model_path),
            "dtype": pruned.dtype,
            "pruned_by": "streaming the safetensors shards tensor by tensor",
        }
        saved = save_packed_masks(pruned.packed, pruned.shapes, pruned.pruned, tmp, metadata)
    logger.info("saved the pruned copy of %s (%s) to %s", model_path, pruned.dtype, out)
    return PrunedCopy(out, replace(saved, folder=out))  # atomic_dir has renamed tmp to out


def _prune_loaded(
    model_path,
    config: PruningConfig,
    out: Path,
    family: FamilyParts,
    calibration,
    dtype: torch.dtype | None,
    device: str | torch.device | None,
) -> PrunedCopy:
    device = torch.device(device or "cpu")
    placement = {} if device.type == "cpu" else {"device_map": {"": str(device)}}
    model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=dtype or "auto", **placement)
    masks, metadata = compute_masks(model, config, family, calibration)
    apply_masks(model, masks)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        copy_side_files(local_checkpoint(model_path), tmp, weights=False)
        metadata = {**metadata, "source": str(model_path), "dtype": str(model.dtype), "pruned_by": "loading the model"}
        metadata["pruned_on"] = str(device)
        saved = save_masks(masks, tmp, metadata)
    logger.info("saved the pruned copy of %s (%s, pruned on %s) to %s", model_path, model.dtype, device, out)
    del model  # the quantized copy is loaded next: free this one's device memory first
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return PrunedCopy(out, replace(saved, folder=out))  # atomic_dir has renamed tmp to out


# ---- the checkpoint, tensor by tensor -----------------------------------------------------------------------------
# A 7B checkpoint is ~14 GB in bf16, 28 GB once loaded in fp32: here its target weights are read one at a time from
# the shards in their own dtype, two passes find the exact global threshold, then the shards are copied byte for byte
# and each target is rewritten in place at its own offsets, pruned. Peak memory: one weight plus the packed masks.
# The safetensors layout is read directly (8-byte header length, JSON header of dtype/shape/offsets, raw tensors);
# in-memory names map to the checkpoint's keys through transformers' own key conversion (save_pretrained's).

DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}
#: Files a pruned copy takes from the base besides its weights: configs, tokenizer, processor, templates.
CHECKPOINT_FILES = ("*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken", "*.py")


def _libc_trim():
    # glibc keeps freed heap memory that later small allocations (the packed masks, the threshold candidates) pin in
    # place; with one weight after another freed around them, the resident size would grow with the model.
    # malloc_trim(0) gives the freed pages back to the system (a no-op elsewhere than glibc).
    name = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    return (lambda: trim(0)) if trim else (lambda: None)


release_freed_memory = _libc_trim()


class StreamingUnsupported(ValueError):
    """The checkpoint cannot be pruned tensor by tensor (no safetensors shards, or a target key is not found)."""


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lies in a safetensors file.

    Attributes:
        file: The shard.
        key: Its key in the shard.
        dtype: The safetensors dtype name (``BF16``, ``F32``...).
        shape: The tensor's shape.
        start: Absolute byte offset of its data in the file.
        end: Absolute byte offset of the end of its data.
    """

    file: Path
    key: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    def read(self) -> torch.Tensor:
        """The tensor, read from disk with one ``pread`` into a fresh buffer."""
        if self.dtype not in DTYPES:
            raise StreamingUnsupported(f"{self.file.name}: {self.key!r} is {self.dtype}, not a float dtype")
        buffer = torch.empty(self.end - self.start, dtype=torch.uint8)
        with open(self.file, "rb") as f:
            f.seek(self.start)
            n = f.readinto(memoryview(buffer.numpy()))
        if n != self.end - self.start:
            raise OSError(f"{self.file}: short read of {self.key!r} ({n} of {self.end - self.start} bytes)")
        return buffer.view(DTYPES[self.dtype]).reshape(self.shape)

    def write(self, folder: Path, tensor: torch.Tensor) -> None:
        """Write ``tensor`` (same dtype and shape) over this entry's bytes in the same-named shard of ``folder``."""
        data = tensor.contiguous().view(torch.uint8).reshape(-1).numpy()
        with open(folder / self.file.name, "r+b") as f:
            f.seek(self.start)
            f.write(memoryview(data))


def read_header(path: Path) -> dict[str, TensorEntry]:
    """The tensors of one safetensors file, by key (its ``__metadata__`` left out)."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    base = 8 + length
    entries = {}
    for key, info in header.items():
        if key != "__metadata__":
            start, end = info["data_offsets"]
            entries[key] = TensorEntry(path, key, info["dtype"], tuple(info["shape"]), base + start, base + end)
    return entries


def local_checkpoint(model_path: str | Path) -> Path:
    """The checkpoint's folder: ``model_path`` itself, or a snapshot of the Hub repo it names (weights included)."""
    path = Path(model_path)
    if path.is_dir():
        return path
    return Path(snapshot_download(str(model_path), allow_patterns=list(CHECKPOINT_FILES)))


def copy_side_files(source: Path, out: Path, *, weights: bool) -> None:
    """Copy the checkpoint's files (configs, tokenizer, processor, template) into ``out``; its shards too if asked.

    Files already in ``out`` (e.g. what ``save_pretrained`` just wrote) are kept.
    """
    for path in sorted(source.iterdir()):
        if not path.is_file() or (out / path.name).exists() or path.name == MASKS_FILE:
            continue
        is_weights = path.name.endswith(".safetensors") or path.name.endswith(".safetensors.index.json")
        if any(path.match(pattern) for pattern in CHECKPOINT_FILES) and (weights or not is_weights):
            shutil.copyfile(path, out / path.name)  # kernel-side copy (copy_file_range): no user-space buffer


def checkpoint_entries(folder: Path) -> dict[str, TensorEntry]:
    """Every tensor of the checkpoint's safetensors shards, by key.

    Raises:
        StreamingUnsupported: If the folder has no safetensors shard (e.g. only ``pytorch_model.bin``).
    """
    shards = sorted(p for p in folder.glob("*.safetensors") if p.name != MASKS_FILE)
    if not shards:
        raise StreamingUnsupported(f"{folder}: no *.safetensors shard to read tensor by tensor")
    entries: dict[str, TensorEntry] = {}
    for shard in shards:
        entries.update(read_header(shard))
    return entries


def target_entries(model: torch.nn.Module, targets: Mapping, entries: dict[str, TensorEntry]) -> dict:
    """Canonical target name -> its tensor in the checkpoint, through the key conversion ``save_pretrained`` uses.

    Args:
        model: The model built from the checkpoint's config (on the meta device: no weights needed).
        targets: Canonical name -> ``nn.Linear`` (from ``collect_targets`` on that model).
        entries: The checkpoint's tensors (:func:`checkpoint_entries`).

    Raises:
        StreamingUnsupported: If a target's weight is not in the checkpoint under either name, or its shape differs.
    """
    in_memory = {f"{name}.weight": layer.weight for name, layer in targets.items()}
    on_disk = {id(tensor): key for key, tensor in revert_weight_conversion(model, dict(in_memory)).items()}
    found = {}
    for name, layer in targets.items():
        keys = [on_disk.get(id(layer.weight)), f"{name}.weight"]
        key = next((k for k in keys if k in entries), None)
        if key is None:
            raise StreamingUnsupported(f"{name}: its weight is in no shard (tried {[k for k in keys if k]})")
        if entries[key].shape != tuple(layer.weight.shape):
            raise StreamingUnsupported(
                f"{key}: shape {entries[key].shape} in the checkpoint, {tuple(layer.weight.shape)} in the model"
            )
        found[name] = entries[key]
    return found


class CheckpointWeights(Mapping):
    """Canonical name -> the weight read from disk on access (one at a time); ``numels()`` reads nothing."""

    def __init__(self, entries: dict[str, TensorEntry]):
        """Wrap the targets' entries (:func:`target_entries`)."""
        self.entries = entries

    def __getitem__(self, name: str) -> torch.Tensor:
        release_freed_memory()  # the previous weight's buffers, before reading the next one
        return self.entries[name].read()

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def numels(self) -> dict[str, int]:
        """Elements of each weight, from the header."""
        return {name: int(torch.Size(e.shape).numel()) for name, e in self.entries.items()}


@dataclass
class PrunedCheckpoint:
    """What :func:`prune_checkpoint` wrote and found.

    Attributes:
        packed: Canonical name -> bit-packed mask (``trainer.pruning.masks.pack_mask``).
        shapes: Canonical name -> weight shape.
        pruned: Canonical name -> weights pruned in it.
        threshold: The global magnitude threshold.
        dtype: The checkpoint's dtype of the targets (``BF16``...).
    """

    packed: dict[str, torch.Tensor]
    shapes: dict[str, list[int]]
    pruned: dict[str, int]
    threshold: float
    dtype: str


def prune_checkpoint(
    source: Path,
    out: Path,
    entries: dict[str, TensorEntry],
    sparsity: float,
    *,
    sample_size: int,
    exact: bool,
    seed: int,
) -> PrunedCheckpoint:
    """Copy the checkpoint in ``source`` to ``out`` with its targets magnitude-pruned (global threshold), in place.

    Args:
        source: The checkpoint folder.
        out: An empty folder for the copy (the caller makes it atomic).
        entries: The targets' tensors (:func:`target_entries`), in module order.
        sparsity: Target fraction pruned, in (0, 1).
        sample_size: Weights sampled to bracket the threshold.
        exact: Find the exact global threshold (exactly ``round(s N)`` pruned); else the sample's estimate.
        seed: Seed of the sample.
    """
    weights = CheckpointWeights(entries)
    threshold, keep = global_threshold(weights, sparsity, sample_size=sample_size, exact=exact, seed=seed)
    copy_side_files(source, out, weights=True)
    packed, pruned = {}, {}
    # Reversed module order, as the tie plan keeps the surplus of ties in the last layers first.
    for name in tqdm(list(reversed(entries)), desc="pruning the checkpoint", unit="tensor"):
        weight = weights[name]
        mask = layer_mask(weight, threshold, keep.get(name, 0))
        weight.masked_fill_(~mask, 0)
        entries[name].write(out, weight)
        packed[name], pruned[name] = pack_mask(mask), int(mask.numel() - mask.count_nonzero())
        del weight, mask
    order = list(entries)
    dtypes = {e.dtype for e in entries.values()}
    sizes = numels(weights)
    logger.info(
        "pruned %d tensors (%d weights, dtype %s) of %s at threshold %g",
        len(order),
        sum(sizes.values()),
        dtypes,
        source,
        threshold,
    )
    return PrunedCheckpoint(
        packed={n: packed[n] for n in order},
        shapes={n: list(entries[n].shape) for n in order},
        pruned={n: pruned[n] for n in order},
        threshold=threshold,
        dtype="/".join(sorted(dtypes)),
    )
