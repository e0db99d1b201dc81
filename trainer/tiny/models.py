"""Tiny models of the real families: real transformers classes, tiny configs, random weights, an offline tokenizer.

They are saved with ``save_pretrained`` so that every later stage loads them by path exactly as it would load
``llava-hf/LLaVA-NeXT-Video-7B-hf``.

    geollava-tiny-model --family llava-next-video --out outputs/tiny-llava-next-video
"""

import json
import logging
import sys
from pathlib import Path

import torch
from transformers import HfArgumentParser

from trainer.models.families import FAMILIES
from trainer.tiny.ccexpert import ccexpert_model_and_processor
from trainer.tiny.families import FAMILY_BUILDERS, TinyModelConfig, init_visual_weights
from trainer.tiny.tokenizer import build_tokenizer, token_ids, tokenizer_corpus
from trainer.tiny.vision_pretrain import pretrain_vision_tower


logger = logging.getLogger(__name__)


#: How each family is built: the four families' builders, then CCExpert's.
BUILDERS = {**FAMILY_BUILDERS, "ccexpert": ccexpert_model_and_processor}


def build_tiny_model(
    family: str,
    out_dir: str | Path,
    *,
    image_size: int = 64,
    patch_size: int = 8,
    hidden_size: int = 64,
    num_layers: int = 2,
    vision_layers: int | None = None,
    rope_theta: float | None = None,
    vocab_size: int = 1024,
    corpus: list[str] | None = None,
    corpus_size: int = 3000,
    seed: int = 0,
    vision_pretrain_steps: int = 0,
    vision_pretrain_images: int = 3000,
) -> Path:
    """Build a tiny model of a family and save model, processor and tokenizer with ``save_pretrained``.

    Args:
        family: A name from :data:`trainer.models.families.FAMILIES`.
        out_dir: Where to save.
        image_size: Input side in pixels.
        patch_size: Vision patch side in pixels (not Qwen2.5-VL, whose patch is 14).
        hidden_size: Width of the language model and the vision tower (>= 64 for bitsandbytes on CPU).
        num_layers: Layers of the language model and the vision tower.
        vision_layers: Layers of the vision tower when they differ (at least 2).
        rope_theta: RoPE base of the language model (default: the config class's; 1e6 for Qwen2.5-VL).
        vocab_size: Upper bound of the BPE vocabulary.
        corpus: Text to train the tokenizer on; by default the prompt templates and ``corpus_size`` synthetic
            captions.
        corpus_size: Synthetic captions in the default corpus.
        seed: Seed of the random weights.
        vision_pretrain_steps: Steps of :func:`trainer.tiny.vision_pretrain.pretrain_vision_tower` (0: none).
        vision_pretrain_images: Synthetic scenes it draws.

    Returns:
        ``out_dir`` as a path.
    """
    cfg = TinyModelConfig(
        family=family,
        out=str(out_dir),
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=hidden_size,
        num_layers=num_layers,
        vision_layers=vision_layers,
        rope_theta=rope_theta,
        vocab_size=vocab_size,
        corpus_size=corpus_size,
        seed=seed,
        vision_pretrain_steps=vision_pretrain_steps,
        vision_pretrain_images=vision_pretrain_images,
    )
    tokenizer = build_tokenizer(corpus if corpus is not None else tokenizer_corpus(cfg.corpus_size, seed), vocab_size)
    torch.manual_seed(seed)
    model, processor = BUILDERS[family](cfg, tokenizer, token_ids(tokenizer))
    init_visual_weights(model, FAMILIES[family])
    info = {}
    if vision_pretrain_steps:
        info["vision_pretraining"] = pretrain_vision_tower(
            model, processor, family, vision_pretrain_steps, images=vision_pretrain_images, seed=seed
        )
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    (out / "tiny_model.json").write_text(
        json.dumps(
            {**vars(cfg), "family": family, "parameters": n_params, "vocab_size": len(processor.tokenizer), **info}
        )
    )
    logger.info("built a tiny %s (%d parameters, vocabulary %d) in %s", family, n_params, len(tokenizer), out)
    return out


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``geollava-tiny-model``."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    (cfg,) = HfArgumentParser(TinyModelConfig).parse_args_into_dataclasses(args=argv)
    # Every option by name: a field added to TinyModelConfig but not to build_tiny_model fails here, never silently.
    out = build_tiny_model(out_dir=cfg.out, **{name: value for name, value in vars(cfg).items() if name != "out"})
    info = json.loads((out / "tiny_model.json").read_text())
    print(f"tiny {cfg.family}: {info['parameters']:,} parameters, vocabulary {info['vocab_size']} -> {out}")


if __name__ == "__main__":
    sys.exit(main())
