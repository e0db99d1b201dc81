"""Tiny models of the real families: real transformers classes, tiny configs, random weights, an offline tokenizer.

They are saved with ``save_pretrained`` so that every later stage loads them by path exactly as it would load
``llava-hf/LLaVA-NeXT-Video-7B-hf``.

    geollava-tiny-model --family llava-next-video --out outputs/tiny-llava-next-video
"""

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPVisionConfig,
    HfArgumentParser,
    LlamaConfig,
    LlavaNextImageProcessor,
    LlavaNextVideoConfig,
    LlavaNextVideoForConditionalGeneration,
    LlavaNextVideoProcessor,
    LlavaNextVideoVideoProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Config,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
    SiglipVisionConfig,
    VideoLlavaConfig,
    VideoLlavaForConditionalGeneration,
    VideoLlavaImageProcessor,
    VideoLlavaProcessor,
    VideoLlavaVideoProcessor,
)

from dataset_builder.prompts import ANNOTATION_PROMPT, PROMPT_TEMPLATES
from trainer.families import FAMILIES


logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>", "<video>"]
QWEN_TOKENS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]

# Vicuna-style, as the llava-hf checkpoints, but with `{% generation %}` markers around the answer *and* its EOS, so
# that assistant-only masking trains the model to stop. The generation prompt ends at "ASSISTANT:" and the answer
# starts with its own leading space, so training and generation tokenize the answer identically.
VICUNA_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{ 'USER: ' }}"
    "{%- for c in message['content'] -%}"
    "{%- if c['type'] == 'video' -%}{{ '<video>\\n' }}"
    "{%- elif c['type'] == 'image' -%}{{ '<image>\\n' }}"
    "{%- elif c['type'] == 'text' -%}{{ c['text'] }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{{ ' ' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ 'ASSISTANT:' }}{% generation %}"
    "{%- for c in message['content'] -%}{%- if c['type'] == 'text' -%}{{ ' ' + c['text'] }}{%- endif -%}{%- endfor -%}"
    "{{ eos_token }}{% endgeneration %}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)


#: The end of a ChatML template: the user turn's close, the assistant turn (marked for the assistant-token mask) and
#: the generation prompt; the tiny CCExpert's template ends the same way.
CHATML_TURNS_END = (
    "{{ '<|im_end|>\\n' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}"
    "{%- for c in message['content'] -%}{%- if c['type'] == 'text' -%}{{ c['text'] }}{%- endif -%}{%- endfor -%}"
    "{{ '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def _chatml_template(image: str, video: str) -> str:
    return (
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'user' -%}"
        "{{ '<|im_start|>user\\n' }}"
        "{%- for c in message['content'] -%}"
        f"{{%- if c['type'] == 'video' -%}}{{{{ '{video}\\n' }}}}"
        f"{{%- elif c['type'] == 'image' -%}}{{{{ '{image}\\n' }}}}"
        "{%- elif c['type'] == 'text' -%}{{ c['text'] }}"
        "{%- endif -%}"
        "{%- endfor -%}" + CHATML_TURNS_END
    )


CHATML_TEMPLATE = _chatml_template("<image>", "<video>")
QWEN_TEMPLATE = _chatml_template(
    "<|vision_start|><|image_pad|><|vision_end|>", "<|vision_start|><|video_pad|><|vision_end|>"
)


@dataclass
class TinyModelConfig:
    """Command-line options of ``geollava-tiny-model``."""

    family: str = field(metadata={"help": f"Model family, one of {sorted(FAMILIES)}."})
    out: str = field(metadata={"help": "Folder to write the model, processor and tokenizer into."})
    image_size: int = field(default=64, metadata={"help": "Input side in pixels (a multiple of the patch size)."})
    patch_size: int = field(
        default=8,
        metadata={
            "help": "Vision patch side in pixels (LLaVA-NeXT-Video, Video-LLaVA, LLaVA-OneVision, CCExpert); "
            "--image_size must be a multiple of twice it (the video pooling halves the patch grid)."
        },
    )
    hidden_size: int = field(default=64, metadata={"help": "Width of the language model and the vision tower."})
    num_layers: int = field(default=2, metadata={"help": "Layers of the language model and of the vision tower."})
    vision_layers: int | None = field(
        default=None,
        metadata={"help": "Layers of the vision tower when they differ from --num_layers (at least 2)."},
    )
    rope_theta: float | None = field(
        default=None,
        metadata={
            "help": "RoPE base of the language model (default: the config class's, 1e6 for Qwen2.5-VL). A large "
            "base lets a caption's later words attend to the frames by content, however far back they are."
        },
    )
    vocab_size: int = field(default=1024, metadata={"help": "Upper bound of the BPE vocabulary."})
    corpus_size: int = field(default=3000, metadata={"help": "Synthetic captions the tokenizer is trained on."})
    seed: int = field(default=0, metadata={"help": "Seed of the random weights and of the corpus."})
    vision_pretrain_steps: int = field(
        default=0,
        metadata={
            "help": "Pretrain the vision tower for this many steps on single synthetic scenes (what covers each "
            "patch), the stand-in for CLIP's pretraining; 0 leaves it random (trainer/vision_pretrain.py)."
        },
    )
    vision_pretrain_images: int = field(
        default=3000, metadata={"help": "Synthetic scenes drawn for --vision_pretrain_steps."}
    )

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"--family {self.family!r}: choose one of {sorted(FAMILIES)}")
        # bitsandbytes' CPU 4-bit path repacks weights and needs in_features >= 64 (training-stack.md §3).
        if self.hidden_size < 64 or self.hidden_size % 32:
            raise ValueError(f"--hidden_size {self.hidden_size}: must be a multiple of 32 and at least 64")
        if self.image_size % 16:
            raise ValueError(f"--image_size {self.image_size}: must be a multiple of 16")
        if self.patch_size < 1 or self.image_size % (2 * self.patch_size):
            raise ValueError(
                f"--patch_size {self.patch_size}: --image_size {self.image_size} must be a multiple of twice it"
            )
        if self.vision_layers is not None and self.vision_layers < 2:
            raise ValueError(f"--vision_layers {self.vision_layers}: the towers feed layer -2, so at least 2")
        if self.vision_pretrain_steps < 0 or self.vision_pretrain_images < 10:
            raise ValueError("--vision_pretrain_steps must be >= 0 and --vision_pretrain_images >= 10")

    @property
    def tower_layers(self) -> int:
        """Layers of the vision tower: ``vision_layers``, else ``num_layers`` (at least 2, for layer -2)."""
        return self.vision_layers or max(self.num_layers, 2)


def tokenizer_corpus(size: int = 3000, seed: int = 0) -> list[str]:
    """Text the tiny tokenizers are trained on: the prompt templates and synthetic captions."""
    from dataset_builder.describe import describe_corpus
    from trainer.ccexpert_prompt import CCEXPERT_PROMPT

    chat = ["USER: ASSISTANT:", "user assistant system You are a helpful assistant."]
    return [*PROMPT_TEMPLATES, ANNOTATION_PROMPT, CCEXPERT_PROMPT, *chat, *describe_corpus(size, seed)]


def build_tokenizer(corpus: list[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``corpus``: whole words of the corpus become single tokens.

    Byte-level, so any text (a user's own prompt) still tokenizes and every caption decodes back exactly.
    """
    specials = SPECIAL_TOKENS + QWEN_TOKENS
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>", "video_token": "<video>"},
        padding_side="left",
        model_max_length=4096,
    )


def _token_ids(tokenizer) -> dict:
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS + QWEN_TOKENS}
    return {
        "pad_token_id": ids["<pad>"],
        "bos_token_id": ids["<s>"],
        "eos_token_id": ids["</s>"],
        "image": ids["<image>"],
        "video": ids["<video>"],
        **{k: v for k, v in ids.items() if k.startswith("<|")},
    }


def _text_kwargs(cfg: TinyModelConfig, tokenizer, ids: dict) -> dict:
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=2 * cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        pad_token_id=ids["pad_token_id"],
        bos_token_id=ids["bos_token_id"],
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        **({"rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta}} if cfg.rope_theta else {}),
    )


def _clip(cfg: TinyModelConfig, patch: int) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=cfg.hidden_size,
        intermediate_size=2 * cfg.hidden_size,
        num_hidden_layers=cfg.tower_layers,
        num_attention_heads=2,
        image_size=cfg.image_size,
        patch_size=patch,
        projection_dim=32,
    )


def _llava_next_video(cfg: TinyModelConfig, tokenizer, ids: dict):
    patch, size = cfg.patch_size, cfg.image_size
    pinpoints = [[size, size], [size, 2 * size], [2 * size, size]]
    config = LlavaNextVideoConfig(
        vision_config=_clip(cfg, patch),
        text_config=LlamaConfig(**_text_kwargs(cfg, tokenizer, ids)),
        image_token_index=ids["image"],
        video_token_index=ids["video"],
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_grid_pinpoints=pinpoints,
        spatial_pool_mode="average",
        spatial_pool_stride=2,  # the processor hard-codes the //4 of a stride-2 pool
        image_seq_length=(size // patch) ** 2,
        video_seq_length=2 * (size // patch // 2) ** 2,
        tie_word_embeddings=False,
    )
    crop = {"height": size, "width": size}
    processor = LlavaNextVideoProcessor(
        video_processor=LlavaNextVideoVideoProcessor(size={"shortest_edge": size}, crop_size=crop),
        image_processor=LlavaNextImageProcessor(
            size={"shortest_edge": size}, crop_size=crop, image_grid_pinpoints=pinpoints
        ),
        tokenizer=tokenizer,
        chat_template=VICUNA_TEMPLATE,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    return LlavaNextVideoForConditionalGeneration(config), processor


def _video_llava(cfg: TinyModelConfig, tokenizer, ids: dict):
    patch, size = cfg.patch_size, cfg.image_size
    config = VideoLlavaConfig(
        vision_config=_clip(cfg, patch),
        text_config=LlamaConfig(**_text_kwargs(cfg, tokenizer, ids)),
        image_token_index=ids["image"],
        video_token_index=ids["video"],
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=(size // patch) ** 2 + 1,
        video_seq_length=2 * ((size // patch) ** 2 + 1),
        tie_word_embeddings=False,
    )
    crop = {"height": size, "width": size}
    processor = VideoLlavaProcessor(
        image_processor=VideoLlavaImageProcessor(size={"shortest_edge": size}, crop_size=crop),
        video_processor=VideoLlavaVideoProcessor(size={"shortest_edge": size}, crop_size=crop),
        tokenizer=tokenizer,
        chat_template=VICUNA_TEMPLATE,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    return VideoLlavaForConditionalGeneration(config), processor


def _siglip(cfg: TinyModelConfig, patch: int, layers: int | None = None) -> SiglipVisionConfig:
    return SiglipVisionConfig(
        hidden_size=cfg.hidden_size,
        intermediate_size=2 * cfg.hidden_size,
        num_hidden_layers=layers or cfg.tower_layers,
        num_attention_heads=2,
        image_size=cfg.image_size,
        patch_size=patch,
    )


def _llava_onevision(cfg: TinyModelConfig, tokenizer, ids: dict):
    tokenizer = _chatml_tokenizer(tokenizer, image_token="<image>", video_token="<video>")
    patch, size = cfg.patch_size, cfg.image_size
    pinpoints = [[size, size], [size, 2 * size], [2 * size, size], [2 * size, 2 * size]]
    config = LlavaOnevisionConfig(
        vision_config=_siglip(cfg, patch),
        text_config=Qwen2Config(**_text_kwargs(cfg, tokenizer, ids)),
        image_token_index=ids["image"],
        video_token_index=ids["video"],
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
        image_grid_pinpoints=pinpoints,
        tie_word_embeddings=False,
    )
    processor = _onevision_processor(tokenizer, size, patch, pinpoints, CHATML_TEMPLATE)
    return LlavaOnevisionForConditionalGeneration(config), processor


def _onevision_processor(
    tokenizer, size: int, patch: int, pinpoints: list[list[int]], chat_template: str
) -> LlavaOnevisionProcessor:
    """The processor of a tiny LLaVA-OneVision-shaped model (also CCExpert's): SigLIP patches, no CLS token."""
    return LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(
            size={"height": size, "width": size}, image_grid_pinpoints=pinpoints
        ),
        video_processor=LlavaOnevisionVideoProcessor(size={"height": size, "width": size}),
        tokenizer=tokenizer,
        chat_template=chat_template,
        num_image_tokens=(size // patch) ** 2,
        vision_feature_select_strategy="full",
    )


def _qwen2_5_vl(cfg: TinyModelConfig, tokenizer, ids: dict):
    tokenizer = _chatml_tokenizer(
        tokenizer,
        image_token="<|image_pad|>",
        video_token="<|video_pad|>",
        vision_start_token="<|vision_start|>",
        vision_end_token="<|vision_end|>",
    )
    head_dim = cfg.hidden_size // 4
    quarter = head_dim // 2 // 4
    text = _text_kwargs(cfg, tokenizer, ids)
    text["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": cfg.rope_theta or 1e6,
        "mrope_section": [head_dim // 2 - 2 * quarter, quarter, quarter],
    }
    config = Qwen2_5_VLConfig(
        vision_config=dict(
            depth=cfg.tower_layers,
            hidden_size=cfg.hidden_size,
            intermediate_size=2 * cfg.hidden_size,
            num_heads=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=56,
            out_hidden_size=cfg.hidden_size,
            fullatt_block_indexes=[cfg.tower_layers - 1],
        ),
        text_config=text,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    # 56 px = 4 x 4 patches of 14 = 4 merged tokens per image; 112 px at most.
    side = 56 * max(1, cfg.image_size // 64)
    pixels = {"shortest_edge": side * side, "longest_edge": 2 * side * 2 * side}
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=pixels),
        video_processor=Qwen2VLVideoProcessor(size=pixels),
        tokenizer=tokenizer,
        chat_template=QWEN_TEMPLATE,
    )
    return Qwen2_5_VLForConditionalGeneration(config), processor


def _chatml_tokenizer(tokenizer: PreTrainedTokenizerFast, **placeholders: str) -> PreTrainedTokenizerFast:
    # ChatML families end a turn with <|im_end|>: it must be the EOS so that generation stops there. The Qwen
    # processor looks its placeholders up on the tokenizer by attribute name (image_token, vision_start_token, ...).
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer.backend_tokenizer,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        extra_special_tokens=placeholders,
        padding_side="left",
        model_max_length=4096,
    )


def init_visual_weights(model, family) -> None:
    """Give the random vision tower and projector weights of a usable scale (Xavier).

    With the configs' default ``initializer_range`` (0.02), each random linear layer shrinks its input by ~6x, so
    the projected visual tokens come out nearly constant (std ~0.01, the two dates differing by ~0.003) and a tiny
    model cannot learn to see. A pretrained tower's features carry their input's information; Xavier-initialised
    random ones do too (std ~1, dates differing by ~0.4), which is what the tiny stand-in needs to mimic.
    """
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and any(name.startswith(p + ".") for p in family.vision_modules):
            torch.nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)


def _ccexpert(cfg: TinyModelConfig, tokenizer, ids: dict):
    from trainer.ccexpert.tiny import ccexpert_model_and_processor

    return ccexpert_model_and_processor(cfg, tokenizer, ids)


BUILDERS = {
    "ccexpert": _ccexpert,
    "llava-next-video": _llava_next_video,
    "video-llava": _video_llava,
    "llava-onevision": _llava_onevision,
    "qwen2.5-vl": _qwen2_5_vl,
}


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
        family: A name from :data:`trainer.families.FAMILIES`.
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
        vision_pretrain_steps: Steps of :func:`trainer.vision_pretrain.pretrain_vision_tower` (0: none).
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
    model, processor = BUILDERS[family](cfg, tokenizer, _token_ids(tokenizer))
    init_visual_weights(model, FAMILIES[family])
    info = {}
    if vision_pretrain_steps:
        from trainer.vision_pretrain import pretrain_vision_tower

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
