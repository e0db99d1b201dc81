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
from transformers import HfArgumentParser, LlavaNextVideoConfig, LlavaNextVideoForConditionalGeneration


HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # gpu_model beside this file; the project's packages from a checkout

from gpu_model import (  # noqa: E402
    build_random_model,
    flops_per_sample,
    parameter_counts,
    peak_tflops,
    real_config,
    synthetic_batch,
    video_tokens,
)


logger = logging.getLogger("gpu_train")

RESULTS = HERE / "results"
FAMILY = "llava-next-video"
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
