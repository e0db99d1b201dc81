"""The trainer callback that prunes the language model's linear base weights and keeps them pruned.

It computes the masks, or takes those it is given (the pruned copy's, a resumed checkpoint's, pruning_masks_path's),
zeroes the weights in place, re-applies the masks after optimizer steps, and saves them into every checkpoint and
beside the adapter. See docs/pruning.md ("During training").
"""

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from trainer.pruning.masks import SavedMasks, apply_masks, mask_sparsity, mask_targets, save_masks
from trainer.pruning.methods import FamilyParts, PruningConfig, calibration_batches, collect_targets, compute_masks


logger = logging.getLogger(__name__)

# The facts of pruning.json that travel with masks the callback is given (the rest is recomputed when it saves them).
GIVEN_FACTS = ("method", "target_sparsity", "threshold", "comparison_group", "threshold_method", "step", "source")


def _is_quantized(weight: torch.Tensor) -> bool:
    return type(weight).__name__ in ("Params4bit", "Int8Params") or not weight.dtype.is_floating_point


def _dequantized(weight: torch.Tensor) -> torch.Tensor:
    kind = type(weight).__name__
    if kind == "Params4bit":
        import bitsandbytes.functional as bnbf

        return bnbf.dequantize_4bit(weight.data, weight.quant_state)
    # int8 row-wise absmax quantization maps 0 to code 0: the codes are zero exactly where the weights are.
    return weight.data.float()


def _pruned_positions(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # The smaller form on the weight's device: flat int64 indices (8 bytes per pruned weight) below 12.5 % sparsity,
    # which covers the paper's 1/5/10 %, else a boolean mask (1 byte per weight).
    pruned = ~mask.reshape(-1)
    if weight.is_contiguous() and 8 * int(pruned.sum()) < pruned.numel():
        return pruned.nonzero().squeeze(1).to(weight.device)
    return pruned.reshape(weight.shape).to(weight.device)


class PruningCallback(TrainerCallback):
    """Prunes the language model's linear base weights and keeps them pruned through training, saving and resuming.

    * ``on_train_begin`` (or after ``pruning_start_step`` optimizer steps): computes the masks over the frozen
      language-model base weights and zeroes them **in place** (no ``torch.nn.utils.prune`` re-parametrisation, so
      state dicts stay clean and ``merge_and_unload`` is correct). Given masks are used instead of computing them.
    * ``on_step_end``: re-applies the masks every ``pruning_reapply_every`` steps (in-place), so weights that do train
      cannot regrow.
    * ``on_save``: writes the masks into ``checkpoint-N``; ``on_train_end``: into ``output_dir``, beside the adapter.
    * On a 4-bit/8-bit base it never prunes the packed bytes: it needs given masks (those of the pruned copy the base
      was loaded from), checks that the base is zero where they prune, and saves them; without masks it raises.

    Attributes:
        masks: Canonical module name -> boolean CPU mask (``True`` = kept), once computed or taken from the given ones.
        metadata: What :func:`~trainer.pruning.masks.save_masks` writes into ``pruning.json`` (method, target sparsity,
            threshold, step, sparsity reached, where given masks came from).
    """

    def __init__(
        self,
        config: PruningConfig,
        family: FamilyParts,
        masks: SavedMasks | None = None,
        train_dataset=None,
        collator: Callable | None = None,
        model_config=None,
    ):
        """Create the callback.

        Args:
            config: The pruning options (``pruning_method`` must not be ``"none"``).
            family: The model's family (``trainer.models.families.Family``): which layers are targets.
            masks: Masks to use instead of computing them: those of the pruned full-precision copy a quantized base
                was loaded from, of the checkpoint training resumes from, or of ``pruning_masks_path``.
            train_dataset: The training dataset; wanda's calibration batches are its first rows.
            collator: The training collator, which turns those rows into model inputs.
            model_config: The trainer's model options (TRL ``ModelConfig``), used in error messages.

        Raises:
            ValueError: If the method is ``"none"``, or wanda has neither masks nor a dataset and collator.
        """
        if not config.enabled:
            raise ValueError("PruningCallback needs pruning_method 'magnitude' or 'wanda', got 'none'")
        calibration = train_dataset is not None and collator is not None
        if config.pruning_method == "wanda" and masks is None and not calibration:
            raise ValueError("pruning_method 'wanda' needs train_dataset and collator for calibration batches")
        self.config = config
        self.family = family
        self.given = masks
        self.train_dataset = train_dataset
        self.collator = collator
        self.model_config = model_config
        self.masks: dict[str, torch.Tensor] | None = None
        self.metadata: dict = {}
        self._pruned: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._quantized = False
        #: What ``on_train_end`` wrote beside the adapter (the run summary reports it).
        self.saved: SavedMasks | None = None

    # ---- events -------------------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        """Take the given masks, or prune now if ``pruning_start_step`` is reached."""
        self._pruned = None
        targets = collect_targets(model, self.family, require_full_precision=False)
        self._quantized = any(_is_quantized(layer.weight) for layer in targets.values())
        if self.given is not None:
            self.masks = self.given.unpack()
            self.metadata = {k: v for k, v in self.given.report.items() if k in GIVEN_FACTS}
            self.metadata["masks_loaded_from"] = str(self.given.folder)
            logger.info("pruning masks from %s (sparsity %.6f)", self.given.folder, mask_sparsity(self.masks)[0])
            if self._quantized:
                self._check_quantized_zeros(model)
            else:
                self._reapply(model)
        elif self._quantized:
            raise TypeError(
                "pruning a 4-bit/8-bit base: its weights are packed bytes, and pruning them would corrupt the model. "
                "Prune the full-precision model with trainer.pruning.pruned_copy.prune_before_quantization("
                "model_path, config, out_dir, family), load that copy quantized and give the callback its masks, "
                f"or set pruning_masks_path (model options: {self._model_hint()})"
            )
        elif state.global_step >= self.config.pruning_start_step:
            if state.global_step > 0:
                logger.warning("resuming at step %d with no pruning masks given: recomputing them", state.global_step)
            self._prune(args, state, model)
        return control

    def on_step_end(self, args, state, control, model=None, **kwargs):
        """Prune at ``pruning_start_step``; afterwards re-apply the masks every ``pruning_reapply_every`` steps."""
        if self.masks is None:
            if state.global_step >= self.config.pruning_start_step:
                self._prune(args, state, model)
        elif self.config.pruning_reapply_every and state.global_step % self.config.pruning_reapply_every == 0:
            self._reapply(model)
        return control

    def on_save(self, args, state, control, **kwargs):
        """Write the masks into the checkpoint folder the trainer just saved."""
        if self.masks is not None and state.is_world_process_zero:
            checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            save_masks(self.masks, checkpoint, self.metadata)
        return control

    def on_train_end(self, args, state, control, **kwargs):
        """Write the masks into ``output_dir``, beside the adapter."""
        if self.masks is not None and state.is_world_process_zero:
            self.saved = save_masks(self.masks, args.output_dir, self.metadata)
        return control

    # ---- helpers ------------------------------------------------------------------------------------------------
    def _model_hint(self) -> str:
        if self.model_config is None:
            return "unknown"
        keys = ("model_name_or_path", "load_in_4bit", "load_in_8bit")
        return ", ".join(f"{k}={getattr(self.model_config, k, None)}" for k in keys)

    def _prune(self, args, state, model) -> None:
        batches = None
        if self.config.pruning_method == "wanda":
            batches = calibration_batches(
                self.train_dataset,
                self.collator,
                self.config.pruning_calibration_batches,
                args.per_device_train_batch_size,
            )
        self.masks, metadata = compute_masks(model, self.config, self.family, batches)
        self.metadata = {**metadata, "step": state.global_step}
        self._reapply(model)

    def _reapply(self, model) -> None:
        if self._quantized:
            return  # frozen packed weights cannot change; their zeros were checked when the masks were taken
        if self._pruned is None:
            apply_masks(model, self.masks)  # checks names, shapes and precision once
            targets = mask_targets(model, self.masks)
            self._pruned = [(targets[n], _pruned_positions(targets[n], m)) for n, m in self.masks.items()]
            return
        with torch.no_grad():
            for weight, positions in self._pruned:
                if positions.dtype == torch.bool:
                    weight.masked_fill_(positions, 0)
                else:
                    weight.view(-1).index_fill_(0, positions, 0)

    def _check_quantized_zeros(self, model) -> None:
        targets = mask_targets(model, self.masks)
        for name, mask in self.masks.items():
            try:
                values = _dequantized(targets[name]).reshape(mask.shape).cpu()
            except Exception as error:  # e.g. a CPU-repacked 4-bit layout
                logger.warning("cannot dequantize %s to check its pruned zeros (%s); not checked", name, error)
                continue
            if values[~mask].count_nonzero():
                raise ValueError(
                    f"{name}: the quantized base has non-zero weights where the masks prune; it was not loaded from "
                    "the pruned copy these masks belong to"
                )
