"""How pruning masks are computed: the options, the targets, global magnitude pruning and Wanda.

:func:`compute_masks` is the one entry point (the callback and the pre-quantization copy call it); every method
returns boolean masks (``True`` = kept) keyed by canonical module names. Quantized weights are refused.
See docs/pruning.md ("Methods").
"""

import logging
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from trainer.pruning.masks import canonical_name, check_full_precision, mask_sparsity


logger = logging.getLogger(__name__)

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


class FamilyParts(Protocol):
    """What pruning reads of a model family; a ``trainer.models.families.Family`` has both.

    Families come in as arguments: ``trainer.models`` loads models with their masks, so it imports this package,
    never the reverse.
    """

    language_model: str
    vision_modules: tuple[str, ...]


def collect_targets(
    model: nn.Module, family: FamilyParts, *, require_full_precision: bool = True
) -> dict[str, nn.Linear]:
    """The linear layers to prune, keyed by canonical name (the same with and without PEFT).

    The ``nn.Linear`` weights under the family's language-model prefix, never the embeddings, ``lm_head``, the vision
    tower(s), the projector, LoRA A/B or ``modules_to_save`` copies.

    Args:
        model: A model of a registered family, plain or wrapped in PEFT.
        family: Its family (``trainer.models.families.family_of(model)``).
        require_full_precision: Raise on quantized weights (the default; pruning must never rank packed bytes).

    Returns:
        Canonical name -> the ``nn.Linear`` holding the weight (under PEFT, the LoRA layer's ``base_layer``).

    Raises:
        TypeError: If a target weight is a bitsandbytes 4-bit/8-bit weight and ``require_full_precision``.
        ValueError: If the model has no target at all.
    """
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
    model: nn.Module, config: PruningConfig, family: FamilyParts, batches: Iterable[dict] | None = None
) -> tuple[dict[str, torch.Tensor], dict]:
    """Masks for the model's language-model linear weights, by ``config.pruning_method``.

    Args:
        model: A full-precision model of a registered family, plain or PEFT.
        config: The pruning options (method must not be ``"none"``).
        family: The model's family.
        batches: Calibration model inputs (wanda only).

    Returns:
        ``(masks, metadata)``; the metadata holds ``method``, ``target_sparsity``, ``threshold`` (magnitude),
        ``comparison_group`` and how the threshold was found, for :func:`trainer.pruning.masks.save_masks`.

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
        metadata |= magnitude_metadata(config, threshold)
    elif config.pruning_method == "wanda":
        if batches is None:
            raise ValueError("pruning_method 'wanda' needs calibration batches (train dataset + collator)")
        norms = collect_input_norms(model, targets, batches)
        masks = wanda_masks(weights, norms, config.pruning_sparsity)
        metadata |= {"threshold": None, "comparison_group": "per-output-row", "score": "|W| * ||X||_2"}
        metadata["calibrated_on"] = str(next(model.parameters()).device)
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


def magnitude_metadata(config: PruningConfig, threshold: float) -> dict:
    """What ``pruning.json`` records of a global magnitude pruning, besides the method and target sparsity."""
    return {
        "threshold": threshold,
        "comparison_group": "global",
        "threshold_method": "exact" if config.pruning_exact_threshold else "sampled",
        "threshold_sample_size": config.pruning_threshold_sample_size,
    }


# ---- global magnitude --------------------------------------------------------------------------------------------
# The exact global threshold never needs all weights sorted in memory: a sample brackets the target quantile and one
# chunked pass keeps only the weights inside the bracket (find_threshold). Every function reads the weights one at a
# time through a mapping name -> tensor, which may load each tensor on access (the streamed checkpoint does), in
# float32 chunks (exact for bf16/fp16 values), so nothing is ever upcast whole.

# Elements per chunk of a weight processed at a time (64 MB of float32): bounds the extra memory of a pass.
CHUNK = 16 * 1024 * 1024


def chunks(weight: torch.Tensor) -> Iterator[torch.Tensor]:
    """``|w|`` of a weight, flattened, in float32 chunks of at most :data:`CHUNK` elements."""
    flat = weight.detach().reshape(-1)
    for start in range(0, flat.numel(), CHUNK):
        yield flat[start : start + CHUNK].abs().float()


def numels(weights: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Elements of each weight, without loading a lazy mapping (its ``numels()``), else from the tensors."""
    sizes = getattr(weights, "numels", None)
    return dict(sizes()) if callable(sizes) else {name: w.numel() for name, w in weights.items()}


def n_pruned(total: int, sparsity: float) -> int:
    """Weights pruned out of ``total`` at ``sparsity``: ``round(s N)``, at least 1 and at most ``N - 1``."""
    return min(total - 1, max(1, round(sparsity * total)))


def sample_magnitudes(weights: Mapping[str, torch.Tensor], sample_size: int, seed: int = 0) -> torch.Tensor:
    """Sorted ``|w|`` of about ``sample_size`` weights drawn uniformly over all ``weights`` (with replacement).

    Each layer contributes in proportion to its size, so the sample is a uniform draw over the union.
    """
    sizes = numels(weights)
    total = sum(sizes.values())
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for name, size in sizes.items():
        n = max(1, round(sample_size * size / total))
        index = torch.randint(size, (n,), generator=generator)
        weight = weights[name]
        parts.append(weight.detach().reshape(-1)[index.to(weight.device)].abs().float().cpu())
    return torch.cat(parts).sort().values


def sampled_threshold(weights: Mapping[str, torch.Tensor], sparsity: float, sample_size: int, seed: int = 0) -> float:
    """The global magnitude threshold estimated from a uniform sample: its ``sparsity`` quantile.

    The sparsity it reaches has a standard error of about ``sqrt(s (1 - s) / sample_size)`` (0.02 % absolute at
    s = 5 % with a million samples).
    """
    sample = sample_magnitudes(weights, sample_size, seed)
    return float(sample[min(sample.numel() - 1, max(0, math.ceil(sparsity * sample.numel()) - 1))])


@dataclass
class Threshold:
    """The exact global threshold and how many weights equal to it each layer keeps.

    Attributes:
        value: The k-th smallest ``|w|`` over all weights.
        keep_ties: Layer -> how many of its weights equal to ``value`` (its last ones) stay, so that exactly k are
            pruned: low-precision weights repeat magnitudes (bf16 has 8 significant bits), and the surplus of ties is
            kept in the last layers first, deterministically.
        k: Weights pruned.
    """

    value: float
    keep_ties: dict[str, int]
    k: int


def find_threshold(
    weights: Mapping[str, torch.Tensor], sparsity: float, sample_size: int, seed: int = 0, *, sigmas: float = 6.0
) -> Threshold:
    """The exact global magnitude threshold (``k = round(s N)``-th smallest ``|w|``) and its tie plan.

    Memory stays bounded: a sample brackets the k-th value (± ``sigmas`` binomial standard errors), one chunked pass
    counts the weights below the bracket and keeps those inside it (about 2 sigmas sqrt(s (1 - s) / sample_size) of
    all weights: 0.26 % at s = 5 % with a million samples), and ``kthvalue`` over those gives the exact value. If the
    bracket misses (probability ~1e-9 at 6 sigmas) it widens and retries.
    """
    total = sum(numels(weights).values())
    k = n_pruned(total, sparsity)
    sample = sample_magnitudes(weights, sample_size, seed)
    m = sample.numel()
    q = k / total
    width = sigmas * math.sqrt(q * (1 - q) / m) + 2 / m
    while True:
        lo_i, hi_i = math.floor((q - width) * m), math.ceil((q + width) * m)
        lo = float(sample[lo_i]) if lo_i >= 0 else -math.inf
        hi = float(sample[hi_i]) if hi_i < m else math.inf
        below, inside = 0, {}
        for name in numels(weights):
            parts = []
            for a in chunks(weights[name]):
                below += int((a < lo).sum())
                parts.append(a[(a >= lo) & (a <= hi)].cpu())
            inside[name] = torch.cat(parts)
        n_inside = sum(c.numel() for c in inside.values())
        if below < k <= below + n_inside:
            value = float(torch.cat(list(inside.values())).kthvalue(k - below).values)
            return Threshold(value, _tie_plan(inside, value, below, k), k)
        logger.warning("threshold bracket [%g, %g] missed the %d-th magnitude; widening it", lo, hi, k)
        width *= 4


def _tie_plan(inside: dict[str, torch.Tensor], value: float, below: int, k: int) -> dict[str, int]:
    # Every weight equal to the threshold lies inside the bracket, so the candidates count them all.
    excess = below + sum(int((c <= value).sum()) for c in inside.values()) - k
    plan = {}
    for name in reversed(list(inside)):
        ties = int((inside[name] == value).sum())
        plan[name] = min(ties, max(excess, 0))
        excess -= plan[name]
    return plan


def exact_threshold(
    weights: Mapping[str, torch.Tensor], sparsity: float, sample_size: int, seed: int = 0, *, sigmas: float = 6.0
) -> float:
    """The exact global magnitude threshold alone (see :func:`find_threshold`)."""
    return find_threshold(weights, sparsity, sample_size, seed, sigmas=sigmas).value


def global_threshold(
    weights: Mapping[str, torch.Tensor], sparsity: float, *, sample_size: int, exact: bool, seed: int
) -> tuple[float, dict[str, int]]:
    """The global magnitude threshold and how many ties each layer keeps: exact (:func:`find_threshold`) or sampled.

    Returns:
        ``(threshold, keep_ties)``; ``keep_ties`` is empty for the sampled threshold.
    """
    if exact:
        found = find_threshold(weights, sparsity, sample_size, seed)
        return found.value, found.keep_ties
    return sampled_threshold(weights, sparsity, sample_size, seed), {}


def layer_mask(weight: torch.Tensor, threshold: float, keep_ties: int = 0) -> torch.Tensor:
    """The boolean CPU mask of one weight (``True`` = kept): ``|w| > threshold``, plus its last ``keep_ties`` ties."""
    mask = torch.cat([(a > threshold).cpu() for a in chunks(weight)])
    if keep_ties:
        ties = torch.cat([(a == threshold).cpu() for a in chunks(weight)]).nonzero().squeeze(1)
        mask[ties[ties.numel() - keep_ties :]] = True
    return mask.reshape(weight.shape)


def magnitude_masks(
    weights: Mapping[str, torch.Tensor],
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
        exact: Refine the sampled threshold to the exact one (:func:`find_threshold`); else use the sample's.
        seed: Seed of the sample.

    Returns:
        ``(masks, threshold)``; masks are boolean CPU tensors, ``True`` = kept.

    Raises:
        TypeError: If a weight is quantized (bitsandbytes 4-bit/8-bit).
    """
    for name, weight in weights.items():
        check_full_precision(name, weight)
    threshold, keep = global_threshold(weights, sparsity, sample_size=sample_size, exact=exact, seed=seed)
    masks = {name: layer_mask(weight, threshold, keep.get(name, 0)) for name, weight in weights.items()}
    return masks, threshold


# ---- Wanda ---------------------------------------------------------------------------------------------------------
# Wanda (Sun et al. 2023) scores |W_ij| * ||X_j||_2, X_j the input channel j over the calibration tokens, and compares
# within each output row; it needs activations, so it runs on a loaded model, never on a streamed checkpoint.


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
