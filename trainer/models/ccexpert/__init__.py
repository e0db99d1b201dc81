"""CCExpert (arXiv 2411.11360) as a transformers-native model: importing this package registers it.

After ``import trainer.models.ccexpert``, ``AutoConfig``/``AutoModel``/``AutoModelForImageTextToText`` load
``ccexpert``
checkpoints with no ``trust_remote_code``, and ``trainer.models.families`` knows the ``ccexpert`` family (two image
slots).
"""

import dataclasses

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping

from trainer.models.ccexpert.configuration_ccexpert import CCExpertConfig, proportional_taps
from trainer.models.ccexpert.modeling_ccexpert import (
    CCExpertForConditionalGeneration,
    CCExpertModel,
    DifferenceAwareIntegrationModule,
)
from trainer.models.families import FAMILIES, LLAVA_VISION, register_family


# LLaVA-OneVision with the module between tower and projector, taking the two dates as two image slots. The module
# works in the vision width before the projector: frozen with the tower by default, never quantized, never pruned.
# Pairs only: the module fuses exactly one (before, after) pair per sample.
CCEXPERT_FAMILY = dataclasses.replace(
    FAMILIES["llava-onevision"],
    name="ccexpert",
    model_type="ccexpert",
    model_class="CCExpertForConditionalGeneration",
    visual="images",
    vision_modules=(*LLAVA_VISION, "model.integration_module"),
    sequence_visual=None,
)


def _register() -> None:
    AutoConfig.register("ccexpert", CCExpertConfig, exist_ok=True)
    AutoModel.register(CCExpertConfig, CCExpertModel, exist_ok=True)
    AutoModelForImageTextToText.register(CCExpertConfig, CCExpertForConditionalGeneration, exist_ok=True)
    # transformers saves LLaVA-OneVision checkpoints with the legacy key layout and renames on load, by model_type:
    # CCExpert shares it, so a LLaVA-OneVision checkpoint loads into it and ours load back into either.
    register_checkpoint_conversion_mapping(
        "ccexpert", get_checkpoint_conversion_mapping("llava_onevision"), overwrite=True
    )
    if "ccexpert" not in FAMILIES:
        register_family(CCEXPERT_FAMILY)


_register()

__all__ = [
    "CCEXPERT_FAMILY",
    "CCExpertConfig",
    "CCExpertForConditionalGeneration",
    "CCExpertModel",
    "DifferenceAwareIntegrationModule",
    "proportional_taps",
]
