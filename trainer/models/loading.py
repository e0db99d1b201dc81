"""Load a base model + adapter (+ pruning masks) for inference: evaluation, prediction, the Space and the quickstart.

Masks are applied to the full-precision base weights before any quantization and before the adapter is attached:
bitsandbytes packs 4-bit weights, and pruning them would zero packed bytes, so the masked base is quantized after.
Also the one bitsandbytes config of the project (training and inference). See docs/evaluation.md.
"""

import logging
import tempfile
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from peft import PeftModel
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, BitsAndBytesConfig

from trainer.models.chat_templates import ensure_chat_template
from trainer.models.device import model_device, model_dtype, resolve_device, resolve_dtype
from trainer.models.families import Family, family_of
from trainer.pruning.masks import MASKS_FILE, apply_masks, load_masks


logger = logging.getLogger(__name__)

PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json")


def adapter_folder(adapter: str | Path) -> Path:
    """A local folder with the adapter's files: ``adapter`` itself, or a snapshot of the Hub repo it names."""
    path = Path(adapter)
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"adapter {str(adapter)!r} is a file; give the adapter folder or a Hub repo id")
    return Path(snapshot_download(str(adapter)))


def bitsandbytes_config(
    family: Family | None,
    *,
    bits: int = 4,
    quant_type: str = "nf4",
    double_quant: bool = True,
    compute_dtype: torch.dtype | None = None,
) -> BitsAndBytesConfig:
    """The one bitsandbytes config of the project, for training (QLoRA) and for inference alike.

    The vision tower(s), the projector and ``lm_head`` stay in full precision (they may be trained in full, which a
    4-bit layer cannot be): ``llm_int8_skip_modules`` holds the family's full in-memory prefixes (transformers 5
    matches them from the start of the module name; a bare ``"vision_tower"`` silently quantizes the tower).

    Args:
        family: The model family (``None``: only ``lm_head`` is skipped).
        bits: 4 (NF4/FP4, QLoRA) or 8 (LLM.int8).
        quant_type: The 4-bit data type, ``"nf4"`` or ``"fp4"``.
        double_quant: Quantize the 4-bit quantization constants too (QLoRA's double quantization).
        compute_dtype: The dtype 4-bit layers compute in (default bf16).

    Returns:
        The config.
    """
    skip = [*(family.vision_modules if family else ()), "lm_head"]
    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    if bits != 4:
        raise ValueError(f"bits {bits!r}: bitsandbytes quantizes to 4 or 8 bits")
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant_type,
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=compute_dtype or torch.bfloat16,
        llm_int8_skip_modules=skip,
    )


def _masks(folder: Path | None):
    if folder is None or not (folder / MASKS_FILE).exists():
        return None
    return load_masks(folder)


def load_for_inference(
    model: str | Path,
    adapter: str | Path | None = None,
    load_in_4bit: bool = False,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = "auto",
):
    """Load a base model, re-apply the adapter's pruning masks, attach the adapter, and ready it for generation.

    Args:
        model: Base model folder or Hub id (anything ``AutoModelForImageTextToText`` loads).
        adapter: PEFT adapter folder or Hub repo id; ``None`` for the base model alone.
        load_in_4bit: Quantize the (masked) base to NF4 with bitsandbytes; vision modules stay unquantized.
        dtype: Weights dtype (``torch.bfloat16`` or its name); ``None``/``"auto"``: bf16 on CUDA, the checkpoint's
            own on the CPU (:func:`trainer.models.device.resolve_dtype`).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``: the model is placed there.

    Returns:
        ``(model, processor, family)``: the model in eval mode on ``device``, its processor (the adapter's when it
        ships one) with left padding, and its :class:`~trainer.models.families.Family`.

    Raises:
        ValueError: If ``device`` names no device of this machine or ``dtype`` is not a floating dtype.
    """
    target = resolve_device(device)
    dtype = resolve_dtype(dtype, target)
    folder = adapter_folder(adapter) if adapter is not None else None
    masks = _masks(folder)
    kwargs = {"dtype": dtype if dtype is not None else "auto"}  # "auto": the checkpoint's own, never fp32 by default
    on_target = {"device_map": {"": str(target)}} if target.type == "cuda" else {}
    if load_in_4bit:
        base = _load_4bit(model, masks, kwargs, on_target, dtype)
    else:
        base = AutoModelForImageTextToText.from_pretrained(model, **kwargs, **on_target)
        if masks is not None:
            apply_masks(base, masks)
    family = family_of(base)
    if masks is not None:
        logger.info("re-applied %d pruning masks from %s", len(masks), folder / MASKS_FILE)
    net = PeftModel.from_pretrained(base, str(folder)) if folder is not None else base
    net.eval()
    processor_source = folder if folder is not None and any((folder / f).exists() for f in PROCESSOR_FILES) else model
    processor = AutoProcessor.from_pretrained(processor_source)
    ensure_chat_template(processor, family.name)
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    logger.info(
        "loaded %s (%s)%s on %s%s",
        model,
        family.name,
        f" + adapter {adapter}" if adapter else "",
        model_device(net),
        " in 4-bit" if load_in_4bit else f" ({model_dtype(net)})",
    )
    return net, processor, family


def _load_4bit(model, masks, kwargs: dict, on_target: dict, dtype):
    # Quantize from the (masked) full-precision weights, never prune packed 4-bit bytes: the masked base is written
    # to a temporary folder (on the CPU) and quantized from there, straight onto the target device.
    source = model
    with tempfile.TemporaryDirectory(prefix="geollava-masked-") as tmp:
        if masks is not None:
            full = AutoModelForImageTextToText.from_pretrained(model, **kwargs)
            apply_masks(full, masks)
            full.save_pretrained(tmp)
            del full
            source = tmp
        family = family_of(AutoConfig.from_pretrained(source))
        quant = bitsandbytes_config(family, compute_dtype=dtype)
        return AutoModelForImageTextToText.from_pretrained(source, quantization_config=quant, **kwargs, **on_target)
