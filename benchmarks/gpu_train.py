"""GPU training benchmark: LLaVA-NeXT-Video at its real 7B config (random weights), bf16 LoRA and QLoRA.

    .venv/bin/python benchmarks/gpu_train.py

Throughput does not depend on weight values, so nothing is downloaded: the model is built from the
LLaVA-NeXT-Video-7B-hf config written out below (Vicuna-7B language model, CLIP ViT-L/14 at 336 px) on the meta
device, materialised on the GPU in bf16 and initialised at random. Each sample is 2 frames at 336 px (288 video
tokens) in ~700 tokens with the answer supervised, the GeoLLaVA planning figure (anchors-and-performance.md B4).

* bf16 LoRA: r 64 / alpha 128 on the language model's attention + MLP projections (the family's regex), built with
  ``trainer.training.model_setup.lora_config``; bf16 autocast like ``bf16: true`` in the trainer.
* QLoRA: the random base is saved once and loaded through ``trainer.training.model_setup.load_model`` with
  ``load_in_4bit`` (NF4, double quantization, bf16 compute, vision tower + projector unquantized): the trainer's path.

The micro-batch is the largest of ``batch_sizes`` that fits (tried largest first; an out-of-memory error moves to the
next). Reported: samples/s, tokens/s, peak memory, and MFU under two FLOP models (see :func:`flops_per_sample`).
Goal on an H100: >= 20 samples/s bf16 LoRA, >= 12 QLoRA (the paper: ~1 sample/s on an RTX A6000).

Writes ``benchmarks/results/gpu_train.json`` and ``.md``. Without CUDA it says so and exits 0 without writing.
"""

import gc
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import (
    CLIPVisionConfig,
    HfArgumentParser,
    LlamaConfig,
    LlavaNextVideoConfig,
    LlavaNextVideoForConditionalGeneration,
)


logger = logging.getLogger("gpu_train")

RESULTS = Path(__file__).parent / "results"
FAMILY = "llava-next-video"
FRAMES = 2
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
GOALS = {"lora": 20.0, "qlora": 12.0}


@dataclass
class GpuTrainBenchConfig:
    """Options of the GPU training benchmark."""

    methods: str = field(default="lora,qlora", metadata={"help": "Comma-separated: lora (bf16 base), qlora (NF4)."})
    batch_sizes: str = field(
        default="16,8,4,2", metadata={"help": "Micro-batches to try, largest first; the first that fits is measured."}
    )
    tokens_per_sample: int = field(default=700, metadata={"help": "Tokens per sample, 288 video tokens included."})
    answer_tokens: int = field(default=300, metadata={"help": "Supervised (answer) tokens per sample."})
    steps: int = field(default=10, metadata={"help": "Measured optimizer steps."})
    warmup_steps: int = field(default=3, metadata={"help": "Unmeasured steps first (allocator, kernels, autotune)."})
    lora_r: int = field(default=64, metadata={"help": "LoRA rank (GeoLLaVA Table 3: 64)."})
    lora_alpha: int = field(default=128, metadata={"help": "LoRA alpha (Table 3: 128)."})
    activation_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute activations in the backward pass (slower, less memory)."}
    )
    attn_implementation: str = field(default="sdpa", metadata={"help": "sdpa, eager or flash_attention_2."})
    peak_tflops: float | None = field(
        default=None, metadata={"help": "Peak dense bf16 TFLOP/s for MFU; None = from the device name."}
    )
    out_dir: str = field(default=str(RESULTS), metadata={"help": "Where gpu_train.json and gpu_train.md go."})

    def __post_init__(self):
        methods = [m for m in self.methods.split(",") if m]
        if not methods or set(methods) - set(GOALS):
            raise ValueError(f"methods {self.methods!r}: choose from {sorted(GOALS)}")
        try:
            sizes = [int(b) for b in self.batch_sizes.split(",") if b]
        except ValueError as error:
            raise ValueError(f"batch_sizes {self.batch_sizes!r}: comma-separated integers") from error
        if not sizes or min(sizes) < 1:
            raise ValueError(f"batch_sizes {self.batch_sizes!r}: positive integers")
        if not 0 < self.answer_tokens < self.tokens_per_sample:
            raise ValueError(f"answer_tokens {self.answer_tokens!r}: must be in (0, tokens_per_sample)")
        if self.steps < 1 or self.warmup_steps < 0:
            raise ValueError(f"steps {self.steps!r} / warmup_steps {self.warmup_steps!r}: need >= 1 / >= 0")

    @property
    def method_list(self) -> list[str]:
        """The methods, in order."""
        return [m for m in self.methods.split(",") if m]

    @property
    def batch_list(self) -> list[int]:
        """The micro-batches, largest first."""
        return sorted({int(b) for b in self.batch_sizes.split(",") if b}, reverse=True)


def real_config() -> LlavaNextVideoConfig:
    """LLaVA-NeXT-Video-7B-hf's config, written out (values of the Hub ``config.json``)."""
    text = LlamaConfig(
        vocab_size=32064,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        hidden_act="silu",
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    vision = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
        projection_dim=768,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )
    return LlavaNextVideoConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=32001,
        video_token_index=32000,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
        spatial_pool_mode="average",
        spatial_pool_stride=2,
        image_seq_length=576,
        video_seq_length=288,
        tie_word_embeddings=False,
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


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def measure(model, batch: dict, steps: int, warmup: int, device, autocast_dtype: torch.dtype | None) -> dict:
    """Train ``warmup + steps`` optimizer steps on ``batch`` (AdamW, clip 1.0) and time the last ``steps``."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, fused=torch.device(device).type == "cuda")
    device_type = torch.device(device).type
    losses, seconds = [], 0.0
    for step in range(warmup + steps):
        if step == warmup:
            _sync(device)
            start = time.perf_counter()
        with torch.autocast(device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    _sync(device)
    seconds = time.perf_counter() - start
    del optimizer
    return {"seconds": seconds, "losses": losses}


def _free(device) -> None:
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _lora_model(base, bench: GpuTrainBenchConfig):
    from peft import get_peft_model

    from trainer.models.families import get_family
    from trainer.training.config import GeoModelConfig
    from trainer.training.model_setup import lora_config

    args = GeoModelConfig(
        model_name_or_path="random", family=FAMILY, use_peft=True, lora_r=bench.lora_r, lora_alpha=bench.lora_alpha
    )
    args.lora_dropout = 0.0
    if bench.activation_checkpointing:
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return get_peft_model(base, lora_config(args, get_family(FAMILY)))


def _qlora_model(saved: Path, bench: GpuTrainBenchConfig, dtype: torch.dtype):
    from trainer.training.config import GeoModelConfig
    from trainer.training.model_setup import load_model, match_trainable_dtype

    args = GeoModelConfig(
        model_name_or_path=str(saved),
        family=FAMILY,
        use_peft=True,
        lora_r=bench.lora_r,
        lora_alpha=bench.lora_alpha,
        lora_dropout=0.0,
        load_in_4bit=True,
        dtype=str(dtype).removeprefix("torch."),
        attn_implementation=bench.attn_implementation,
    )
    loaded = load_model(args, activation_checkpointing=bench.activation_checkpointing)
    # As geollava-train does after TRL casts a quantized model's trainable parameters to bf16.
    match_trainable_dtype(loaded.model, dtype)
    return loaded.model


def run_method(
    method: str,
    config: LlavaNextVideoConfig,
    bench: GpuTrainBenchConfig,
    device,
    dtype: torch.dtype,
    workdir: Path,
    base=None,
) -> dict:
    """Benchmark one method at the largest micro-batch that fits; returns its measurements.

    Args:
        method: ``lora`` or ``qlora``.
        config: The model config.
        bench: The benchmark options.
        device: ``cuda`` (or ``cpu`` for a functional check with a small config).
        dtype: Weights / compute dtype.
        workdir: Holds the saved random base (``workdir/base``) for QLoRA.
        base: For ``lora``, the random model to wrap (built when ``None``).
    """
    autocast = dtype if dtype != torch.float32 else None
    _free(device)
    if method == "lora":
        if base is None:
            base = build_random_model(config, device, dtype, bench.attn_implementation)
        model = _lora_model(base, bench)
    else:
        model = _qlora_model(workdir / "base", bench, dtype)
    model.train()
    lora_parameters = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    # Counted on a meta-device copy: packed 4-bit weights would under-count the QLoRA base.
    with torch.device("meta"):
        counts = parameter_counts(LlavaNextVideoForConditionalGeneration(config))
    flops = flops_per_sample(counts, config, bench.tokens_per_sample, lora_parameters)
    tried, result = [], {"method": method, "error": "no batch size fits"}
    for batch_size in bench.batch_list:
        model.zero_grad(set_to_none=True)
        _free(device)
        try:
            batch = synthetic_batch(config, batch_size, bench.tokens_per_sample, bench.answer_tokens, device, dtype)
            timing = measure(model, batch, bench.steps, bench.warmup_steps, device, autocast)
        except torch.OutOfMemoryError:
            tried.append({"batch": batch_size, "result": "out of memory"})
            logger.warning("%s: batch %d does not fit, trying a smaller one", method, batch_size)
            batch = None
            continue
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.device(device).type == "cuda" else None
        samples_per_s = bench.steps * batch_size / timing["seconds"]
        tried.append({"batch": batch_size, "result": "measured"})
        result = {
            "method": method,
            "batch": batch_size,
            "samples_per_s": round(samples_per_s, 3),
            "tokens_per_s": round(samples_per_s * bench.tokens_per_sample, 1),
            "step_seconds": round(timing["seconds"] / bench.steps, 4),
            "peak_memory_gib": None if peak is None else round(peak, 2),
            "losses_finite": bool(torch.isfinite(torch.tensor(timing["losses"])).all()),
            "parameters": counts,
            "lora_parameters": lora_parameters,
            "flops_per_sample": flops,
            "tflops_per_sample": {k: round(v / 1e12, 3) for k, v in flops.items()},
            "achieved_tflops": {k: round(v * samples_per_s / 1e12, 2) for k, v in flops.items()},
            "goal_samples_per_s": GOALS[method],
        }
        break
    result["tried"] = tried
    del model
    _free(device)
    return result


def peak_tflops(device_name: str, override: float | None) -> float | None:
    """The device's dense bf16 peak in TFLOP/s (``override`` first), or ``None`` when unknown."""
    if override:
        return override
    return next((peak for fragment, peak in PEAK_TFLOPS if fragment in device_name), None)


def render_markdown(result: dict) -> str:
    """The results as a Markdown page."""
    lines = [
        "# GPU training benchmark: LLaVA-NeXT-Video-7B (real config, random weights)",
        "",
        f"Device: {result['device']} (peak {result['peak_tflops']} dense bf16 TFLOP/s used for MFU). "
        f"{result['tokens_per_sample']} tokens/sample ({result['video_tokens']} video tokens, "
        f"{result['answer_tokens']} supervised), 2 frames at 336 px, LoRA r {result['lora_r']} / alpha "
        f"{result['lora_alpha']} on the LM, activation checkpointing {result['activation_checkpointing']}, "
        f"attention {result['attn_implementation']}.",
        "",
        "| method | batch | samples/s | tokens/s | peak GiB | TFLOP/s (4N) | MFU 4N | MFU 6N | goal samples/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["methods"]:
        if "error" in r:
            lines.append(f"| {r['method']} | - | {r['error']} | | | | | | {GOALS[r['method']]} |")
            continue
        lines.append(
            f"| {r['method']} | {r['batch']} | {r['samples_per_s']} | {r['tokens_per_s']} | {r['peak_memory_gib']} "
            f"| {r['achieved_tflops']['4n']} | {r.get('mfu_4n')} | {r.get('mfu_6n')} | {r['goal_samples_per_s']} "
            f"({'met' if r['samples_per_s'] >= r['goal_samples_per_s'] else 'not met'}) |"
        )
    lines += [
        "",
        "MFU 4N counts what the run computes (frozen base: forward + input gradients, LoRA 6N, attention scores, "
        "vision tower forward only); MFU 6N is the usual 6 x parameters x tokens yardstick, which over-counts a "
        "frozen base. The paper's run: ~1 sample/s on an RTX A6000 (QLoRA, batch 2).",
    ]
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark on the GPU; without CUDA, say so and exit 0 without writing results."""
    (bench,) = HfArgumentParser(GpuTrainBenchConfig).parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not torch.cuda.is_available():
        print("gpu_train: skipped, no CUDA device on this machine (no results written)")
        return 0
    device, dtype = "cuda", torch.bfloat16
    config = real_config()
    name = torch.cuda.get_device_name()
    peak = peak_tflops(name, bench.peak_tflops)
    results = []
    with tempfile.TemporaryDirectory(prefix="gpu-train-") as tmp:
        workdir = Path(tmp)
        base = build_random_model(config, device, dtype, bench.attn_implementation)
        if "qlora" in bench.method_list:
            start = time.perf_counter()
            base.save_pretrained(workdir / "base")
            logger.info("random base saved for QLoRA in %.0f s", time.perf_counter() - start)
        for method in bench.method_list:
            if method == "lora":
                result = run_method(method, config, bench, device, dtype, workdir, base=base)
                base = None
            else:
                base = None
                _free(device)
                result = run_method(method, config, bench, device, dtype, workdir)
            if "error" not in result and peak:
                for key in ("4n", "6n"):
                    result[f"mfu_{key}"] = round(result["achieved_tflops"][key] / peak, 3)
            logger.info("%s: %s", method, json.dumps({k: v for k, v in result.items() if k != "parameters"}))
            results.append(result)
    out = {
        "device": name,
        "peak_tflops": peak,
        "versions": {"torch": torch.__version__, "cuda": torch.version.cuda},
        "tokens_per_sample": bench.tokens_per_sample,
        "answer_tokens": bench.answer_tokens,
        "video_tokens": video_tokens(config),
        **{k: v for k, v in asdict(bench).items() if k not in ("methods", "out_dir", "peak_tflops")},
        "methods": results,
    }
    out_dir = Path(bench.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write(out_dir / "gpu_train.json", json.dumps(out, indent=2) + "\n")
    _write(out_dir / "gpu_train.md", render_markdown(out))
    print(render_markdown(out))
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
