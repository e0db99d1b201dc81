"""The GPU benchmarks' model: LLaVA-NeXT-Video-7B's config written out, a random model built from it on the meta
device, its parameter and FLOP counts, batches shaped like the collator's, the recipes' settings and where their
weights are (benchmarks/gpu_train.py uses them; bench_prune.py builds its checkpoint with ``build_random_model``).

Throughput does not depend on weight values, so a model built from the config with random weights times the same as
the real checkpoint: Vicuna-7B language model, CLIP ViT-L/14 at 336 px, 2 frames = 288 video tokens (the sizes and
FLOPs: docs/training.md "At scale"). ``tiny_config`` is the same structure at test size, for the dry runs.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from huggingface_hub import snapshot_download
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaNextVideoConfig,
    LlavaNextVideoForConditionalGeneration,
)


FRAMES = 2
ROOT = Path(__file__).resolve().parents[1]
# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by device-name fragment, most specific first.
PEAK_TFLOPS = (
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),
    ("A100", 312.0),
    ("L40S", 362.1),
    ("A6000", 154.8),
    ("L4", 121.0),
)


def _llama(vocab: int, hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, positions: int, **kw):
    """A Llama (Vicuna) language model config: untied embeddings, pad/BOS/EOS 0/1/2 as in Vicuna's tokenizer."""
    sizes = {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
    }
    sizes |= {"num_attention_heads": heads, "num_key_value_heads": kv_heads, "max_position_embeddings": positions}
    return LlamaConfig(**sizes, pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, **kw)


def _clip(hidden: int, intermediate: int, layers: int, heads: int, image: int, patch: int, **kw) -> CLIPVisionConfig:
    """A CLIP vision tower config."""
    sizes = {"hidden_size": hidden, "intermediate_size": intermediate, "num_hidden_layers": layers}
    return CLIPVisionConfig(**sizes, num_attention_heads=heads, image_size=image, patch_size=patch, **kw)


def _llava_next_video(text: LlamaConfig, vision: CLIPVisionConfig, **kw) -> LlavaNextVideoConfig:
    """The two towers joined as LLaVA-NeXT-Video joins them: the penultimate vision layer, CLS dropped."""
    return LlavaNextVideoConfig(
        text_config=text,
        vision_config=vision,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        tie_word_embeddings=False,
        **kw,
    )


def real_config() -> LlavaNextVideoConfig:
    """LLaVA-NeXT-Video-7B-hf's config, written out (values of the Hub ``config.json``)."""
    return _llava_next_video(
        _llama(32064, 4096, 11008, layers=32, heads=32, kv_heads=32, positions=4096, rms_norm_eps=1e-5),
        _clip(1024, 4096, layers=24, heads=16, image=336, patch=14, projection_dim=768, layer_norm_eps=1e-5),
        image_token_index=32001,
        video_token_index=32000,
        projector_hidden_act="gelu",
        image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
        spatial_pool_mode="average",
        spatial_pool_stride=2,
        image_seq_length=576,
        video_seq_length=288,
    )


def video_tokens(config: LlavaNextVideoConfig, frames: int = FRAMES) -> int:
    """Video tokens the model inserts for ``frames`` frames (patch grid, CLS dropped, pooled by the stride)."""
    side = config.vision_config.image_size // config.vision_config.patch_size // config.spatial_pool_stride
    return frames * side * side


def build_random_model(
    config: LlavaNextVideoConfig, device: str | torch.device, dtype: torch.dtype, attn_implementation: str = "sdpa"
) -> LlavaNextVideoForConditionalGeneration:
    """Build the model on the meta device, materialise it on ``device`` in ``dtype`` and initialise it at random.

    ``initialize_weights`` also recomputes the non-persistent buffers (rotary ``inv_freq``, CLIP ``position_ids``)
    that ``to_empty`` leaves uninitialised.
    """
    config._attn_implementation = attn_implementation
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            model = LlavaNextVideoForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    model.to_empty(device=device)
    with torch.no_grad():
        model.initialize_weights()
    return model


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """Parameters by part: ``total``, ``vision`` (tower), ``projector``, ``lm_matmul`` (LM linears + lm_head)."""
    counts = {"total": 0, "vision": 0, "projector": 0, "lm_matmul": 0, "embedding": 0}
    for name, parameter in model.named_parameters():
        n = parameter.numel()
        if "lora_" in name:
            continue
        counts["total"] += n
        if "vision_tower" in name:
            counts["vision"] += n
        elif "multi_modal_projector" in name:
            counts["projector"] += n
        elif "embed_tokens" in name:
            counts["embedding"] += n
        elif name.endswith("proj.weight") or name.endswith("proj.base_layer.weight") or "lm_head" in name:
            counts["lm_matmul"] += n
    return counts


def flops_per_sample(
    counts: dict[str, int], config: LlavaNextVideoConfig, tokens: int, lora_parameters: int = 0
) -> dict[str, float]:
    """Training FLOPs per sample under two models.

    * ``6n``: ``6 * N_total * tokens``, the usual "6N" rule (forward 2N, backward 4N) applied to every parameter.
      It over-counts a frozen base (no weight gradients) and the vision tower (it sees patches, not text tokens);
      kept because it is the common yardstick.
    * ``4n``: what this run computes. Frozen LM linears: forward 2N + input-gradient backward 2N, ``4 * N_lm *
      tokens``; LoRA ``6 * N_lora * tokens``; attention scores ``12 * layers * tokens^2 * hidden`` (QK^T and AV,
      forward + 2x backward); the frozen vision tower runs forward only on ``frames x (patches + 1)`` positions,
      ``2 * N_vision`` each, and the projector forward on the pooled video tokens. Activation checkpointing would add
      one more LM forward (``2 * N_lm * tokens``), not counted.
    """
    text = config.text_config
    patches = (config.vision_config.image_size // config.vision_config.patch_size) ** 2 + 1
    lm = 4 * counts["lm_matmul"] * tokens + 6 * lora_parameters * tokens
    attention = 12 * text.num_hidden_layers * tokens**2 * text.hidden_size
    vision = 2 * counts["vision"] * FRAMES * patches + 2 * counts["projector"] * video_tokens(config)
    return {"6n": 6.0 * counts["total"] * tokens, "4n": float(lm + attention + vision)}


def synthetic_batch(
    config: LlavaNextVideoConfig, batch: int, tokens: int, answer_tokens: int, device, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """A batch shaped like the collator's: BOS, a few prompt tokens, the video tokens, the question, the answer.

    Labels are -100 everywhere but the answer (and its final EOS), as ``VideoSFTCollator`` makes them.
    """
    n_video = video_tokens(config)
    prompt = tokens - n_video - answer_tokens
    if prompt < 4:
        raise ValueError(f"tokens_per_sample {tokens}: too few for {n_video} video + {answer_tokens} answer tokens")
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, config.video_token_index, (batch, tokens), generator=generator)
    ids[:, 0] = config.text_config.bos_token_id
    ids[:, 3 : 3 + n_video] = config.video_token_index
    ids[:, -1] = config.text_config.eos_token_id
    labels = torch.full_like(ids, -100)
    labels[:, -answer_tokens:] = ids[:, -answer_tokens:]
    side = config.vision_config.image_size
    pixels = torch.randn(batch, FRAMES, 3, side, side, generator=generator)
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
        "labels": labels.to(device),
        "pixel_values_videos": pixels.to(device=device, dtype=dtype),
    }


def peak_tflops(device_name: str, override: float | None) -> float | None:
    """The device's dense bf16 peak in TFLOP/s (``override`` first), or ``None`` when unknown."""
    if override:
        return override
    return next((peak for fragment, peak in PEAK_TFLOPS if fragment in device_name), None)


def tiny_config() -> LlavaNextVideoConfig:
    """The same structure at test size (64 wide, 2 layers, 32 px): the dry run on a CPU."""
    return _llava_next_video(
        _llama(128, 64, 128, layers=2, heads=4, kv_heads=2, positions=256),
        _clip(64, 128, layers=2, heads=2, image=32, patch=8),
        video_token_index=126,
        image_token_index=127,
        image_grid_pinpoints=[[32, 64], [64, 32], [64, 64]],
        image_seq_length=16,
        video_seq_length=8,
    )


@dataclass
class Recipe:
    """What the benchmark takes from a training recipe."""

    name: str
    model_id: str
    method: str
    lora_r: int
    lora_alpha: int
    batch: int
    activation_checkpointing: bool
    attn_implementation: str


def load_recipe(path: str | Path) -> Recipe:
    """The recipe's method, LoRA shape, micro-batch and memory options."""
    path = Path(path) if Path(path).is_absolute() else ROOT / path
    data = yaml.safe_load(path.read_text())
    return Recipe(
        name=path.stem,
        model_id=data["model_name_or_path"],
        method="qlora" if data.get("load_in_4bit") else "lora",
        lora_r=int(data.get("lora_r", 64)),
        lora_alpha=int(data.get("lora_alpha", 128)),
        batch=int(data.get("per_device_train_batch_size", 2)),
        activation_checkpointing=bool(data.get("activation_checkpointing", False)),
        attn_implementation=data.get("attn_implementation") or "sdpa",
    )


def find_weights(base: str, model_id: str) -> Path | None:
    """The checkpoint to time: ``base`` when a folder, the recipe's when on this machine (auto), else ``None``."""
    if base == "random":
        return None
    if base != "auto":
        return Path(base)
    if Path(model_id).is_dir():
        return Path(model_id)
    try:
        folder = Path(snapshot_download(model_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the cache (or no cache): time a random model of the same shape
        return None
    return folder if any(folder.glob("*.safetensors")) else None
