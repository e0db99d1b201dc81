"""Make a stage-I CCExpert base from a LLaVA-OneVision checkpoint: its weights plus a freshly initialised module.

    python -m trainer.models.ccexpert.convert --base llava-hf/llava-onevision-qwen2-0.5b-ov-hf --out outputs/cc-init

Every LLaVA-OneVision weight is kept; the Difference-aware Integration Module is initialised as the authors do
(truncated normal, std 0.02). The processor is saved with CCExpert's chat template (ChatML, the authors' pair prompt)
and one square tile per image (``image_grid_pinpoints = [[size, size]]``: no anyres, as ``image_aspect_ratio=square``).
"""

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig, AutoProcessor, HfArgumentParser

from trainer.models.ccexpert.configuration_ccexpert import CCExpertConfig
from trainer.models.ccexpert.modeling_ccexpert import CCExpertForConditionalGeneration
from trainer.models.ccexpert.template import CCEXPERT_CHAT_TEMPLATE


logger = logging.getLogger(__name__)

#: The CCExpert options a conversion sets: where the module taps the vision tower, and the module's shape and init.
CCEXPERT_FIELDS = ("tapped_vision_layers", "integration_depth", "integration_num_heads", "integration_mlp_ratio")
CCEXPERT_FIELDS += ("integration_gate_init", "integration_init_std")


@dataclass
class ConvertConfig:
    """Command-line options of ``python -m trainer.models.ccexpert.convert``."""

    base: str = field(metadata={"help": "LLaVA-OneVision folder or Hub id (model_type llava_onevision)."})
    out: str = field(metadata={"help": "Folder to write the CCExpert model and processor into."})
    tapped_vision_layers: str | None = field(
        default=None, metadata={"help": "Comma-separated 1-based vision blocks; default: the paper's 17,20,23,26."}
    )
    integration_depth: int = field(default=2, metadata={"help": "Change-aware layers (paper: 2)."})
    integration_gate_init: float = field(
        default=1.0, metadata={"help": "Initial output gate: 1 = the authors' residual add, 0 = exactly the base."}
    )
    dtype: str = field(default="bfloat16", metadata={"help": "Weights dtype of the saved model (bfloat16, float32)."})

    def __post_init__(self):
        if self.dtype not in ("bfloat16", "float32", "float16"):
            raise ValueError(f"--dtype {self.dtype!r}: choose bfloat16, float32 or float16")
        if self.integration_depth < 1:
            raise ValueError(f"--integration_depth {self.integration_depth}: must be at least 1")
        if self.tapped_vision_layers is not None:
            try:
                [int(t) for t in self.tapped_vision_layers.split(",")]
            except ValueError as err:
                raise ValueError(
                    f"--tapped_vision_layers {self.tapped_vision_layers!r}: not comma-separated ints"
                ) from err


def ccexpert_config_from(base_config, **overrides) -> CCExpertConfig:
    """A :class:`CCExpertConfig` with every field of a LLaVA-OneVision config plus the module's ``overrides``.

    Raises:
        ValueError: If ``base_config`` is not a LLaVA-OneVision (or CCExpert) config.
    """
    if base_config.model_type not in ("llava_onevision", "ccexpert"):
        raise ValueError(f"base model_type {base_config.model_type!r}: expected llava_onevision")
    values = base_config.to_dict()
    for key in ("model_type", "architectures", "transformers_version", "_name_or_path", *CCEXPERT_FIELDS):
        values.pop(key, None)
    return CCExpertConfig(**values, **{k: v for k, v in overrides.items() if v is not None})


def convert(cfg: ConvertConfig) -> Path:
    """Write the CCExpert model and processor; return the output folder."""
    overrides = {"integration_depth": cfg.integration_depth, "integration_gate_init": cfg.integration_gate_init}
    if cfg.tapped_vision_layers:
        overrides["tapped_vision_layers"] = [int(t) for t in cfg.tapped_vision_layers.split(",")]
    config = ccexpert_config_from(AutoConfig.from_pretrained(cfg.base), **overrides)
    size = config.vision_config.image_size
    config.image_grid_pinpoints = [[size, size]]
    model = CCExpertForConditionalGeneration.from_pretrained(cfg.base, config=config, dtype=getattr(torch, cfg.dtype))
    processor = AutoProcessor.from_pretrained(cfg.base)
    processor.chat_template = CCEXPERT_CHAT_TEMPLATE
    processor.image_processor.image_grid_pinpoints = [[size, size]]
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    module = sum(p.numel() for p in model.model.integration_module.parameters())
    (out / "ccexpert_init.json").write_text(
        json.dumps({"base": cfg.base, "taps": config.tapped_vision_layers, "module_parameters": module}) + "\n"
    )
    logger.info(
        "CCExpert from %s: taps %s, %d module parameters -> %s", cfg.base, config.tapped_vision_layers, module, out
    )
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m trainer.models.ccexpert.convert``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    (cfg,) = HfArgumentParser(ConvertConfig).parse_args_into_dataclasses(args=argv)
    try:
        out = convert(cfg)
    except (OSError, ValueError) as err:
        logger.error("convert: %s", err)
        return 1
    logger.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
