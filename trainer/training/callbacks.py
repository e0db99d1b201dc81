"""The trainer callbacks a run asks for, chosen by name from a registry.

``geollava-train`` calls :func:`get_callbacks`: pruning adds the ``"pruning"`` callback, and ``callbacks: [name, ...]``
in a recipe adds any other registered one. Adding a callback is one entry in :data:`CALLBACKS`. See docs/pruning.md.
"""

from collections.abc import Callable

from transformers import TrainerCallback

from trainer.models.families import Family
from trainer.pruning.callback import PruningCallback
from trainer.pruning.masks import SavedMasks
from trainer.pruning.methods import PruningConfig


def _pruning(
    config: PruningConfig, family: Family, model_config=None, train_dataset=None, collator=None, masks=None
) -> TrainerCallback:
    return PruningCallback(
        config, family, masks=masks, train_dataset=train_dataset, collator=collator, model_config=model_config
    )


CALLBACKS: dict[str, Callable[..., TrainerCallback]] = {
    "pruning": _pruning,
}


def get_callbacks(
    pruning_config: PruningConfig,
    family: Family,
    model_config=None,
    train_dataset=None,
    collator=None,
    masks: SavedMasks | None = None,
) -> list[TrainerCallback]:
    """The callbacks a run asked for: pruning when its method is not ``"none"``, plus ``pruning_config.callbacks``.

    Args:
        pruning_config: The pruning options; its ``callbacks`` field names extra callbacks from :data:`CALLBACKS`.
        family: The model's family.
        model_config: The model options (TRL ``ModelConfig``), passed to each factory.
        train_dataset: The training dataset (wanda calibration).
        collator: The training collator (wanda calibration).
        masks: Masks the pruning callback starts from instead of computing them (see
            :class:`~trainer.pruning.callback.PruningCallback`).

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
    return [
        CALLBACKS[name](
            pruning_config,
            family,
            model_config=model_config,
            train_dataset=train_dataset,
            collator=collator,
            masks=masks,
        )
        for name in names
    ]
