"""CCExpert stage III's checkpoint selection: the best model by S*m on the validation split.

Greedy captions of the validation rows are scored with the LEVIR-CC metrics and the best model is kept; the authors
chose on the test split, which leaks the test set into model selection.

Under ``accelerate launch`` (data parallel, DeepSpeed ZeRO-1/2) only the main process generates, scores and writes
``best/``: every rank holds the whole model, so the others just carry on (they wait for it at the next gradient
all-reduce). Sharded parameters (FSDP, ZeRO-3) are refused: one process alone cannot run the model.
"""

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

from datasets import load_dataset
from transformers import TrainerCallback

from dataset_builder.atomic import atomic_dir, write_json, write_lines
from dataset_builder.prompts import strip_visual_placeholder
from trainer.evaluation.generation import generate_batch
from trainer.evaluation.metrics import coco_caption_metrics
from trainer.models.families import Family, get_family


logger = logging.getLogger(__name__)


def evaluate_captions(
    model,
    processor,
    family: Family | str,
    rows: Sequence[dict],
    *,
    batch_size: int = 8,
    max_new_tokens: int = 32,
    meteor: bool = True,
) -> tuple[dict[str, float], list[str]]:
    """Greedy captions for ``rows`` (``frames``, ``conversations``, ``references``) and their LEVIR-CC metrics.

    Returns:
        ``(metrics, predictions)``; metrics as :func:`trainer.evaluation.metrics.coco_caption_metrics` (``s_m`` needs
        Java).
    """
    family = get_family(family) if isinstance(family, str) else family
    predictions: list[str] = []
    for start in range(0, len(rows), batch_size):
        chunk = [rows[i] for i in range(start, min(start + batch_size, len(rows)))]
        questions = [strip_visual_placeholder(r["conversations"][0]["value"]) for r in chunk]
        predictions += generate_batch(
            model, processor, family, questions, [r["frames"] for r in chunk], max_new_tokens=max_new_tokens
        )
    references = [list(r.get("references") or [r["conversations"][1]["value"]]) for r in rows]
    metrics, unavailable, _ = coco_caption_metrics(predictions, references, meteor=meteor)
    for key, why in unavailable.items():
        logger.warning("%s not computed: %s", key, why)
    return metrics, predictions


class BestBySmCallback(TrainerCallback):
    """Score greedy captions on the validation rows every epoch (or ``every_steps``) and keep the best model.

    The best model is saved (``save_pretrained``: the adapter under PEFT, the full model otherwise) with the processor
    into ``best_dir``, replacing the previous best atomically; ``best_dir/selection.json`` holds the metric, its
    value, the step and every evaluation so far. Ties keep the earlier checkpoint. Only the main process
    (``state.is_world_process_zero``) evaluates and writes; generation runs on the model's own device.

    Args:
        rows: Validation rows (``frames``, ``conversations``, ``references``); never the test split.
        processor: The model's processor.
        family: The model family.
        best_dir: Where the best model goes.
        metric: Key of :func:`trainer.evaluation.metrics.coco_caption_metrics` to maximise (``s_m``, as the authors).
        every_steps: Evaluate every N optimizer steps instead of at each epoch end.
        batch_size: Generation batch size.
        max_new_tokens: Generation budget (LEVIR-CC captions have at most 39 words).
    """

    def __init__(
        self,
        rows: Sequence[dict],
        processor,
        family: Family | str,
        best_dir: str | Path,
        *,
        metric: str = "s_m",
        every_steps: int | None = None,
        batch_size: int = 8,
        max_new_tokens: int = 32,
    ):
        if not len(rows):
            raise ValueError("rows: the validation split is empty")
        if every_steps is not None and every_steps < 1:
            raise ValueError(f"every_steps {every_steps!r}: must be >= 1 or None")
        self.rows = rows
        self.processor = processor
        self.family = family
        self.best_dir = Path(best_dir)
        self.metric = metric
        self.every_steps = every_steps
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.best: float = -math.inf
        self.best_record: dict | None = None
        self.history: list[dict] = []

    def _evaluate(self, state, model) -> None:
        was_training = model.training
        model.eval()
        try:
            metrics, predictions = evaluate_captions(
                model,
                self.processor,
                self.family,
                self.rows,
                batch_size=self.batch_size,
                max_new_tokens=self.max_new_tokens,
                meteor=self.metric in ("meteor", "s_m"),
            )
        finally:
            model.train(was_training)
        if self.metric not in metrics:
            raise RuntimeError(f"metric {self.metric!r} could not be computed (METEOR and S*m need Java)")
        record = {"step": state.global_step, "epoch": state.epoch, **metrics}
        self.history.append(record)
        state.log_history.append({f"val_{k}": v for k, v in metrics.items()} | {"step": state.global_step})
        logger.info("validation at step %d: %s %.4f", state.global_step, self.metric, metrics[self.metric])
        if metrics[self.metric] > self.best:
            self.best = metrics[self.metric]
            self._save(model, record, predictions)
        else:
            self._write_selection()

    def _save(self, model, record: dict, predictions: list[str]) -> None:
        with atomic_dir(self.best_dir) as tmp:
            model.save_pretrained(tmp)
            self.processor.save_pretrained(tmp)
            lines = (
                json.dumps({"id": row.get("id"), "prediction": p})
                for row, p in zip(self.rows, predictions, strict=True)
            )
            write_lines(tmp / "val_predictions.jsonl", lines)
        self.best_record = record
        self._write_selection()

    def _write_selection(self) -> None:
        if self.best_record is None or not self.best_dir.exists():
            return
        selection = {
            "metric": self.metric,
            "split": "validation",
            "best": self.best_record,
            "history": self.history,
        }
        write_json(self.best_dir / "selection.json", selection)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        """Refuse sharded parameters: the main process alone generates with the whole model."""
        sharded = next((n for n, p in model.named_parameters() if _is_sharded(p)), None)
        if sharded is not None:
            raise RuntimeError(
                f"best-by-{self.metric} selection generates on the main process alone, but parameters are sharded "
                f"across processes (e.g. {sharded!r}: FSDP or DeepSpeed ZeRO-3); train with data parallelism or "
                "ZeRO-2, or unset selection_split"
            )

    def on_step_end(self, args, state, control, model=None, **kwargs):
        """Evaluate every ``every_steps`` optimizer steps when set (main process only)."""
        if self.every_steps and state.global_step % self.every_steps == 0 and state.is_world_process_zero:
            self._evaluate(state, model)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        """Evaluate at each epoch end unless ``every_steps`` is set (main process only)."""
        if not self.every_steps and state.is_world_process_zero:
            self._evaluate(state, model)


def _is_sharded(parameter) -> bool:
    # FSDP2 holds DTensor shards; DeepSpeed ZeRO-3 tags its partitioned parameters with ds_status.
    return (
        type(parameter).__name__ == "DTensor"
        or type(parameter.data).__name__ == "DTensor"
        or (hasattr(parameter, "ds_status"))
    )


def selection_callback(stage_args, training_args, processor, family, dataset_name) -> BestBySmCallback | None:
    """Stage III's :class:`BestBySmCallback` on ``stage_args.selection_split`` (``None`` when it is not set).

    Args:
        stage_args: A ``trainer.training.ccexpert_stages.CCExpertStageArguments``.
        training_args: The ``SFTConfig`` (the best model goes to ``output_dir/best``).
        processor: The model's processor.
        family: The model family.
        dataset_name: The dataset folder or Hub id the split is read from.
    """
    if stage_args.ccexpert_stage is None or not stage_args.selection_split:
        return None
    rows = load_dataset(dataset_name, split=stage_args.selection_split)
    if stage_args.selection_max_rows is not None:
        rows = rows.select(range(min(stage_args.selection_max_rows, len(rows))))
    return BestBySmCallback(
        rows,
        processor,
        family,
        Path(training_args.output_dir) / "best",
        metric=stage_args.selection_metric,
        every_steps=stage_args.selection_every_steps,
    )
