"""Merge an adapter into its base, masks first, for serving engines: ``geollava-export``.

    geollava-export --adapter outputs/quickstart/adapter --out outputs/merged

OUT holds what the adapter computes (``W⊙M + s·BA``) as plain weights in the base's dtype, written tensor by tensor
from the base's safetensors shards, with its config, generation config, processor and chat template: it loads with
``AutoModelForImageTextToText.from_pretrained(OUT)`` and is what vLLM, SGLang and ``transformers serve`` take.
See docs/export.md.
"""

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, HfArgumentParser

from dataset_builder.atomic import atomic_dir, write_json
from trainer.models.chat_templates import ensure_chat_template
from trainer.models.families import family_of
from trainer.models.loading import PROCESSOR_FILES, adapter_folder
from trainer.pruning.masks import MASKS_FILE, REPORT_FILE, SavedMasks, apply_masks, unpack_mask
from trainer.pruning.pruned_copy import (
    DTYPES,
    StreamingUnsupported,
    checkpoint_entries,
    copy_side_files,
    local_checkpoint,
    parameter_entries,
    release_freed_memory,
)


logger = logging.getLogger(__name__)

#: What the export did, beside the weights: the model card reads it.
EXPORT_FILE = "geollava_export.json"
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
_PREFIX = "base_model.model."
#: PEFT options the streamed merge does not compute; an adapter with one is merged by PEFT itself, loaded whole.
_LOADED_ONLY = ("use_dora", "lora_bias", "trainable_token_indices", "target_parameters", "layer_replication")


@dataclass
class ExportConfig:
    """Options of ``geollava-export``."""

    adapter: str = field(metadata={"help": "Adapter folder or Hub repo id (from geollava-train)."})
    out: str = field(metadata={"help": "Folder for the merged model (must not exist, unless --overwrite)."})
    model: str | None = field(
        default=None,
        metadata={"help": "Base model folder or Hub id (default: the adapter's base_model_name_or_path)."},
    )
    sparse: bool = field(
        default=False,
        metadata={
            "help": "Re-apply the pruning masks after merging: a sparse checkpoint, which drops the adapter's update "
            "of the pruned weights (the deviation is measured and printed)."
        },
    )
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing --out folder."})

    def __post_init__(self):
        out = Path(self.out)
        if out.exists() and not self.overwrite and (not out.is_dir() or any(out.iterdir())):
            raise ValueError(f"--out {self.out!r} exists; choose another folder or pass --overwrite")


@dataclass(frozen=True)
class LoraAdapter:
    """A LoRA adapter as the merge reads it.

    Attributes:
        folder: Its local folder.
        base: The base it names (``base_model_name_or_path``).
        config: Its ``adapter_config.json``.
        lora: In-memory module name -> ``(A, B, scale)``: the module's weight becomes ``W + scale * B @ A``.
        full: In-memory parameter name -> tensor trained in full (``modules_to_save``), which replaces the base's.
        masks: Its pruning masks (still bit-packed), or ``None``.
    """

    folder: Path
    base: str | None
    config: dict
    lora: dict[str, tuple[torch.Tensor, torch.Tensor, float]]
    full: dict[str, torch.Tensor]
    masks: SavedMasks | None

    @property
    def fan_in_fan_out(self) -> bool:
        """Whether the base stores the targets' weights transposed (GPT-2's ``Conv1D``)."""
        return bool(self.config.get("fan_in_fan_out"))


def lora_scale(config: dict, module: str, rank: int) -> float:
    """PEFT's scaling of one module's update: ``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA), per-module alpha."""
    from peft.utils.other import get_pattern_key

    alphas = config.get("alpha_pattern") or {}
    alpha = alphas.get(get_pattern_key(list(alphas), module), config.get("lora_alpha", 8))
    return alpha / rank**0.5 if config.get("use_rslora") else alpha / rank


def read_adapter(adapter: str | Path) -> LoraAdapter:
    """Read a LoRA adapter's config, weights and masks for the streamed merge.

    Raises:
        FileNotFoundError: If the folder has no ``adapter_config.json`` or ``adapter_model.safetensors``.
        StreamingUnsupported: If the adapter uses what the streamed merge does not compute (DoRA, LoRA biases,
            trainable tokens, LoRA on embeddings or convolutions, another PEFT method): PEFT merges it instead.
    """
    folder = adapter_folder(adapter)
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} holds no {name}: not a PEFT adapter folder")
    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    if config.get("peft_type") != "LORA":
        raise StreamingUnsupported(f"peft_type {config.get('peft_type')!r} (the streamed merge reads LoRA only)")
    used = [option for option in _LOADED_ONLY if config.get(option)]
    if used:
        raise StreamingUnsupported(f"the adapter uses {used}")
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    full = {}
    with safe_open(str(folder / ADAPTER_WEIGHTS), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
            name = key.removeprefix(_PREFIX)
            for part in ("lora_A", "lora_B"):
                if name.endswith(f".{part}.weight"):
                    pairs.setdefault(name.removesuffix(f".{part}.weight"), {})[part] = f.get_tensor(key)
                    break
            else:
                if ".lora_" in name or "modules_to_save" in name:
                    raise StreamingUnsupported(f"adapter tensor {key!r} is not a LoRA A/B of a linear layer")
                full[name] = f.get_tensor(key)
    lora = {}
    for module, parts in pairs.items():
        if set(parts) != {"lora_A", "lora_B"}:
            raise ValueError(f"{folder / ADAPTER_WEIGHTS}: {module} has {sorted(parts)}, not both lora_A and lora_B")
        a, b = parts["lora_A"], parts["lora_B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise StreamingUnsupported(f"{module}: lora_A {tuple(a.shape)}, lora_B {tuple(b.shape)} (not a linear)")
        lora[module] = (a, b, lora_scale(config, module, a.shape[0]))
    masks = SavedMasks.read(folder) if (folder / MASKS_FILE).is_file() else None
    return LoraAdapter(folder, config.get("base_model_name_or_path"), config, lora, full, masks)


@dataclass
class ExportReport:
    """What :func:`export_merged` wrote (also ``OUT/geollava_export.json``).

    Attributes:
        out: The merged model's folder.
        base: The base model it was merged into.
        adapter: The adapter merged.
        family: The model family.
        dtype: The weights' dtype (the base's).
        merged_by: ``"streaming the safetensors shards"`` or ``"loading the model"`` (PEFT's own merge).
        lora_modules: Modules whose weights got the LoRA update.
        full_tensors: Tensors replaced by the adapter's fully trained copies (``modules_to_save``).
        masked_modules: Modules whose pruning masks were applied to the base first.
        pruning: The adapter's ``pruning.json`` (method, sparsity), when it has masks.
        sparse: Whether the masks were applied again after merging.
        deviation: With ``sparse``: how far the sparse weights are from what the adapter computes, as the relative
            Frobenius norm of what re-masking removed (``overall``, and the largest module's).
        seconds: Time the merge took.
    """

    out: str
    base: str
    adapter: str
    family: str
    dtype: str
    merged_by: str
    lora_modules: int
    full_tensors: int
    masked_modules: int
    pruning: dict | None
    sparse: bool
    deviation: dict | None
    seconds: float


def export_merged(
    adapter: str | Path, out: str | Path, model: str | Path | None = None, *, sparse: bool = False
) -> ExportReport:
    """Merge ``adapter`` (masks first) into its base and write the merged model to ``out`` (atomically).

    The streamed path (safetensors shards, a LoRA adapter) copies the base's shards and rewrites each changed
    tensor in place: peak memory is one weight in float32 plus the adapter and its packed masks. Any other
    adapter or base is merged by PEFT on the model loaded whole (``merge_and_unload``).

    Args:
        adapter: Adapter folder or Hub repo id.
        out: Folder for the merged model (replaced when it exists).
        model: Base model folder or Hub id; ``None``: the adapter's ``base_model_name_or_path``.
        sparse: Re-apply the masks after merging (weights pruned again, the update of pruned weights dropped).

    Returns:
        What was written.

    Raises:
        ValueError: If no base is given or named, or the base is quantized (merge into the full-precision base).
        FileNotFoundError: If ``adapter`` is not a PEFT adapter folder.
    """
    start = time.perf_counter()
    folder = adapter_folder(adapter)
    base = str(model) if model is not None else _base_of(folder)
    base_folder = local_checkpoint(base)
    config = AutoConfig.from_pretrained(base_folder)
    if getattr(config, "quantization_config", None):
        raise ValueError(f"{base} is quantized; merge into its full-precision checkpoint (a QLoRA adapter's base)")
    with atomic_dir(out) as tmp:
        try:
            lora = read_adapter(folder)
            stats = _merge_streaming(base_folder, config, lora, tmp, sparse)
        except StreamingUnsupported as why:
            logger.warning("cannot merge %s tensor by tensor (%s): letting PEFT merge the loaded model", adapter, why)
            for path in tmp.iterdir():
                path.unlink()
            stats = _merge_loaded(base, folder, tmp, sparse)
        family = family_of(config)
        _save_processor(folder, base_folder, tmp, family.name)
        copy_side_files(base_folder, tmp, weights=False)
        pruning = json.loads((folder / REPORT_FILE).read_text()) if (folder / REPORT_FILE).is_file() else None
        report = ExportReport(
            out=str(out),
            base=base,
            adapter=str(adapter),
            family=family.name,
            pruning=pruning if stats["masked_modules"] else None,
            sparse=sparse,
            seconds=round(time.perf_counter() - start, 3),
            **stats,
        )
        write_json(tmp / EXPORT_FILE, asdict(report), indent=2)
    logger.info("merged %s into %s (%s, %s) -> %s", adapter, base, report.dtype, report.merged_by, out)
    return report


def _base_of(folder: Path) -> str:
    config = json.loads((folder / ADAPTER_CONFIG).read_text()) if (folder / ADAPTER_CONFIG).is_file() else {}
    base = config.get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{folder / ADAPTER_CONFIG} names no base_model_name_or_path; give --model")
    return str(base)


def _save_processor(adapter: Path, base: Path, out: Path, family: str) -> None:
    # The processor inference uses (the adapter's when it ships one) with the chat template it was trained with.
    source = adapter if any((adapter / f).exists() for f in PROCESSOR_FILES) else base
    processor = AutoProcessor.from_pretrained(source)
    ensure_chat_template(processor, family)
    processor.save_pretrained(out)


def _merge_streaming(base: Path, config, adapter: LoraAdapter, out: Path, sparse: bool) -> dict:
    entries = checkpoint_entries(base)
    with torch.device("meta"):  # names, shapes and the checkpoint's key conversion; no weights
        model = AutoModelForImageTextToText.from_config(config)
    modules, params = dict(model.named_modules()), dict(model.named_parameters())
    masked = list(adapter.masks.packed) if adapter.masks else []
    for name in {*adapter.lora, *masked}:
        if not isinstance(modules.get(name), torch.nn.Linear):
            raise StreamingUnsupported(f"{name} is not a linear layer of {type(model).__name__}")
    overlap = {n for n in adapter.full if n.rsplit(".", 1)[0] in {*adapter.lora, *masked}}
    if overlap or any(n not in params for n in adapter.full):
        raise StreamingUnsupported(f"fully trained tensors {sorted(overlap or set(adapter.full) - set(params))}")
    for name, tensor in adapter.full.items():
        if tuple(tensor.shape) != tuple(params[name].shape):
            raise ValueError(
                f"adapter tensor {name}: shape {tuple(tensor.shape)}, the base's {tuple(params[name].shape)}"
            )
    for name, (a, b, _) in adapter.lora.items():
        shape = (a.shape[1], b.shape[0]) if adapter.fan_in_fan_out else (b.shape[0], a.shape[1])
        if shape != tuple(params[f"{name}.weight"].shape):
            raise ValueError(
                f"{name}: the LoRA update is {shape}, the base's weight {tuple(params[name + '.weight'].shape)}"
            )
    changed = {f"{name}.weight": params[f"{name}.weight"] for name in {*adapter.lora, *masked}}
    changed |= {name: params[name] for name in adapter.full}
    found = parameter_entries(model, changed, entries)
    copy_side_files(base, out, weights=True)  # byte for byte; the changed tensors are rewritten in place below
    dropped = total = 0.0
    worst = (0.0, None)
    for name, entry in found.items():
        weight = entry.read()
        if name in adapter.full:
            merged = adapter.full[name].to(weight.dtype)
        else:
            merged, removed, norm = _merged_weight(weight, name.removesuffix(".weight"), adapter, sparse)
            dropped, total = dropped + removed, total + norm
            if norm and (removed / norm) ** 0.5 > worst[0]:
                worst = ((removed / norm) ** 0.5, name.removesuffix(".weight"))
        entry.write(out, merged)
        del weight, merged
        release_freed_memory()
    dtypes = sorted({str(DTYPES[e.dtype]).removeprefix("torch.") for e in found.values()})
    deviation = None
    if sparse and masked:
        deviation = {"overall": (dropped / total) ** 0.5 if total else 0.0, "max": worst[0], "max_module": worst[1]}
    return {
        "dtype": "/".join(dtypes),
        "merged_by": "streaming the safetensors shards",
        "lora_modules": len(adapter.lora),
        "full_tensors": len(adapter.full),
        "masked_modules": len(masked),
        "deviation": deviation,
    }


def _merged_weight(weight: torch.Tensor, module: str, adapter: LoraAdapter, sparse: bool):
    """``W⊙M + s·BA`` (then ``⊙M`` again when ``sparse``) in float32, cast back; with what re-masking removed."""
    merged = weight.float()
    mask = None
    if adapter.masks is not None and module in adapter.masks.packed:
        mask = unpack_mask(adapter.masks.packed[module], adapter.masks.shapes[module])
        merged.masked_fill_(~mask, 0)
    if module in adapter.lora:
        a, b, scale = adapter.lora[module]
        update = b.float() @ a.float()
        merged.add_(update.T if adapter.fan_in_fan_out else update, alpha=scale)
    removed = norm = 0.0
    if sparse and mask is not None:
        norm = float(merged.double().square().sum())
        removed = float(merged[~mask].double().square().sum())  # W⊙M is 0 there: what is left is the update
        merged.masked_fill_(~mask, 0)
    return merged.to(weight.dtype), removed, norm


def _merge_loaded(base: str, adapter: Path, out: Path, sparse: bool) -> dict:
    from peft import PeftModel

    model = AutoModelForImageTextToText.from_pretrained(base, dtype="auto")
    masks = SavedMasks.read(adapter).unpack() if (adapter / MASKS_FILE).is_file() else {}
    if masks:
        apply_masks(model, masks)
    peft_model = PeftModel.from_pretrained(model, str(adapter))
    lora_modules = sum(1 for name, _ in peft_model.named_modules() if name.endswith(".lora_A"))
    merged = peft_model.merge_and_unload()
    deviation = None
    if sparse and masks:
        weights = {n: m.weight for n, m in merged.named_modules() if n in masks}
        norm = {n: float(w.double().square().sum()) for n, w in weights.items()}
        removed = {n: float(w[~masks[n].to(w.device)].double().square().sum()) for n, w in weights.items()}
        apply_masks(merged, masks)
        ratios = {n: (removed[n] / norm[n]) ** 0.5 if norm[n] else 0.0 for n in masks}
        worst = max(ratios, key=ratios.get)
        overall = (sum(removed.values()) / sum(norm.values())) ** 0.5 if sum(norm.values()) else 0.0
        deviation = {"overall": overall, "max": ratios[worst], "max_module": worst}
    merged.save_pretrained(out)
    return {
        "dtype": str(merged.dtype).removeprefix("torch."),
        "merged_by": "loading the model",
        "lora_modules": lora_modules,
        "full_tensors": _full_tensors(adapter),
        "masked_modules": len(masks),
        "deviation": deviation,
    }


def _full_tensors(adapter: Path) -> int:
    with safe_open(str(adapter / ADAPTER_WEIGHTS), framework="pt") as f:
        return sum(".lora_" not in key for key in f.keys())  # noqa: SIM118 (safe_open is not a mapping)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``geollava-export``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        (config,) = HfArgumentParser(ExportConfig).parse_args_into_dataclasses(args=argv)
        report = export_merged(config.adapter, config.out, config.model, sparse=config.sparse)
    except (OSError, ValueError) as err:
        print(f"geollava-export: error: {err}", file=sys.stderr)
        return 1
    masks = f", {report.masked_modules} pruning masks applied first" if report.masked_modules else ""
    print(
        f"merged {report.adapter} into {report.base} ({report.family}, {report.dtype}, {report.merged_by}): "
        f"{report.lora_modules} LoRA modules, {report.full_tensors} fully trained tensors{masks}"
    )
    if report.deviation is not None:
        d = report.deviation
        print(
            f"--sparse: deviation from the adapter (relative Frobenius norm of the update re-masking removed): "
            f"{d['overall']:.3e} overall, at most {d['max']:.3e} ({d['max_module']})"
        )
    elif report.sparse:
        print("--sparse: the adapter has no pruning masks; the checkpoint is the plain merge")
    print(f"-> {report.out} (serve it: vllm serve {report.out}; docs/export.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
