"""Load a base model + adapter (+ pruning masks) for inference: evaluation, prediction, the Space and the quickstart.

Masks are applied to the full-precision base weights *before* any quantization and before the adapter is attached,
as training pruned them (STYLE.md "Do this" 2): with ``load_in_4bit`` the masked base is written to a temporary
folder and quantized from there, so no packed 4-bit byte is ever pruned.
"""

import logging
import tempfile
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from peft import PeftModel
from transformers import AutoModelForImageTextToText, AutoProcessor, BitsAndBytesConfig

from trainer.models.families import Family, family_of
from trainer.models.masks import MASKS_FILE, apply_masks, load_masks


logger = logging.getLogger(__name__)

PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json")


def _resolve_dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return None
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"dtype must be a torch dtype name such as 'bfloat16', got {dtype!r}")
    return value


def adapter_folder(adapter: str | Path) -> Path:
    """A local folder with the adapter's files: ``adapter`` itself, or a snapshot of the Hub repo it names."""
    path = Path(adapter)
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"adapter {str(adapter)!r} is a file; give the adapter folder or a Hub repo id")
    return Path(snapshot_download(str(adapter)))


def quantization_config(
    family: Family | None,
    *,
    bits: int = 4,
    quant_type: str = "nf4",
    double_quant: bool = True,
    compute_dtype: torch.dtype | None = None,
) -> BitsAndBytesConfig:
    """The one bitsandbytes config of the project, for training (QLoRA) and for inference alike.

    The vision tower(s), the projector and ``lm_head`` stay in full precision (STYLE.md): ``llm_int8_skip_modules``
    holds the family's full in-memory prefixes (transformers 5 matches them from the start of the module name; a bare
    ``"vision_tower"`` silently quantizes the tower).

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
):
    """Load a base model, re-apply the adapter's pruning masks, attach the adapter, and ready it for generation.

    Args:
        model: Base model folder or Hub id (anything ``AutoModelForImageTextToText`` loads).
        adapter: PEFT adapter folder or Hub repo id; ``None`` for the base model alone.
        load_in_4bit: Quantize the (masked) base to NF4 with bitsandbytes; vision modules stay unquantized.
        dtype: Weights dtype (``torch.bfloat16`` or its name); ``None`` keeps the checkpoint's default.

    Returns:
        ``(model, processor, family)``: the model in eval mode, its processor (the adapter's when it ships one)
        with left padding, and its :class:`~trainer.models.families.Family`.
    """
    dtype = _resolve_dtype(dtype)
    folder = adapter_folder(adapter) if adapter is not None else None
    masks = _masks(folder)
    kwargs = {"dtype": dtype} if dtype is not None else {}
    base = AutoModelForImageTextToText.from_pretrained(model, **kwargs)
    family = family_of(base)
    if masks is not None:
        apply_masks(base, masks)
        logger.info("re-applied %d pruning masks from %s", len(masks), folder / MASKS_FILE)
    if load_in_4bit:
        with tempfile.TemporaryDirectory(prefix="geollava-masked-") as tmp:
            # Quantize from the (masked) full-precision weights, never prune packed 4-bit bytes.
            base.save_pretrained(tmp)
            del base
            base = AutoModelForImageTextToText.from_pretrained(
                tmp, quantization_config=quantization_config(family, compute_dtype=dtype), **kwargs
            )
    if folder is not None:
        net = PeftModel.from_pretrained(base, str(folder))
    else:
        net = base
    net.eval()
    processor_source = folder if folder is not None and any((folder / f).exists() for f in PROCESSOR_FILES) else model
    processor = AutoProcessor.from_pretrained(processor_source)
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    logger.info(
        "loaded %s (%s)%s%s",
        model,
        family.name,
        f" + adapter {adapter}" if adapter else "",
        " in 4-bit" * load_in_4bit,
    )
    return net, processor, family
