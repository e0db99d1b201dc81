"""Tiny configs of the four families: real transformers classes, tiny sizes, random weights."""

from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    CLIPVisionConfig,
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

from dataset_builder.atomic import write_json
from trainer.models.chat_templates import LLAVA_NEXT_VIDEO_TEMPLATE, LLAVA_ONEVISION_TEMPLATE, QWEN2_5_VL_TEMPLATE
from trainer.models.families import FAMILIES
from trainer.tiny.tokenizer import chatml_ids, chatml_tokenizer


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
            "patch), the stand-in for CLIP's pretraining; 0 leaves it random (trainer/tiny/vision_pretrain.py)."
        },
    )
    vision_pretrain_images: int = field(
        default=3000, metadata={"help": "Synthetic scenes drawn for --vision_pretrain_steps."}
    )

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"--family {self.family!r}: choose one of {sorted(FAMILIES)}")
        # bitsandbytes' CPU 4-bit repack needs in_features >= 64 and out_features % 32 == 0 (docs/training.md).
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


def text_kwargs(cfg: TinyModelConfig, tokenizer, ids: dict) -> dict:
    """Keyword arguments of a tiny language-model config (Llama, Qwen2) for ``cfg`` and the tokenizer."""
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


#: What a tiny model's folder says of how it was built (its options, parameter count, vocabulary).
TINY_MODEL_FILE = "tiny_model.json"

# The processor side of a CLIP tower read with its CLS token dropped ("default"): one extra token per image.
CLIP_PROCESSOR = {"vision_feature_select_strategy": "default", "num_additional_image_tokens": 1}


def clip_config(cfg: TinyModelConfig, patch: int) -> CLIPVisionConfig:
    """A tiny CLIP vision tower config (LLaVA-NeXT-Video, Video-LLaVA)."""
    return CLIPVisionConfig(
        hidden_size=cfg.hidden_size,
        intermediate_size=2 * cfg.hidden_size,
        num_hidden_layers=cfg.tower_layers,
        num_attention_heads=2,
        image_size=cfg.image_size,
        patch_size=patch,
        projection_dim=32,
    )


def _clip_llama(cfg: TinyModelConfig, tokenizer, ids: dict) -> dict:
    """The config fields LLaVA-NeXT-Video and Video-LLaVA share.

    A CLIP tower read at its penultimate layer (CLS token dropped), a Llama language model with untied embeddings,
    and the two visual tokens.
    """
    return {
        "vision_config": clip_config(cfg, cfg.patch_size),
        "text_config": LlamaConfig(**text_kwargs(cfg, tokenizer, ids)),
        "image_token_index": ids["image"],
        "video_token_index": ids["video"],
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "tie_word_embeddings": False,
    }


def _llava_next_video(cfg: TinyModelConfig, tokenizer, ids: dict):
    patch, size = cfg.patch_size, cfg.image_size
    pinpoints = [[size, size], [size, 2 * size], [2 * size, size]]
    config = LlavaNextVideoConfig(
        **_clip_llama(cfg, tokenizer, ids),
        image_grid_pinpoints=pinpoints,
        spatial_pool_mode="average",
        spatial_pool_stride=2,  # the processor hard-codes the //4 of a stride-2 pool
        image_seq_length=(size // patch) ** 2,
        video_seq_length=2 * (size // patch // 2) ** 2,
    )
    crop = {"height": size, "width": size}
    processor = LlavaNextVideoProcessor(
        video_processor=LlavaNextVideoVideoProcessor(size={"shortest_edge": size}, crop_size=crop),
        image_processor=LlavaNextImageProcessor(
            size={"shortest_edge": size}, crop_size=crop, image_grid_pinpoints=pinpoints
        ),
        tokenizer=tokenizer,
        chat_template=LLAVA_NEXT_VIDEO_TEMPLATE,
        patch_size=patch,
        **CLIP_PROCESSOR,
    )
    return LlavaNextVideoForConditionalGeneration(config), processor


def _video_llava(cfg: TinyModelConfig, tokenizer, ids: dict):
    patch, size = cfg.patch_size, cfg.image_size
    config = VideoLlavaConfig(
        **_clip_llama(cfg, tokenizer, ids),
        image_seq_length=(size // patch) ** 2 + 1,
        video_seq_length=2 * ((size // patch) ** 2 + 1),
    )
    crop = {"height": size, "width": size}
    processor = VideoLlavaProcessor(
        image_processor=VideoLlavaImageProcessor(size={"shortest_edge": size}, crop_size=crop),
        video_processor=VideoLlavaVideoProcessor(size={"shortest_edge": size}, crop_size=crop),
        tokenizer=tokenizer,
        chat_template=None,  # as LanguageBind/Video-LLaVA-7B-hf: loaders give it the documented format
        patch_size=patch,
        **CLIP_PROCESSOR,
    )
    return VideoLlavaForConditionalGeneration(config), processor


def siglip_config(cfg: TinyModelConfig, patch: int, layers: int | None = None) -> SiglipVisionConfig:
    """A tiny SigLIP vision tower config (LLaVA-OneVision, CCExpert), ``layers`` deep when given."""
    return SiglipVisionConfig(
        hidden_size=cfg.hidden_size,
        intermediate_size=2 * cfg.hidden_size,
        num_hidden_layers=layers or cfg.tower_layers,
        num_attention_heads=2,
        image_size=cfg.image_size,
        patch_size=patch,
    )


def _llava_onevision(cfg: TinyModelConfig, tokenizer, ids: dict):
    tokenizer = chatml_tokenizer(tokenizer, qwen2=True, image_token="<image>", video_token="<video>")
    ids = chatml_ids(tokenizer, ids)
    patch, size = cfg.patch_size, cfg.image_size
    pinpoints = [[size, size], [size, 2 * size], [2 * size, size], [2 * size, 2 * size]]
    config = LlavaOnevisionConfig(
        vision_config=siglip_config(cfg, patch),
        text_config=Qwen2Config(**text_kwargs(cfg, tokenizer, ids)),
        image_token_index=ids["image"],
        video_token_index=ids["video"],
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
        image_grid_pinpoints=pinpoints,
        tie_word_embeddings=False,
    )
    processor = onevision_processor(tokenizer, size, patch, pinpoints, LLAVA_ONEVISION_TEMPLATE)
    return LlavaOnevisionForConditionalGeneration(config), processor


def onevision_processor(
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
    tokenizer = chatml_tokenizer(
        tokenizer,
        qwen2=True,
        image_token="<|image_pad|>",
        video_token="<|video_pad|>",
        vision_start_token="<|vision_start|>",
        vision_end_token="<|vision_end|>",
    )
    ids = chatml_ids(tokenizer, ids)
    head_dim = cfg.hidden_size // 4
    quarter = head_dim // 2 // 4
    text = text_kwargs(cfg, tokenizer, ids)
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
        chat_template=QWEN2_5_VL_TEMPLATE,
    )
    return Qwen2_5_VLForConditionalGeneration(config), processor


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


#: The builder of each of the four families: ``(cfg, tokenizer, ids) -> (model, processor)``.
FAMILY_BUILDERS = {
    "llava-next-video": _llava_next_video,
    "video-llava": _video_llava,
    "llava-onevision": _llava_onevision,
    "qwen2.5-vl": _qwen2_5_vl,
}


def save_tiny(model, processor, out_dir: str | Path, info: dict) -> tuple[Path, int]:
    """Save a tiny model and its processor into ``out_dir``, generating with the tokenizer's pad and EOS ids.

    ``tiny_model.json`` beside them records ``info`` with the model's parameter count and its actual vocabulary
    size (``vocab_size`` in the options is an upper bound).

    Returns:
        The folder, and the model's parameter count.
    """
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    write_json(out / TINY_MODEL_FILE, {**info, "parameters": n_params, "vocab_size": len(processor.tokenizer)})
    return out, n_params
