"""Options of ``geollava-train``: script (data), model (LoRA/QLoRA) and SFT options, parsed by ``TrlParser``.

Field names are TRL's own wherever TRL has one (``model_name_or_path``, ``lora_r``, ``load_in_4bit``, ``dataset_name``,
``learning_rate``...), so that TRL's documentation applies; the additions are the project's (family, frames,
over-long policy, which vision parts train).
"""

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from trl import ModelConfig, ScriptArguments, SFTConfig

from trainer.models.families import FAMILIES, Family, get_family


logger = logging.getLogger(__name__)

ON_OVERLONG = ("error", "skip")


@dataclass
class GeoScriptArguments(ScriptArguments):
    """Which rows to train on: a dataset folder or Hub id (``dataset_name``), its config and split."""

    num_frames: int = field(
        default=2,
        metadata={
            "help": "Frames per sample: 2 for the pair configs (earlier, later); for the 'sequences' config, the most "
            "frames a row may hold (the builder's max_frames). Rows holding other counts are refused before training."
        },
    )
    max_samples: int | None = field(
        default=None, metadata={"help": "Train on the first N rows of the split only (None = all)."}
    )
    shuffle_seed: int | None = field(
        default=None,
        metadata={"help": "Shuffle the rows once with this seed before max_samples (None = keep dataset order)."},
    )

    def __post_init__(self):
        if not self.dataset_name:
            raise ValueError("dataset_name is required: a dataset folder or a Hub dataset id such as <org>/geollava")
        if self.num_frames < 2:
            raise ValueError(f"num_frames {self.num_frames!r}: a sample holds at least 2 frames (earlier, later)")
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"max_samples {self.max_samples!r}: must be >= 1 or None")


@dataclass
class GeoModelConfig(ModelConfig):
    """TRL's ``ModelConfig`` plus the family, which vision parts train, and the over-long sample policy.

    ``lora_target_modules`` left unset becomes the family's regex (the language model's attention and MLP
    projections only: the vision tower also has ``q_proj`` modules). ``lora_modules_to_save`` (TRL's name) lists
    whole modules trained and saved in full, e.g. ``lm_head``.
    """

    family: str | None = field(
        default=None,
        metadata={"help": f"Model family, one of {sorted(FAMILIES)}; None = read it from the model's config."},
    )
    train_vision_tower: bool = field(
        default=False, metadata={"help": "Train the vision tower(s) in full (saved with the adapter). Default frozen."}
    )
    train_projector: bool = field(
        default=False,
        metadata={"help": "Train the multi-modal projector in full (saved with the adapter). Default frozen."},
    )
    on_overlong: str = field(
        default="error",
        metadata={
            "help": "A sample longer than max_length after visual-token expansion: 'error' (stop, naming the row) "
            "or 'skip' (drop it from its batch and count it). Samples are never truncated."
        },
    )
    use_bnb_nested_quant: bool = field(
        default=True, metadata={"help": "Double quantization of the 4-bit constants (QLoRA). TRL's default is False."}
    )
    dtype: str | None = field(
        default="auto",
        metadata={
            "help": "Weights dtype: 'auto' (bfloat16 on a bf16-capable GPU, float32 on CPU), 'float32', 'bfloat16'."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.family is not None and self.family not in FAMILIES:
            raise ValueError(f"family {self.family!r}: choose one of {sorted(FAMILIES)}")
        if self.on_overlong not in ON_OVERLONG:
            raise ValueError(f"on_overlong {self.on_overlong!r}: choose one of {list(ON_OVERLONG)}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16", None):
            raise ValueError(f"dtype {self.dtype!r}: choose 'auto', 'float32', 'bfloat16' or 'float16'")
        if self.lora_r < 1:
            raise ValueError(f"lora_r {self.lora_r!r}: must be >= 1")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout {self.lora_dropout!r}: must be in [0, 1)")
        if (self.load_in_4bit or self.load_in_8bit) and not self.use_peft:
            raise ValueError("load_in_4bit/load_in_8bit: a quantized base can only be trained with use_peft true")

    def torch_dtype(self) -> torch.dtype:
        """The resolved weights dtype."""
        if self.dtype in (None, "auto"):
            return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
        return getattr(torch, self.dtype)

    def target_modules(self, family: Family | str) -> str | list[str]:
        """The LoRA targets: ``lora_target_modules`` when set, else the family's language-model regex."""
        if self.lora_target_modules:
            return self.lora_target_modules
        return (get_family(family) if isinstance(family, str) else family).lora_target_modules


@dataclass
class GeoSFTConfig(SFTConfig):
    """TRL's ``SFTConfig`` with the settings the video path needs and defaults that suit this project.

    * ``remove_unused_columns=False`` and ``dataset_kwargs={"skip_prepare_dataset": True}``: TRL has no video path,
      the collator builds the model inputs from the raw rows (both are required; docs/training.md "Options").
    * ``max_length=None``: no limit; when set, the collator applies it *after* visual-token expansion and never
      truncates (``on_overlong`` decides).
    * ``bf16`` unset: on when a bf16-capable GPU is present, off on CPU (TRL's default is always on).
    * no activation checkpointing by default (recipes turn it on where memory needs it).
    """

    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Must stay False: the collator needs the raw frames and conversations."}
    )
    dataset_kwargs: dict[str, Any] | str | None = field(
        default_factory=lambda: {"skip_prepare_dataset": True},
        metadata={"help": "Must hold skip_prepare_dataset: true (TRL cannot tokenize video rows)."},
    )
    max_length: int | None = field(
        default=None,
        metadata={"help": "Maximum tokens per sample after visual expansion; longer ones follow on_overlong."},
    )
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "Deprecated alias of activation_checkpointing."}
    )
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Loggers (none, tensorboard, ...)."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N optimizer steps."})
    save_strategy: str = field(default="steps", metadata={"help": "When to save checkpoints (steps, epoch, no)."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept in output_dir."})
    torch_num_threads: int | None = field(
        default=None,
        metadata={
            "help": "CPU threads for torch ops in the training process (None = torch's default). Tiny models on a "
            "busy CPU run ~10x faster with 1: their matrices are too small to share, and idle threads spin-wait."
        },
    )
    plot: bool = field(default=True, metadata={"help": "Write training_curves.png beside the adapter."})
    keep_checkpoints: bool = field(
        default=False,
        metadata={
            "help": "Keep output_dir/checkpoint-* (optimizer state, for resume) after a finished run; by default "
            "they are removed so that output_dir holds only the adapter folder's files."
        },
    )

    def __post_init__(self):
        if self.bf16 is None:
            self.bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported()) and not self.fp16
        if self.include_num_input_tokens_seen in (False, "no", "false", "False"):
            # tokens/s in the logs and the run summary needs the count; non-padding tokens only.
            self.include_num_input_tokens_seen = "non_padding"
        if isinstance(self.dataset_kwargs, str):
            import json

            self.dataset_kwargs = json.loads(self.dataset_kwargs)
        super().__post_init__()
        if self.remove_unused_columns:
            raise ValueError("remove_unused_columns True: must be False, the collator needs the raw rows")
        if not (self.dataset_kwargs or {}).get("skip_prepare_dataset"):
            raise ValueError(
                f"dataset_kwargs {self.dataset_kwargs!r}: must hold skip_prepare_dataset: true (video rows)"
            )
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"max_length {self.max_length!r}: must be >= 1 or None")
        if self.torch_num_threads is not None and self.torch_num_threads < 1:
            raise ValueError(f"torch_num_threads {self.torch_num_threads!r}: must be >= 1 or None")
        if self.packing:
            raise ValueError("packing True: not supported for video samples")
