"""CCExpert's three training stages: which parameters train, their learning rates, and best-by-S*m selection.

Stage III keeps the checkpoint with the best S*m on the LEVIR-CC validation split (the authors chose on test). The
stages' table: docs/ccexpert.md "The three stages".
"""

import logging
from dataclasses import dataclass, field

import torch


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


def stage_trainer_kwargs(stage_args: CCExpertStageArguments, model, training_args) -> dict:
    """What ``geollava-train`` passes to ``SFTTrainer`` for a CCExpert stage: its ``optimizers``.

    Returns:
        ``{}`` when no stage is set; else ``{"optimizers": (AdamW over the stage's groups, None)}``. Stage III's
        best-by-S*m selection is a callback of :mod:`trainer.evaluation.selection`, added by ``trainer.sft``.
    """
    if stage_args.ccexpert_stage is None:
        return {}
    optimizer = stage_optimizer(model, stage_args.ccexpert_stage, training_args, stage_args.vision_lr_multiplier)
    return {"optimizers": (optimizer, None)}


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


__all__ = [
    "STAGES",
    "STAGE_TRAINABLE",
    "CCExpertStageArguments",
    "apply_stage",
    "flatten_references",
    "is_trainable_in_stage",
    "stage_optimizer",
    "stage_trainer_kwargs",
]
