"""Global magnitude pruning masks: the exact global threshold over all target weights, in bounded memory.

The threshold never needs all weights sorted in memory: a random sample (sized per layer in proportion to the layer)
brackets the target quantile, then one chunked pass counts the weights below the bracket and keeps only those inside
it, whose ``kthvalue`` is the exact global threshold (:func:`exact_threshold`). :func:`sampled_threshold` is the sample
estimate alone.

Every function reads the weights one at a time through a mapping ``name -> tensor`` and works on chunks of
:data:`CHUNK` elements converted to float32 (exact for bf16/fp16 values), so nothing is ever upcast whole. The mapping
may load each tensor on access (the streaming checkpoint pruner does): a mapping with a ``numels()`` method gives the
sizes without loading anything.
"""

import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch

from trainer.models.masks import check_full_precision


logger = logging.getLogger(__name__)

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
    if exact:
        found = find_threshold(weights, sparsity, sample_size, seed)
        threshold, keep = found.value, found.keep_ties
    else:
        threshold, keep = sampled_threshold(weights, sparsity, sample_size, seed), {}
    masks = {name: layer_mask(weight, threshold, keep.get(name, 0)) for name, weight in weights.items()}
    return masks, threshold
