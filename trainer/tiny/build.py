"""Build a tiny model of a real family: its transformers classes, a tiny config, random weights, an offline tokenizer.

    geollava-tiny-model --family llava-next-video --out outputs/tiny-llava-next-video

Saved with ``save_pretrained``, so every later stage loads it by path as it would load
``llava-hf/LLaVA-NeXT-Video-7B-hf``. See docs/training.md.
"""

import json
import logging
import sys
from pathlib import Path

import torch
from transformers import HfArgumentParser

from trainer.models.families import FAMILIES
from trainer.tiny.ccexpert import ccexpert_model_and_processor
from trainer.tiny.families import FAMILY_BUILDERS, TINY_MODEL_FILE, TinyModelConfig, init_visual_weights, save_tiny
from trainer.tiny.tokenizer import build_tokenizer, token_ids, tokenizer_corpus
from trainer.tiny.vision_pretrain import pretrain_vision_tower


logger = logging.getLogger(__name__)


#: How each family is built: the four families' builders, then CCExpert's.
BUILDERS = {**FAMILY_BUILDERS, "ccexpert": ccexpert_model_and_processor}


def build_tiny_model(family: str, out_dir: str | Path, *, corpus: list[str] | None = None, **options) -> Path:
    """Build a tiny model of a family and save model, processor and tokenizer with ``save_pretrained``.

    Args:
        family: A name from :data:`trainer.models.families.FAMILIES`.
        out_dir: Where to save.
        corpus: Text to train the tokenizer on; by default the prompt templates and ``corpus_size`` synthetic
            captions.
        **options: Any other option of ``geollava-tiny-model`` (:class:`~trainer.tiny.families.TinyModelConfig`,
            with its defaults): ``image_size``, ``patch_size``, ``hidden_size``, ``num_layers``, ``vision_layers``,
            ``rope_theta``, ``vocab_size``, ``corpus_size``, ``seed``, ``vision_pretrain_steps``,
            ``vision_pretrain_images``.

    Returns:
        ``out_dir`` as a path.

    Raises:
        TypeError: For an option ``geollava-tiny-model`` does not have.
        ValueError: For an option's bad value (the message names it).
    """
    cfg = TinyModelConfig(family=family, out=str(out_dir), **options)
    if corpus is None:
        corpus = tokenizer_corpus(cfg.corpus_size, cfg.seed)
    tokenizer = build_tokenizer(corpus, cfg.vocab_size)
    torch.manual_seed(cfg.seed)
    model, processor = BUILDERS[family](cfg, tokenizer, token_ids(tokenizer))
    init_visual_weights(model, FAMILIES[family])
    info = {}
    if cfg.vision_pretrain_steps:
        info["vision_pretraining"] = pretrain_vision_tower(
            model, processor, family, cfg.vision_pretrain_steps, images=cfg.vision_pretrain_images, seed=cfg.seed
        )
    out, n_params = save_tiny(model, processor, out_dir, {**vars(cfg), "family": family, **info})
    logger.info("built a tiny %s (%d parameters, vocabulary %d) in %s", family, n_params, len(tokenizer), out)
    return out


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``geollava-tiny-model``."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    (cfg,) = HfArgumentParser(TinyModelConfig).parse_args_into_dataclasses(args=argv)
    out = build_tiny_model(out_dir=cfg.out, **{name: value for name, value in vars(cfg).items() if name != "out"})
    info = json.loads((out / TINY_MODEL_FILE).read_text())
    print(f"tiny {cfg.family}: {info['parameters']:,} parameters, vocabulary {info['vocab_size']} -> {out}")


if __name__ == "__main__":
    sys.exit(main())
