"""Unstructured pruning of the language model's linear weights: global magnitude (the paper) and Wanda.

Pure functions compute boolean masks (``True`` = kept) keyed by canonical module names (:mod:`trainer.models.masks`);
:func:`compute_masks` is the one entry point the callback and :func:`prune_before_quantization` call.

* **Targets** (:func:`collect_targets`): the ``nn.Linear`` weights under the family's language-model prefix,
  excluding embeddings, ``lm_head``, the vision tower(s), the projector, LoRA A/B and ``modules_to_save`` copies.
  Quantized (bitsandbytes 4-bit/8-bit) weights are refused: prune a full-precision copy, then quantize.
* **Magnitude**: one global threshold over all targets; weights with ``|w| <= threshold`` are pruned. The threshold
  never needs all weights sorted in memory: a random sample (sized per layer in proportion to the layer) brackets
  the target quantile, then one chunked pass counts the weights below the bracket and keeps only those inside it,
  whose ``kthvalue`` is the exact global threshold (:func:`exact_threshold`). :func:`sampled_threshold` is the
  sample estimate alone.
* **Wanda** (Sun et al. 2023): score ``|W_ij| * ||X_j||_2`` where ``||X_j||_2`` is the L2 norm of input channel
  ``j`` over the calibration tokens; the comparison group is each output row (the paper's choice for LLMs), so every
  row loses the same fraction of its weights.
"""

import json
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from dataset_builder.atomic import atomic_dir
from trainer.models.families import Family, family_of
from trainer.models.masks import (
    REPORT_FILE,
    apply_masks,
    canonical_name,
    check_full_precision,
    mask_sparsity,
    save_masks,
)


logger = logging.getLogger(__name__)

METHODS = ("none", "magnitude", "wanda")
# Elements per chunk of a weight processed at a time (64 MB of float32): bounds the extra memory of a pass.
CHUNK = 16 * 1024 * 1024
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


def _chunks(weight: torch.Tensor) -> Iterator[torch.Tensor]:
    flat = weight.detach().reshape(-1)
    for start in range(0, flat.numel(), CHUNK):
        yield flat[start : start + CHUNK].abs().float()


def _n_pruned(total: int, sparsity: float) -> int:
    return min(total - 1, max(1, round(sparsity * total)))


def sample_magnitudes(weights: dict[str, torch.Tensor], sample_size: int, seed: int = 0) -> torch.Tensor:
    """Sorted ``|w|`` of about ``sample_size`` weights drawn uniformly over all ``weights`` (with replacement).

    Each layer contributes in proportion to its size, so the sample is a uniform draw over the union.
    """
    total = sum(w.numel() for w in weights.values())
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for weight in weights.values():
        n = max(1, round(sample_size * weight.numel() / total))
        index = torch.randint(weight.numel(), (n,), generator=generator).to(weight.device)
        parts.append(weight.detach().reshape(-1)[index].abs().float().cpu())
    return torch.cat(parts).sort().values


def sampled_threshold(weights: dict[str, torch.Tensor], sparsity: float, sample_size: int, seed: int = 0) -> float:
    """The global magnitude threshold estimated from a uniform sample: its ``sparsity`` quantile.

    The sparsity it reaches has a standard error of about ``sqrt(s (1 - s) / sample_size)`` (0.02 % absolute at
    s = 5 % with a million samples).
    """
    sample = sample_magnitudes(weights, sample_size, seed)
    return float(sample[min(sample.numel() - 1, max(0, math.ceil(sparsity * sample.numel()) - 1))])


def exact_threshold(
    weights: dict[str, torch.Tensor], sparsity: float, sample_size: int, seed: int = 0, *, sigmas: float = 6.0
) -> float:
    """The exact global magnitude threshold: the k-th smallest ``|w|`` over all weights, ``k = round(s N)``.

    Memory stays bounded: a sample brackets the k-th value (± ``sigmas`` binomial standard errors), one chunked pass
    counts the weights below the bracket and keeps those inside it (about 2 sigmas sqrt(s (1 - s) / sample_size) of
    all weights: 0.26 % at s = 5 % with a million samples), and ``kthvalue`` over those gives the exact value. If the
    bracket misses (probability ~1e-9 at 6 sigmas) it widens and retries.
    """
    total = sum(w.numel() for w in weights.values())
    k = _n_pruned(total, sparsity)
    sample = sample_magnitudes(weights, sample_size, seed)
    m = sample.numel()
    q = k / total
    width = sigmas * math.sqrt(q * (1 - q) / m) + 2 / m
    while True:
        lo_i, hi_i = math.floor((q - width) * m), math.ceil((q + width) * m)
        lo = float(sample[lo_i]) if lo_i >= 0 else -math.inf
        hi = float(sample[hi_i]) if hi_i < m else math.inf
        below, inside = 0, []
        for weight in weights.values():
            for a in _chunks(weight):
                below += int((a < lo).sum())
                inside.append(a[(a >= lo) & (a <= hi)].cpu())
        candidates = torch.cat(inside)
        if below < k <= below + candidates.numel():
            return float(candidates.kthvalue(k - below).values)
        logger.warning("threshold bracket [%g, %g] missed the %d-th magnitude; widening it", lo, hi, k)
        width *= 4


def magnitude_masks(
    weights: dict[str, torch.Tensor],
    sparsity: float,
    *,
    sample_size: int = 1_000_000,
    exact: bool = True,
    seed: int = 0,
) -> tuple[dict[str, torch.Tensor], float]:
    """Global unstructured magnitude masks: prune every weight with ``|w| <= threshold``.

    With ``exact``, exactly ``round(sparsity * N)`` weights are pruned: where several weights equal the threshold
    (frequent in bf16), the surplus is kept, the last ones in module order.

    Args:
        weights: Canonical name -> full-precision weight.
        sparsity: Target fraction pruned, in (0, 1).
        sample_size: Weights sampled to find the threshold.
        exact: Refine the sampled threshold to the exact one (:func:`exact_threshold`); else use the sample's.
        seed: Seed of the sample.

    Returns:
        ``(masks, threshold)``; masks are boolean CPU tensors, ``True`` = kept.

    Raises:
        TypeError: If a weight is quantized (bitsandbytes 4-bit/8-bit).
    """
    for name, weight in weights.items():
        check_full_precision(name, weight)
    find = exact_threshold if exact else sampled_threshold
    threshold = find(weights, sparsity, sample_size, seed)
    masks = {}
    for name, weight in weights.items():
        mask = torch.cat([(a > threshold).cpu() for a in _chunks(weight)])
        masks[name] = mask.reshape(weight.shape)
    if exact:
        _keep_excess_ties(weights, masks, threshold, _n_pruned(sum(w.numel() for w in weights.values()), sparsity))
    return masks, threshold


def _keep_excess_ties(weights: dict, masks: dict, threshold: float, k: int) -> None:
    # Low-precision weights (bf16 has 8 significant bits) repeat magnitudes, so |w| <= threshold can cover more than
    # k weights. Keep the surplus of those equal to the threshold, the last ones in module order, so that exactly k
    # are pruned, deterministically.
    excess = sum(int(m.numel() - m.count_nonzero()) for m in masks.values()) - k
    for name in reversed(list(weights)):
        if excess <= 0:
            return
        ties = torch.cat([(a == threshold).cpu() for a in _chunks(weights[name])]).nonzero().squeeze(1)
        keep = ties[max(0, ties.numel() - excess) :]
        masks[name].view(-1)[keep] = True
        excess -= keep.numel()


def wanda_masks(
    weights: dict[str, torch.Tensor], input_norms: dict[str, torch.Tensor], sparsity: float
) -> dict[str, torch.Tensor]:
    """Wanda masks: in each output row, prune the ``round(s * in_features)`` weights of lowest ``|W_ij| ||X_j||``.

    Args:
        weights: Canonical name -> full-precision weight ``(out_features, in_features)``.
        input_norms: Canonical name -> L2 norm of each input channel over the calibration tokens.
        sparsity: Target fraction pruned per row, in (0, 1).

    Returns:
        Boolean CPU masks, ``True`` = kept.

    Raises:
        TypeError: If a weight is quantized.
        ValueError: If a weight has no input norms or they do not match its width.
    """
    masks = {}
    for name, weight in weights.items():
        check_full_precision(name, weight)
        if name not in input_norms:
            raise ValueError(f"{name}: no calibration input norms (did the calibration batches reach this layer?)")
        norms = input_norms[name].to(weight.device, torch.float32)
        if norms.shape != (weight.shape[1],):
            raise ValueError(f"{name}: input norms have shape {tuple(norms.shape)}, expected ({weight.shape[1]},)")
        k = round(sparsity * weight.shape[1])
        mask = torch.ones(weight.shape, dtype=torch.bool)
        rows = max(1, CHUNK // weight.shape[1])
        for start in range(0, weight.shape[0] if k else 0, rows):
            score = weight.detach()[start : start + rows].abs().float() * norms
            pruned = score.topk(k, dim=1, largest=False).indices.cpu()
            mask[start : start + rows].scatter_(1, pruned, False)
        masks[name] = mask
    return masks


@torch.no_grad()
def collect_input_norms(
    model: nn.Module, targets: dict[str, nn.Linear], batches: Iterable[dict]
) -> dict[str, torch.Tensor]:
    """L2 norm of every input channel of each target layer over all tokens of the calibration batches.

    Runs the model forward in eval mode with forward hooks on the targets; the training mode is restored after.

    Args:
        model: The model (plain or PEFT); batches are moved to its device.
        targets: Canonical name -> linear layer (from :func:`collect_targets`).
        batches: Model inputs, e.g. collated training batches.

    Raises:
        ValueError: If no batch was given.
    """
    sums = {name: torch.zeros(layer.in_features, dtype=torch.float32) for name, layer in targets.items()}

    def hook(name):
        def accumulate(module, inputs, output):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).float()
            sums[name] += (x * x).sum(0).cpu()

        return accumulate

    handles = [layer.register_forward_hook(hook(name)) for name, layer in targets.items()]
    was_training = model.training
    device = next(model.parameters()).device
    n = 0
    try:
        model.eval()
        for batch in tqdm(batches, desc="wanda calibration", leave=False):
            model(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
            n += 1
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if n == 0:
        raise ValueError("wanda pruning needs calibration batches, got none")
    return {name: s.sqrt() for name, s in sums.items()}


def calibration_batches(dataset, collator, n_batches: int, batch_size: int) -> Iterator[dict]:
    """The first ``n_batches`` batches of ``dataset`` through ``collator``, in dataset order (no RNG is consumed)."""
    n_rows = min(len(dataset), n_batches * batch_size)
    for start in range(0, n_rows, batch_size):
        yield collator([dataset[i] for i in range(start, min(start + batch_size, n_rows))])


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
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Prune a full-precision copy of a base model, for QLoRA: the trainer then loads the copy in 4-bit.

    NF4 and int8 quantization keep pruned weights exactly zero, so pruning first and quantizing after is exact,
    whereas pruning the packed bytes of a loaded 4-bit model corrupts it. The copy holds the model
    (``save_pretrained``), the processor files and the masks (:func:`trainer.models.masks.save_masks`), so the training
    callback finds the masks there and saves them beside the adapter.

    Args:
        model_path: Local folder or Hub id of the base model.
        config: The pruning options.
        out_dir: Folder for the pruned copy. If it already holds a copy pruned the same way from the same model, it
            is reused.
        calibration: Calibration model inputs (wanda only).
        dtype: Dtype the base is loaded and saved in.

    Returns:
        The path of the pruned copy.

    Raises:
        FileExistsError: If ``out_dir`` exists and is not such a copy.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    out = Path(out_dir)
    wanted = {"method": config.pruning_method, "target_sparsity": config.pruning_sparsity, "source": str(model_path)}
    if out.exists():
        report_path = out / REPORT_FILE
        report = json.loads(report_path.read_text()) if report_path.is_file() else {}
        if {k: report.get(k) for k in wanted} == wanted:
            logger.info("reusing the pruned copy in %s", out)
            return out
        raise FileExistsError(f"out_dir {str(out)!r} exists and is not a copy of {model_path} pruned the same way")
    model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=dtype)
    masks, metadata = compute_masks(model, config, calibration)
    apply_masks(model, masks)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        AutoProcessor.from_pretrained(model_path).save_pretrained(tmp)
        save_masks(masks, tmp, {**metadata, "source": str(model_path), "dtype": str(dtype)})
    logger.info("saved the pruned full-precision copy of %s to %s", model_path, out)
    return out
