"""Load the base model for training: fp32/bf16, QLoRA (NF4, double quantization) or 8-bit, then LoRA via PEFT.

The vision tower(s) and projector are never quantized. A quantized base that is also pruned is loaded from its pruned
full-precision copy, whose masks come back with the model. See docs/training.md.
"""

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, BitsAndBytesConfig

from trainer.models.chat_templates import ensure_chat_template
from trainer.models.families import Family, family_of, get_family
from trainer.models.loading import bitsandbytes_config
from trainer.pruning.masks import SavedMasks
from trainer.pruning.methods import PruningConfig
from trainer.pruning.pruned_copy import PrunedCopy, prune_before_quantization
from trainer.training.config import GeoModelConfig


logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """What :func:`load_model` returns.

    Attributes:
        model: The model ready for the trainer (a ``PeftModel`` when ``use_peft``).
        family: Its family.
        base_path: The folder or Hub id the weights were loaded from (a pruned copy under QLoRA + pruning).
        quantization: ``None``, ``"nf4"`` or ``"int8"``.
        trainable_parameters: Parameters that receive gradients.
        total_parameters: All parameters (packed 4-bit weights counted as stored).
        trainable_names: Names of the trainable parameters.
        pruned_masks: The masks of the pruned full-precision copy the base was loaded from (QLoRA + pruning), for
            the pruning callback; ``None`` when the base was not pruned before loading.
    """

    model: torch.nn.Module
    family: Family
    base_path: str
    quantization: str | None
    trainable_parameters: int
    total_parameters: int
    trainable_names: list[str] = field(default_factory=list)
    pruned_masks: SavedMasks | None = None


def resolve_family(model_args: GeoModelConfig) -> Family:
    """The family named in the options, or the one of the model's config."""
    if model_args.family:
        return get_family(model_args.family)
    config = AutoConfig.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision)
    return family_of(config)


def load_processor(model_args: GeoModelConfig, chat_template_path: str | None = None):
    """The model's processor, as saved beside the base weights, with a ``.jinja`` chat template applied when given.

    ``SFTTrainer`` applies ``chat_template_path`` (an ``SFTConfig`` field) again, identically; doing it here first
    checks the template early and makes the collator see it from its first batch. The template needs no
    ``{% generation %}`` block (the collator finds the answer from the generation prompt). A checkpoint that publishes
    no template (Video-LLaVA) gets its family's documented one (``chat_templates.FALLBACK_TEMPLATES``).

    Raises:
        FileNotFoundError: If ``chat_template_path`` does not exist.
    """
    processor = AutoProcessor.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision)
    if chat_template_path:
        path = Path(chat_template_path)
        if not path.is_file():
            raise FileNotFoundError(f"chat_template_path {str(path)!r} does not exist")
        processor.chat_template = path.read_text()
    elif ensure_chat_template(processor, resolve_family(model_args).name):
        logger.info("%s has no chat template: using its family's documented one", model_args.model_name_or_path)
    return processor


def bitsandbytes_config_from_options(model_args: GeoModelConfig, family: Family) -> BitsAndBytesConfig | None:
    """The bitsandbytes config the model options ask for (``load_in_4bit``: NF4, ``load_in_8bit``), or ``None``.

    Vision parts and ``lm_head`` stay unquantized (:func:`trainer.models.loading.bitsandbytes_config`).
    """
    if model_args.load_in_4bit:
        return bitsandbytes_config(
            family,
            bits=4,
            quant_type=model_args.bnb_4bit_quant_type,
            double_quant=model_args.use_bnb_nested_quant,
            compute_dtype=model_args.torch_dtype(),
        )
    if model_args.load_in_8bit:
        return bitsandbytes_config(family, bits=8)
    return None


def full_modules(model_args: GeoModelConfig, family: Family) -> list[str]:
    """Modules trained in full and saved with the adapter: ``lora_modules_to_save`` plus the asked vision parts.

    Names are suffixes of in-memory module names, as PEFT's ``modules_to_save`` matches them.
    """
    names = list(model_args.lora_modules_to_save or [])
    for prefix in family.vision_modules:
        is_projector = "projector" in prefix or prefix.endswith("merger")
        wanted = model_args.train_projector if is_projector else model_args.train_vision_tower
        if wanted:
            names.append(prefix.removeprefix("model."))
    return list(dict.fromkeys(names))


def lora_config(model_args: GeoModelConfig, family: Family):
    """The PEFT ``LoraConfig`` from the model options (targets default to the family's language-model regex)."""
    from peft import LoraConfig

    return LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=model_args.target_modules(family),
        modules_to_save=full_modules(model_args, family) or None,
        task_type=model_args.lora_task_type,
        use_rslora=model_args.use_rslora,
        use_dora=model_args.use_dora,
    )


def pruned_base(
    model_args: GeoModelConfig,
    family: Family,
    pruning_config: PruningConfig | None = None,
    pruned_dir: str | Path | None = None,
    calibration: Iterable[dict] | None = None,
    device: str | torch.device | None = None,
) -> PrunedCopy | None:
    """The pruned full-precision copy to load instead of the base, when a quantized base is pruned; else ``None``.

    bitsandbytes packs 4-bit weights and pruning them would zero packed bytes, so the full-precision base is pruned
    into a copy first (with ``pruning_masks_path`` the masks are given and the base is loaded as it is), on
    ``device`` when the copy is made by loading the model (Wanda calibrates there).

    Raises:
        ValueError: If a pruned copy is needed and ``pruned_dir`` is missing.
    """
    quantized = model_args.load_in_4bit or model_args.load_in_8bit
    if not quantized or pruning_config is None or not pruning_config.enabled or pruning_config.pruning_masks_path:
        return None
    if pruned_dir is None:
        raise ValueError("pruned_dir: needed to prune a full-precision copy before quantizing the base")
    copy = prune_before_quantization(
        str(model_args.model_name_or_path), pruning_config, pruned_dir, family, calibration=calibration, device=device
    )
    logger.info("quantizing the pruned full-precision copy %s", copy.path)
    return copy


def _load_kwargs(model_args: GeoModelConfig, path: str, quant: BitsAndBytesConfig | None) -> dict:
    kwargs = {"dtype": model_args.torch_dtype()}
    if path == str(model_args.model_name_or_path):  # a local pruned copy has no revision
        kwargs["revision"] = model_args.model_revision
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    if quant is not None:
        kwargs["quantization_config"] = quant
        if torch.cuda.is_available():
            kwargs["device_map"] = {"": torch.cuda.current_device()}
    return kwargs


def make_trainable(model, model_args: GeoModelConfig, family: Family, quantized: bool, activation_checkpointing: bool):
    """Wrap the model in LoRA (``use_peft``) or unfreeze the language model; returns the model to train.

    Under PEFT the adapter's ``base_model_name_or_path`` is the base the user named (a Hub id stays a Hub id), never
    the local pruned copy the weights were read from: the pushed adapter then links to its real base.
    """
    if quantized:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=activation_checkpointing)
    if model_args.use_peft:
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(model_args, family))
        for peft_config in model.peft_config.values():
            peft_config.base_model_name_or_path = str(model_args.model_name_or_path)
            peft_config.revision = model_args.model_revision
        return model
    # Full fine-tuning of the language model; the vision parts stay frozen unless asked.
    for prefix in family.vision_modules:
        is_projector = "projector" in prefix
        train = model_args.train_projector if is_projector else model_args.train_vision_tower
        for name, parameter in model.named_parameters():
            if name.startswith(prefix + "."):
                parameter.requires_grad_(train)
    return model


def load_model(
    model_args: GeoModelConfig,
    *,
    pruning_config: PruningConfig | None = None,
    pruned_dir: str | Path | None = None,
    calibration: Iterable[dict] | None = None,
    activation_checkpointing: bool = False,
    device: str | torch.device | None = None,
) -> LoadedModel:
    """Load the base model as the options ask and make it trainable.

    Args:
        model_args: The model options.
        pruning_config: The pruning options; when they prune and the base is quantized, a pruned full-precision
            copy is made in ``pruned_dir`` first and quantized instead of the original (its masks are returned).
        pruned_dir: Folder for that copy (required in that case).
        calibration: Calibration batches for wanda pruning before quantization.
        activation_checkpointing: Prepare a quantized model for activation checkpointing.
        device: Where that pruned copy is made when the model must be loaded for it (the training device).

    Returns:
        The :class:`LoadedModel`.

    Raises:
        ValueError: If a pruned copy is needed and ``pruned_dir`` is missing, or a vision prefix is not in the model.
    """
    family = resolve_family(model_args)
    copy = pruned_base(model_args, family, pruning_config, pruned_dir, calibration, device)
    path = str(copy.path) if copy is not None else str(model_args.model_name_or_path)
    quant = bitsandbytes_config_from_options(model_args, family)
    model = AutoModelForImageTextToText.from_pretrained(path, **_load_kwargs(model_args, path, quant))
    if family_of(model).name != family.name:
        raise ValueError(f"family {family.name!r}: the model at {path} is a {family_of(model).name!r}")
    model = make_trainable(model, model_args, family, quant is not None, activation_checkpointing)
    if quant is not None:
        model.config.use_cache = False
    trainable = [(n, p.numel()) for n, p in model.named_parameters() if p.requires_grad]
    total = sum(p.numel() for p in model.parameters())
    n_trainable = sum(n for _, n in trainable)
    quantization = None if quant is None else ("nf4" if model_args.load_in_4bit else "int8")
    logger.info(
        "model %s (%s, %s): %d trainable of %d parameters (%.3f %%)",
        path,
        family.name,
        quantization or model_args.torch_dtype(),
        n_trainable,
        total,
        100.0 * n_trainable / max(total, 1),
    )
    return LoadedModel(
        model=model,
        family=family,
        base_path=path,
        quantization=quantization,
        trainable_parameters=n_trainable,
        total_parameters=total,
        trainable_names=[n for n, _ in trainable],
        pruned_masks=copy.masks if copy is not None else None,
    )


def match_trainable_dtype(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Cast trainable parameters to ``dtype``; returns how many were cast.

    ``SFTTrainer`` casts every trainable parameter of a quantized model to bf16 (the QLoRA paper's recipe). With an
    fp32 compute dtype (CPU) that breaks fully trained modules such as ``lm_head`` in ``modules_to_save``, which then
    receive fp32 activations; call this after creating the trainer (the optimizer is built later, in ``train``).
    """
    cast = 0
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.is_floating_point() and parameter.dtype != dtype:
            parameter.data = parameter.data.to(dtype)
            cast += 1
    return cast
