"""Unstructured pruning of the language model's linear weights: global magnitude (the paper) and Wanda.

Pure functions compute boolean masks (``True`` = kept) keyed by canonical module names (:mod:`trainer.models.masks`);
:func:`compute_masks` is the one entry point the callback calls on a loaded model, :func:`prune_before_quantization`
the one that writes a pruned copy of a checkpoint for QLoRA.

* **Targets** (:func:`collect_targets`): the ``nn.Linear`` weights under the family's language-model prefix,
  excluding embeddings, ``lm_head``, the vision tower(s), the projector, LoRA A/B and ``modules_to_save`` copies.
  Quantized (bitsandbytes 4-bit/8-bit) weights are refused: prune a full-precision copy, then quantize.
* **Magnitude** (:mod:`trainer.training.magnitude`): one exact global threshold over all targets.
* **Wanda** (:mod:`trainer.training.wanda`): ``|W| * ||X||_2`` per output row, from calibration activations.
"""

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForImageTextToText

from dataset_builder.atomic import atomic_dir
from trainer.models.families import Family, family_of
from trainer.models.masks import (
    REPORT_FILE,
    apply_masks,
    canonical_name,
    check_full_precision,
    mask_sparsity,
    save_masks,
    save_packed_masks,
)
from trainer.training.checkpoint_pruning import (
    StreamingUnsupported,
    checkpoint_entries,
    copy_side_files,
    local_checkpoint,
    prune_checkpoint,
    target_entries,
)
from trainer.training.magnitude import exact_threshold, magnitude_masks, sampled_threshold
from trainer.training.wanda import calibration_batches, collect_input_norms, wanda_masks


logger = logging.getLogger(__name__)

__all__ = [
    "METHODS",
    "PruningConfig",
    "calibration_batches",
    "collect_input_norms",
    "collect_targets",
    "compute_masks",
    "exact_threshold",
    "magnitude_masks",
    "prune_before_quantization",
    "sampled_threshold",
    "wanda_masks",
]

METHODS = ("none", "magnitude", "wanda")
_EXCLUDED_PARTS = ("lm_head", "embed_tokens", ".lora_", "modules_to_save", "original_module")


@dataclass
class PruningConfig:
    """Pruning options; they are ``geollava-train`` flags (names prefixed so that no TRL field clashes)."""

    pruning_method: str = field(
        default="none",
        metadata={"help": "'none', 'magnitude' (global |w| threshold, the paper) or 'wanda' (|w|*||x||, per row)."},
    )
    pruning_sparsity: float = field(
        default=0.0, metadata={"help": "Fraction of the language model's linear weights to prune, in (0, 1)."}
    )
    pruning_start_step: int = field(
        default=0, metadata={"help": "Optimizer step at which to prune (0 = when training begins)."}
    )
    pruning_threshold_sample_size: int = field(
        default=1_000_000,
        metadata={"help": "Weights sampled (over all layers, in proportion to their size) to find the threshold."},
    )
    pruning_exact_threshold: bool = field(
        default=True,
        metadata={"help": "Refine the sampled magnitude threshold to the exact global one in one chunked pass."},
    )
    pruning_calibration_batches: int = field(
        default=8, metadata={"help": "Training batches run forward to measure input norms (wanda only)."}
    )
    pruning_reapply_every: int = field(
        default=1, metadata={"help": "Re-apply the masks every N optimizer steps (0 = never after pruning)."}
    )
    pruning_masks_path: str | None = field(
        default=None,
        metadata={
            "help": "Folder holding pruning_masks.safetensors to use instead of computing masks (e.g. the pruned "
            "full-precision copy that a 4-bit base was loaded from)."
        },
    )
    pruning_seed: int = field(default=0, metadata={"help": "Seed of the threshold sample."})
    callbacks: list[str] = field(
        default_factory=list, metadata={"help": "Extra callbacks by name, from trainer.training.callbacks.CALLBACKS."}
    )

    def __post_init__(self):
        if self.pruning_method not in METHODS:
            raise ValueError(f"pruning_method {self.pruning_method!r}: choose one of {list(METHODS)}")
        if self.pruning_method != "none" and not 0.0 < self.pruning_sparsity < 1.0:
            raise ValueError(f"pruning_sparsity {self.pruning_sparsity!r}: must be in (0, 1) when pruning")
        if not 0.0 <= self.pruning_sparsity < 1.0:
            raise ValueError(f"pruning_sparsity {self.pruning_sparsity!r}: must be in [0, 1)")
        if self.pruning_start_step < 0:
            raise ValueError(f"pruning_start_step {self.pruning_start_step!r}: must be >= 0")
        if self.pruning_threshold_sample_size < 1:
            raise ValueError(f"pruning_threshold_sample_size {self.pruning_threshold_sample_size!r}: must be >= 1")
        if self.pruning_calibration_batches < 1:
            raise ValueError(f"pruning_calibration_batches {self.pruning_calibration_batches!r}: must be >= 1")
        if self.pruning_reapply_every < 0:
            raise ValueError(f"pruning_reapply_every {self.pruning_reapply_every!r}: must be >= 0")
        if isinstance(self.callbacks, str):
            self.callbacks = [name for name in self.callbacks.split(",") if name]

    @property
    def enabled(self) -> bool:
        """Whether any pruning runs."""
        return self.pruning_method != "none"


def collect_targets(
    model: nn.Module, family: Family | None = None, *, require_full_precision: bool = True
) -> dict[str, nn.Linear]:
    """The linear layers to prune, keyed by canonical name (the same with and without PEFT).

    Args:
        model: A model of a registered family, plain or wrapped in PEFT.
        family: Its family; found with :func:`trainer.models.families.family_of` when ``None``.
        require_full_precision: Raise on quantized weights (the default; pruning must never rank packed bytes).

    Returns:
        Canonical name -> the ``nn.Linear`` holding the weight (under PEFT, the LoRA layer's ``base_layer``).

    Raises:
        TypeError: If a target weight is a bitsandbytes 4-bit/8-bit weight and ``require_full_precision``.
        ValueError: If the model has no target at all.
    """
    family = family or family_of(model)
    prefix = family.language_model + "."
    targets = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or any(part in name for part in _EXCLUDED_PARTS):
            continue
        key = canonical_name(name)
        if not key.startswith(prefix) or any(key.startswith(v + ".") or key == v for v in family.vision_modules):
            continue
        if require_full_precision:
            check_full_precision(key, module.weight)
        targets[key] = module
    if not targets:
        raise ValueError(f"no nn.Linear under {family.language_model!r} in this {type(model).__name__}")
    return targets


def compute_masks(
    model: nn.Module, config: PruningConfig, batches: Iterable[dict] | None = None, family: Family | None = None
) -> tuple[dict[str, torch.Tensor], dict]:
    """Masks for the model's language-model linear weights, by ``config.pruning_method``.

    Args:
        model: A full-precision model of a registered family, plain or PEFT.
        config: The pruning options (method must not be ``"none"``).
        batches: Calibration model inputs (wanda only).
        family: The model's family; found from the model when ``None``.

    Returns:
        ``(masks, metadata)``; the metadata holds ``method``, ``target_sparsity``, ``threshold`` (magnitude),
        ``comparison_group`` and how the threshold was found, for :func:`trainer.models.masks.save_masks`.

    Raises:
        TypeError: If a target weight is quantized.
        ValueError: If the method is ``"none"``, or wanda gets no batches.
    """
    targets = collect_targets(model, family)
    weights = {name: layer.weight for name, layer in targets.items()}
    metadata = {"method": config.pruning_method, "target_sparsity": config.pruning_sparsity}
    if config.pruning_method == "magnitude":
        masks, threshold = magnitude_masks(
            weights,
            config.pruning_sparsity,
            sample_size=config.pruning_threshold_sample_size,
            exact=config.pruning_exact_threshold,
            seed=config.pruning_seed,
        )
        metadata |= {
            "threshold": threshold,
            "comparison_group": "global",
            "threshold_method": "exact" if config.pruning_exact_threshold else "sampled",
            "threshold_sample_size": config.pruning_threshold_sample_size,
        }
    elif config.pruning_method == "wanda":
        if batches is None:
            raise ValueError("pruning_method 'wanda' needs calibration batches (train dataset + collator)")
        norms = collect_input_norms(model, targets, batches)
        masks = wanda_masks(weights, norms, config.pruning_sparsity)
        metadata |= {"threshold": None, "comparison_group": "per-output-row", "score": "|W| * ||X||_2"}
    else:
        raise ValueError(f"pruning_method {config.pruning_method!r}: nothing to compute")
    reached, _ = mask_sparsity(masks)
    logger.info(
        "%s pruning: %d layers, target sparsity %.4f, reached %.6f",
        config.pruning_method,
        len(masks),
        config.pruning_sparsity,
        reached,
    )
    return masks, metadata


def prune_before_quantization(
    model_path: str | Path,
    config: PruningConfig,
    out_dir: str | Path,
    calibration: Iterable[dict] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Prune a copy of a base model in its own dtype, for QLoRA: the trainer then loads the copy in 4-bit.

    NF4 and int8 quantization keep pruned weights exactly zero, so pruning first and quantizing after is exact,
    whereas pruning the packed bytes of a loaded 4-bit model corrupts it. The copy holds the model, the processor
    files and the masks (:func:`trainer.models.masks.save_masks`), so the training callback finds the masks there and
    saves them beside the adapter.

    * ``magnitude`` streams the checkpoint's safetensors shards tensor by tensor
      (:mod:`trainer.training.checkpoint_pruning`): the exact global threshold over all target weights, masks in the
      checkpoint's dtype, the copy written in that dtype; peak memory is one weight plus the packed masks.
    * ``wanda`` needs activations: the model is loaded whole (in its own dtype, or ``dtype``), calibrated, pruned
      and saved with ``save_pretrained``. So is a magnitude checkpoint that cannot be streamed (no safetensors, a
      target missing from the shards) or an explicit ``dtype``.

    Args:
        model_path: Local folder or Hub id of the base model.
        config: The pruning options.
        out_dir: Folder for the pruned copy. If it already holds a copy pruned the same way from the same model, it
            is reused.
        calibration: Calibration model inputs (wanda only).
        dtype: Load and save the copy in this dtype (the loaded path); ``None`` keeps the checkpoint's.

    Returns:
        The path of the pruned copy.

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
            return out
        raise FileExistsError(f"out_dir {str(out)!r} exists and is not a copy of {model_path} pruned the same way")
    if config.pruning_method == "magnitude" and dtype is None:
        try:
            return _prune_streaming(model_path, config, out)
        except StreamingUnsupported as why:
            logger.warning("cannot prune %s tensor by tensor (%s): loading it whole instead", model_path, why)
    return _prune_loaded(model_path, config, out, calibration, dtype)


def _prune_streaming(model_path: str | Path, config: PruningConfig, out: Path) -> Path:
    folder = local_checkpoint(model_path)
    entries = checkpoint_entries(folder)
    with torch.device("meta"):  # the module tree and names, no weights
        model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(folder))
    targets = target_entries(model, collect_targets(model), entries)
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
            "threshold": pruned.threshold,
            "comparison_group": "global",
            "threshold_method": "exact" if config.pruning_exact_threshold else "sampled",
            "threshold_sample_size": config.pruning_threshold_sample_size,
            "source": str(model_path),
            "dtype": pruned.dtype,
            "pruned_by": "streaming the safetensors shards tensor by tensor",
        }
        save_packed_masks(pruned.packed, pruned.shapes, pruned.pruned, tmp, metadata)
    logger.info("saved the pruned copy of %s (%s) to %s", model_path, pruned.dtype, out)
    return out


def _prune_loaded(model_path, config: PruningConfig, out: Path, calibration, dtype: torch.dtype | None) -> Path:
    model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=dtype or "auto")
    masks, metadata = compute_masks(model, config, calibration)
    apply_masks(model, masks)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        copy_side_files(local_checkpoint(model_path), tmp, weights=False)
        metadata = {**metadata, "source": str(model_path), "dtype": str(model.dtype), "pruned_by": "loading the model"}
        save_masks(masks, tmp, metadata)
    logger.info("saved the pruned copy of %s (%s) to %s", model_path, model.dtype, out)
    return out
