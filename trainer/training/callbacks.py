"""Trainer callbacks chosen by name from config, and the pruning callback.

``geollava-train`` calls :func:`get_callbacks` with the parsed :class:`~trainer.training.pruning.PruningConfig`:
pruning adds
the ``"pruning"`` callback, and ``callbacks: [name, ...]`` in a recipe adds any other registered one. Adding a
callback is one entry in :data:`CALLBACKS`.

The pruning callback (:class:`PruningCallback`):

* ``on_train_begin`` (or after ``pruning_start_step`` optimizer steps): computes the masks over the frozen
  language-model base weights and zeroes them **in place** (no ``torch.nn.utils.prune`` re-parametrisation, so state
  dicts stay clean and ``merge_and_unload`` is correct);
* ``on_step_end``: re-applies the masks every ``pruning_reapply_every`` steps (in-place ``masked_fill_``), so
  weights that do train cannot regrow;
* ``on_save``: writes the masks into ``checkpoint-N``; ``on_train_end``: into ``output_dir``, beside the adapter;
* on resume: loads the masks from the checkpoint instead of recomputing them;
* on a 4-bit/8-bit base: never prunes the packed bytes. It takes the masks of the pruned full-precision copy the base
  was loaded from (``pruning_masks_path``, or the base's own folder as written by
  :func:`~trainer.training.pruning.prune_before_quantization`), checks that the pruned weights are zero, and saves
  them; without such masks it raises.
"""

import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from trainer.models.masks import MASKS_FILE, apply_masks, load_masks, mask_sparsity, mask_targets, save_masks
from trainer.training.pruning import PruningConfig, calibration_batches, collect_targets, compute_masks


logger = logging.getLogger(__name__)


def _is_quantized(weight: torch.Tensor) -> bool:
    return type(weight).__name__ in ("Params4bit", "Int8Params") or not weight.dtype.is_floating_point


def _dequantized(weight: torch.Tensor) -> torch.Tensor:
    kind = type(weight).__name__
    if kind == "Params4bit":
        import bitsandbytes.functional as bnbf

        return bnbf.dequantize_4bit(weight.data, weight.quant_state)
    # int8 row-wise absmax quantization maps 0 to code 0: the codes are zero exactly where the weights are.
    return weight.data.float()


def _has_masks(folder: Path) -> bool:
    return (folder / MASKS_FILE).is_file()


def _pruned_positions(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # The smaller form on the weight's device: flat int64 indices (8 bytes per pruned weight) below 12.5 % sparsity,
    # which covers the paper's 1/5/10 %, else a boolean mask (1 byte per weight).
    pruned = ~mask.reshape(-1)
    if weight.is_contiguous() and 8 * int(pruned.sum()) < pruned.numel():
        return pruned.nonzero().squeeze(1).to(weight.device)
    return pruned.reshape(weight.shape).to(weight.device)


class PruningCallback(TrainerCallback):
    """Prunes the language model's linear base weights and keeps them pruned through training, saving and resuming.

    Attributes:
        masks: Canonical module name -> boolean CPU mask (``True`` = kept), once computed or loaded.
        metadata: What :func:`~trainer.models.masks.save_masks` writes into ``pruning.json`` (method, target sparsity,
            threshold, step, sparsity reached, where the masks came from).
    """

    def __init__(
        self,
        config: PruningConfig,
        train_dataset=None,
        collator: Callable | None = None,
        model_config=None,
    ):
        """Create the callback.

        Args:
            config: The pruning options (``pruning_method`` must not be ``"none"``).
            train_dataset: The training dataset; wanda's calibration batches are its first rows.
            collator: The training collator, which turns those rows into model inputs.
            model_config: The trainer's model options (TRL ``ModelConfig``), used in error messages.

        Raises:
            ValueError: If the method is ``"none"``, or wanda has no dataset or collator.
        """
        if not config.enabled:
            raise ValueError("PruningCallback needs pruning_method 'magnitude' or 'wanda', got 'none'")
        calibration = train_dataset is not None and collator is not None
        if config.pruning_method == "wanda" and config.pruning_masks_path is None and not calibration:
            raise ValueError("pruning_method 'wanda' needs train_dataset and collator for calibration batches")
        self.config = config
        self.train_dataset = train_dataset
        self.collator = collator
        self.model_config = model_config
        self.masks: dict[str, torch.Tensor] | None = None
        self.metadata: dict = {}
        self._pruned: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._quantized = False

    # ---- events -------------------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        """Load masks (resume, or a pre-pruned 4-bit base) or prune now if ``pruning_start_step`` is 0."""
        self._pruned = None
        targets = collect_targets(model, require_full_precision=False)
        self._quantized = any(_is_quantized(layer.weight) for layer in targets.values())
        source = self._find_masks(args, state, model)
        if source is not None:
            self.masks = load_masks(source)
            self.metadata = self._saved_metadata(source)
            self.metadata["masks_loaded_from"] = str(source)
            logger.info("pruning masks loaded from %s (sparsity %.6f)", source, mask_sparsity(self.masks)[0])
            if self._quantized:
                self._check_quantized_zeros(model)
            else:
                self._reapply(model)
        elif self._quantized:
            raise TypeError(
                "pruning a 4-bit/8-bit base: its weights are packed bytes, and pruning them would corrupt the model. "
                "Prune the full-precision model with trainer.training.pruning.prune_before_quantization(model_path, "
                "config, out_dir), load that copy quantized (its folder holds the masks), or set pruning_masks_path "
                f"(model options: {self._model_hint()})"
            )
        elif state.global_step >= self.config.pruning_start_step:
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
            save_masks(self.masks, args.output_dir, self.metadata)
        return control

    # ---- helpers ------------------------------------------------------------------------------------------------
    def _find_masks(self, args, state, model) -> Path | None:
        if state.global_step > 0:
            candidates = []
            if isinstance(args.resume_from_checkpoint, str):
                candidates.append(Path(args.resume_from_checkpoint))
            candidates.append(Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            for folder in candidates:
                if _has_masks(folder):
                    return folder
            if state.global_step >= self.config.pruning_start_step and not self._quantized:
                logger.warning(
                    "resuming at step %d but no checkpoint holds pruning masks (%s); recomputing them",
                    state.global_step,
                    ", ".join(map(str, candidates)),
                )
        if self.config.pruning_masks_path is not None:
            folder = Path(self.config.pruning_masks_path)
            if not _has_masks(folder):
                raise FileNotFoundError(f"pruning_masks_path {str(folder)!r} holds no pruning_masks.safetensors")
            return folder
        if self._quantized:
            base = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
            if base and _has_masks(Path(base)):
                return Path(base)
        return None

    @staticmethod
    def _saved_metadata(folder: Path) -> dict:
        report = Path(folder) / "pruning.json"
        if not report.is_file():
            return {}
        keep = ("method", "target_sparsity", "threshold", "comparison_group", "threshold_method", "step", "source")
        return {k: v for k, v in json.loads(report.read_text()).items() if k in keep}

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
        self.masks, metadata = compute_masks(model, self.config, batches)
        self.metadata = {**metadata, "step": state.global_step}
        self._reapply(model)

    def _reapply(self, model) -> None:
        if self._quantized:
            return  # frozen packed weights cannot change; their zeros were checked when the masks were loaded
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


def _pruning(config: PruningConfig, model_config=None, train_dataset=None, collator=None) -> TrainerCallback:
    return PruningCallback(config, train_dataset=train_dataset, collator=collator, model_config=model_config)


CALLBACKS: dict[str, Callable[..., TrainerCallback]] = {
    "pruning": _pruning,
}


def get_callbacks(
    pruning_config: PruningConfig, model_config=None, train_dataset=None, collator=None
) -> list[TrainerCallback]:
    """The callbacks a run asked for: pruning when its method is not ``"none"``, plus ``pruning_config.callbacks``.

    Args:
        pruning_config: The pruning options; its ``callbacks`` field names extra callbacks from :data:`CALLBACKS`.
        model_config: The model options (TRL ``ModelConfig``), passed to each factory.
        train_dataset: The training dataset (wanda calibration).
        collator: The training collator (wanda calibration).

    Returns:
        Callback instances, for ``SFTTrainer(callbacks=...)``.

    Raises:
        ValueError: If a name is not registered.
    """
    names = ["pruning"] if pruning_config.enabled else []
    for name in pruning_config.callbacks:
        if name not in CALLBACKS:
            raise ValueError(f"callbacks: {name!r} is not registered; choose from {sorted(CALLBACKS)}")
        if name not in names:
            names.append(name)
    return [CALLBACKS[name](pruning_config, model_config, train_dataset, collator) for name in names]
