"""A tiny CCExpert: real classes, a tiny config, random weights, the offline tokenizer of ``trainer.tiny.tokenizer``.

CCExpert feeds each image as one square tile (``image_aspect_ratio="square"``, no anyres), so the image processor's
only grid pinpoint is ``[size, size]``. The chat template is ChatML with the system prompt "You are a helpful
assistant." and the authors' fixed pair prompt (:data:`CCEXPERT_CHAT_TEMPLATE`).
"""

import logging
from pathlib import Path

import torch
from transformers import (
    LlavaOnevisionProcessor,
    Qwen2Config,
)

from trainer.models.ccexpert.configuration_ccexpert import CCExpertConfig
from trainer.models.ccexpert.modeling_ccexpert import CCExpertForConditionalGeneration
from trainer.models.ccexpert.template import CCEXPERT_CHAT_TEMPLATE, CCEXPERT_PROMPT, CCEXPERT_SYSTEM
from trainer.tiny.families import TinyModelConfig, onevision_processor, save_tiny, siglip_config, text_kwargs
from trainer.tiny.tokenizer import build_tokenizer, chatml_tokenizer, token_ids, tokenizer_corpus


logger = logging.getLogger(__name__)


def ccexpert_model_and_processor(
    cfg: TinyModelConfig, tokenizer, ids: dict, *, vision_layers: int = 8, gate_init: float = 1.0
) -> tuple[CCExpertForConditionalGeneration, LlavaOnevisionProcessor]:
    """The tiny model and its processor, with the signature of ``trainer.tiny.build.BUILDERS`` entries.

    Args:
        cfg: Sizes (``image_size``, ``hidden_size``, ``num_layers`` of the language model).
        tokenizer: The BPE tokenizer of ``trainer.tiny.tokenizer.build_tokenizer``.
        ids: Its special-token ids (``trainer.tiny.tokenizer.token_ids``).
        vision_layers: Blocks of the vision tower; the taps sit at the paper's relative depths (8 gives 5/6/7/8).
        gate_init: Initial value of the module's output gate.

    Returns:
        ``(model, processor)``.
    """
    tokenizer = chatml_tokenizer(tokenizer, image_token="<image>", video_token="<video>")
    patch, size = cfg.patch_size, cfg.image_size
    vision = siglip_config(cfg, patch, layers=vision_layers)
    config = CCExpertConfig(
        vision_config=vision,
        text_config=Qwen2Config(**text_kwargs(cfg, tokenizer, ids)),
        image_token_index=ids["image"],
        video_token_index=ids["video"],
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        image_grid_pinpoints=[[size, size]],
        integration_num_heads=2,
        integration_gate_init=gate_init,
        tie_word_embeddings=False,
    )
    processor = onevision_processor(tokenizer, size, patch, [[size, size]], CCEXPERT_CHAT_TEMPLATE)
    return CCExpertForConditionalGeneration(config), processor


def build_tiny_ccexpert(
    out_dir: str | Path,
    *,
    image_size: int = 64,
    hidden_size: int = 64,
    num_layers: int = 2,
    vision_layers: int = 8,
    vocab_size: int = 1024,
    corpus: list[str] | None = None,
    gate_init: float = 1.0,
    seed: int = 0,
) -> Path:
    """Build a tiny CCExpert and save model, processor and tokenizer with ``save_pretrained``.

    Args:
        out_dir: Where to save.
        image_size: Input side in pixels (one tile per image).
        hidden_size: Width of the language model, the vision tower and the module.
        num_layers: Layers of the language model.
        vision_layers: Blocks of the vision tower.
        vocab_size: Upper bound of the BPE vocabulary.
        corpus: Text to train the tokenizer on; by default ``trainer.tiny.tokenizer.tokenizer_corpus()``.
        gate_init: Initial value of the module's output gate (0 gives exactly LLaVA-OneVision).
        seed: Seed of the random weights.

    Returns:
        ``out_dir`` as a path.
    """
    cfg = TinyModelConfig(
        family="ccexpert",
        out=str(out_dir),
        image_size=image_size,
        hidden_size=hidden_size,
        num_layers=num_layers,
        vocab_size=vocab_size,
        seed=seed,
    )
    if corpus is None:
        corpus = tokenizer_corpus(cfg.corpus_size, seed)
    tokenizer = build_tokenizer([CCEXPERT_PROMPT, CCEXPERT_SYSTEM, *corpus], vocab_size)
    torch.manual_seed(seed)
    model, processor = ccexpert_model_and_processor(
        cfg, tokenizer, token_ids(tokenizer), vision_layers=vision_layers, gate_init=gate_init
    )
    module_params = sum(p.numel() for p in model.model.integration_module.parameters())
    # vision_layers after the options: the tower's depth is this function's, not TinyModelConfig's (None)
    info = {**vars(cfg), "vision_layers": vision_layers, "integration_module_parameters": module_params}
    out, n_params = save_tiny(model, processor, out_dir, info)
    logger.info("built a tiny ccexpert (%d parameters, %d in the module) in %s", n_params, module_params, out)
    return out


__all__ = ["build_tiny_ccexpert", "ccexpert_model_and_processor"]
