"""CCExpert's three training stages: which parameters train, their learning rates, and best-by-S*m selection.

==========  =====================================================  ===========================================
stage       trainable                                              learning rate
==========  =====================================================  ===========================================
1 (CPT)     projector + Difference-aware Integration Module        ``lr``
2 (CPT)     everything                                             ``lr``; vision tower ``0.2 * lr``
3 (SFT)     everything (LEVIR-CC train)                            ``lr``; vision tower ``0.2 * lr``
==========  =====================================================  ===========================================

Stage III keeps the checkpoint with the best S*m on the LEVIR-CC **validation** split (:class:`BestBySmCallback`);
the authors chose on the test split, which leaks the test set into model selection.
"""

import json
import logging
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import TrainerCallback

from dataset_builder.prompts import strip_visual_placeholder
from trainer.families import Family, get_family
from trainer.generation import generate_batch
from trainer.metrics import coco_caption_metrics


logger = logging.getLogger(__name__)

STAGES = (1, 2, 3)
#: In-memory module names (without a PEFT prefix) of the parts each stage trains; ``None`` = everything.
STAGE_TRAINABLE: dict[int, tuple[str, ...] | None] = {
    1: ("model.multi_modal_projector", "model.integration_module"),
    2: None,
    3: None,
}
VISION_TOWER = "model.vision_tower"
VISION_LR_MULTIPLIER = 0.2


@dataclass
class CCExpertStageArguments:
    """Recipe options of CCExpert's stages, parsed by ``geollava-train``'s ``TrlParser`` beside the others."""

    ccexpert_stage: int | None = field(
        default=None,
        metadata={
            "help": "CCExpert training stage: 1 (projector + integration module), 2 (all, vision tower at "
            "vision_lr_multiplier x lr), 3 (as 2, on LEVIR-CC, best checkpoint by S*m on validation); None = off."
        },
    )
    vision_lr_multiplier: float = field(
        default=VISION_LR_MULTIPLIER, metadata={"help": "Vision-tower learning rate over the base one (stages 2, 3)."}
    )
    selection_split: str | None = field(
        default=None,
        metadata={"help": "Split scored for best-checkpoint selection (stage 3: 'validation'; never 'test')."},
    )
    selection_metric: str = field(default="s_m", metadata={"help": "LEVIR-CC metric to maximise (s_m, cider_d...)."})
    selection_every_steps: int | None = field(
        default=None, metadata={"help": "Score every N optimizer steps instead of at each epoch end."}
    )
    selection_max_rows: int | None = field(
        default=None, metadata={"help": "Score only the first N rows of the selection split (None = all)."}
    )

    def __post_init__(self):
        if self.ccexpert_stage is not None and self.ccexpert_stage not in STAGES:
            raise ValueError(f"ccexpert_stage {self.ccexpert_stage!r}: choose one of {list(STAGES)} or None")
        if self.vision_lr_multiplier < 0:
            raise ValueError(f"vision_lr_multiplier {self.vision_lr_multiplier!r}: must be >= 0")
        if self.selection_split == "test":
            raise ValueError("selection_split 'test': choosing checkpoints on the test split leaks it; use validation")
        if self.selection_every_steps is not None and self.selection_every_steps < 1:
            raise ValueError(f"selection_every_steps {self.selection_every_steps!r}: must be >= 1 or None")


def stage_trainer_kwargs(stage_args: CCExpertStageArguments, model, training_args, processor, family, dataset_name):
    """What ``geollava-train`` passes to ``SFTTrainer`` for a CCExpert stage: ``optimizers`` and ``callbacks``.

    Returns:
        ``{}`` when no stage is set; else ``{"optimizers": (AdamW over the stage's groups, None), "callbacks": [...]}``
        with a :class:`BestBySmCallback` (best model in ``output_dir/best``) when ``selection_split`` is set.
    """
    if stage_args.ccexpert_stage is None:
        return {}
    optimizer = stage_optimizer(model, stage_args.ccexpert_stage, training_args, stage_args.vision_lr_multiplier)
    callbacks = []
    if stage_args.selection_split:
        from datasets import load_dataset

        rows = load_dataset(dataset_name, split=stage_args.selection_split)
        if stage_args.selection_max_rows is not None:
            rows = rows.select(range(min(stage_args.selection_max_rows, len(rows))))
        callbacks.append(
            BestBySmCallback(
                rows,
                processor,
                family,
                Path(training_args.output_dir) / "best",
                metric=stage_args.selection_metric,
                every_steps=stage_args.selection_every_steps,
            )
        )
    return {"optimizers": (optimizer, None), "callbacks": callbacks}


def _canonical(name: str) -> str:
    # PEFT wraps the model as base_model.model.<name>; the stage rules are written for the bare model.
    return name.removeprefix("base_model.model.")


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def is_trainable_in_stage(name: str, stage: int) -> bool:
    """Whether the parameter called ``name`` trains in ``stage`` (LoRA weights, when present, always do)."""
    if stage not in STAGES:
        raise ValueError(f"stage {stage!r}: choose one of {list(STAGES)}")
    name = _canonical(name)
    if "lora_" in name:
        return True
    prefixes = STAGE_TRAINABLE[stage]
    return prefixes is None or any(_under(name, p) for p in prefixes)


def apply_stage(
    model: torch.nn.Module,
    stage: int,
    *,
    learning_rate: float,
    vision_lr_multiplier: float = VISION_LR_MULTIPLIER,
    weight_decay: float = 0.0,
) -> list[dict]:
    """Set ``requires_grad`` for ``stage`` and return the optimizer's parameter groups.

    Args:
        model: A CCExpert (or any LLaVA-OneVision) model, bare or PEFT-wrapped.
        stage: 1, 2 or 3.
        learning_rate: The base learning rate.
        vision_lr_multiplier: Factor on the vision tower's learning rate where it trains (authors: 0.2).
        weight_decay: Weight decay of every group (authors: 0).

    Returns:
        Groups for ``torch.optim`` (``params``, ``lr``, ``weight_decay``, ``name``): ``"main"`` and, where the vision
        tower trains, ``"vision_tower"``. Empty groups are left out.

    Raises:
        ValueError: For an unknown stage, a negative multiplier, or a stage that leaves nothing to train.
    """
    if vision_lr_multiplier < 0:
        raise ValueError(f"vision_lr_multiplier {vision_lr_multiplier!r}: must be >= 0")
    main, vision = [], []
    for name, parameter in model.named_parameters():
        trainable = is_trainable_in_stage(name, stage) and parameter.is_floating_point()
        parameter.requires_grad_(trainable)
        if trainable:
            (vision if _under(_canonical(name), VISION_TOWER) else main).append(parameter)
    groups = [
        {"params": main, "lr": learning_rate, "weight_decay": weight_decay, "name": "main"},
        {
            "params": vision,
            "lr": learning_rate * vision_lr_multiplier,
            "weight_decay": weight_decay,
            "name": "vision_tower",
        },
    ]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError(f"stage {stage}: no parameter of this model trains (is it a CCExpert / LLaVA-OneVision?)")
    counts = {g["name"]: sum(p.numel() for p in g["params"]) for g in groups}
    logger.info("stage %d: trainable parameters per group %s", stage, counts)
    return groups


def stage_optimizer(model: torch.nn.Module, stage: int, args, vision_lr_multiplier: float = VISION_LR_MULTIPLIER):
    """AdamW over :func:`apply_stage`'s groups, with the betas/eps/weight decay of ``TrainingArguments`` ``args``.

    Pass it as ``SFTTrainer(..., optimizers=(stage_optimizer(model, stage, args), None))``: the trainer's scheduler
    (cosine, warmup) then scales every group from its own initial learning rate, keeping the 0.2 ratio.
    """
    groups = apply_stage(
        model,
        stage,
        learning_rate=args.learning_rate,
        vision_lr_multiplier=vision_lr_multiplier,
        weight_decay=args.weight_decay,
    )
    return torch.optim.AdamW(groups, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)


def flatten_references(batch: dict) -> dict:
    """One row per reference caption (the authors' ``flatten_list`` for pre-training): ``dataset.map(batched=True)``.

    Rows without ``references`` are kept as they are. Each new row's id gets ``#k`` (its reference index).
    """
    out: dict[str, list] = {key: [] for key in batch}
    references = batch.get("references")
    for i, conversation in enumerate(batch["conversations"]):
        refs = references[i] if references is not None and references[i] else [conversation[1]["value"]]
        for k, ref in enumerate(refs):
            for key in batch:
                out[key].append(batch[key][i])
            out["conversations"][-1] = [conversation[0], {"from": "gpt", "value": ref}]
            if "id" in batch:
                out["id"][-1] = f"{batch['id'][i]}#{k}"
    return out


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
        ``(metrics, predictions)``; metrics as :func:`trainer.metrics.coco_caption_metrics` (``s_m`` needs Java).
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
    value, the step and every evaluation so far. Ties keep the earlier checkpoint.

    Args:
        rows: Validation rows (``frames``, ``conversations``, ``references``); never the test split.
        processor: The model's processor.
        family: The model family.
        best_dir: Where the best model goes.
        metric: Key of :func:`trainer.metrics.coco_caption_metrics` to maximise (``s_m``, as the authors).
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
        tmp = self.best_dir.with_name(self.best_dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        self.processor.save_pretrained(tmp)
        with open(tmp / "val_predictions.jsonl", "w", encoding="utf-8") as fh:
            for row, prediction in zip(self.rows, predictions, strict=True):
                fh.write(json.dumps({"id": row.get("id"), "prediction": prediction}) + "\n")
        old = self.best_dir.with_name(self.best_dir.name + ".old")
        if self.best_dir.exists():
            os.replace(self.best_dir, old)
        os.replace(tmp, self.best_dir)
        shutil.rmtree(old, ignore_errors=True)
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
        tmp = self.best_dir / ".selection.json.tmp"
        tmp.write_text(json.dumps(selection, indent=1) + "\n")
        os.replace(tmp, self.best_dir / "selection.json")

    def on_step_end(self, args, state, control, model=None, **kwargs):
        """Evaluate every ``every_steps`` optimizer steps when set."""
        if self.every_steps and state.global_step % self.every_steps == 0:
            self._evaluate(state, model)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        """Evaluate at each epoch end unless ``every_steps`` is set."""
        if not self.every_steps:
            self._evaluate(state, model)


__all__ = [
    "STAGES",
    "CCExpertStageArguments",
    "stage_trainer_kwargs",
    "STAGE_TRAINABLE",
    "BestBySmCallback",
    "apply_stage",
    "evaluate_captions",
    "flatten_references",
    "is_trainable_in_stage",
    "stage_optimizer",
]
