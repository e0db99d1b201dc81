"""Wanda pruning masks (Sun et al. 2023): score ``|W_ij| * ||X_j||_2`` per output row, from calibration activations.

``||X_j||_2`` is the L2 norm of input channel ``j`` over the calibration tokens; the comparison group is each output
row (the paper's choice for LLMs), so every row loses the same fraction of its weights. Wanda needs activations, so it
runs on a loaded model (:func:`collect_input_norms`), unlike global magnitude pruning, which can stream a checkpoint.
"""

import logging
from collections.abc import Iterable, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from trainer.models.masks import check_full_precision
from trainer.training.magnitude import CHUNK


logger = logging.getLogger(__name__)


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
        targets: Canonical name -> linear layer (from :func:`trainer.training.pruning.collect_targets`).
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
