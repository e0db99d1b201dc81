"""GPU training benchmark: the LLaVA-NeXT-Video-7B recipes, bf16 LoRA and QLoRA, timed on synthetic batches.

    .venv/bin/python benchmarks/gpu_train.py                 # on a CUDA machine (make gpu-check runs it)
    .venv/bin/python benchmarks/gpu_train.py --dry_run true  # tiny config on the CPU, a few steps (make test)

The recipe's checkpoint when it is on this machine, else a random model of its real 7B config built on the GPU
(throughput does not depend on weight values); samples/s, tokens/s, peak memory and MFU into
benchmarks/results/gpu_train.{json,md}, rewritten after each recipe. Without CUDA it writes nothing. See
docs/training.md "Benchmarks".
"""

import gc
import json
import logging
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import get_peft_model
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    HfArgumentParser,
    LlavaNextVideoConfig,
    LlavaNextVideoForConditionalGeneration,
)


HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]  # gpu_model beside this file; the project's packages from a checkout

from gpu_model import (  # noqa: E402
    Recipe,
    build_random_model,
    find_weights,
    flops_per_sample,
    load_recipe,
    parameter_counts,
    peak_tflops,
    real_config,
    synthetic_batch,
    tiny_config,
    video_tokens,
)
from results_io import write_results  # noqa: E402

from trainer.models.families import get_family  # noqa: E402
from trainer.training.config import GeoModelConfig  # noqa: E402
from trainer.training.model_setup import load_model, lora_config, match_trainable_dtype  # noqa: E402


logger = logging.getLogger("gpu_train")

RESULTS = HERE / "results"
FAMILY = "llava-next-video"
GOALS = {"lora": 20.0, "qlora": 12.0}
RECIPES_7B = "trainer/recipes/llava-next-video-7b"
DEFAULT_RECIPES = f"{RECIPES_7B}/h100_lora.yaml,{RECIPES_7B}/qlora_prune5.yaml"
#: How a CUDA allocation failure surfaces besides torch.OutOfMemoryError: cuBLAS's workspace, a kernel's own error.
OOM_MESSAGES = ("CUBLAS_STATUS_ALLOC_FAILED", "CUDA error: out of memory", "out of memory")
#: The random 7B base is saved for the 4-bit reload in shards of this size (one 14 GB file is slow to write and read).
SHARD_SIZE = "2GB"


@dataclass
class GpuTrainBenchConfig:
    """Options of the GPU training benchmark."""

    recipes: str = field(default=DEFAULT_RECIPES, metadata={"help": "Comma-separated recipe YAML files."})
    batch_sizes: str = field(
        default="",
        metadata={"help": "Micro-batches to try, largest first ('': each recipe's own, then its half and quarter)."},
    )
    base: str = field(
        default="auto",
        metadata={"help": "auto: the recipe's checkpoint when on this machine, else random 7B; random; or a folder."},
    )
    tokens_per_sample: int = field(default=700, metadata={"help": "Tokens per sample, 288 video tokens included."})
    answer_tokens: int = field(default=300, metadata={"help": "Supervised (answer) tokens per sample."})
    steps: int = field(default=10, metadata={"help": "Measured optimizer steps."})
    warmup_steps: int = field(default=3, metadata={"help": "Unmeasured steps first (allocator, kernels, autotune)."})
    peak_tflops: float | None = field(
        default=None, metadata={"help": "Peak dense bf16 TFLOP/s for MFU; None = from the device name."}
    )
    dry_run: bool = field(
        default=False, metadata={"help": "A tiny config on the CPU, 2 steps per recipe: that the code path works."}
    )
    require_cuda: bool = field(default=False, metadata={"help": "Exit 1 (not 0) when there is no CUDA device."})
    out_dir: str | None = field(
        default=None, metadata={"help": "Where gpu_train.json/.md go (default: benchmarks/results; dry run: nowhere)."}
    )
    work_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where the random 7B base is saved for the 4-bit reload (~14 GB; default: a temporary folder)."
        },
    )

    def __post_init__(self):
        try:
            sizes = [int(b) for b in self.batch_sizes.split(",") if b]
        except ValueError as error:
            raise ValueError(f"batch_sizes {self.batch_sizes!r}: comma-separated integers") from error
        if sizes and min(sizes) < 1:
            raise ValueError(f"batch_sizes {self.batch_sizes!r}: positive integers")
        if not 0 < self.answer_tokens < self.tokens_per_sample:
            raise ValueError(f"answer_tokens {self.answer_tokens!r}: must be in (0, tokens_per_sample)")
        if self.steps < 1 or self.warmup_steps < 0:
            raise ValueError(f"steps {self.steps!r} / warmup_steps {self.warmup_steps!r}: need >= 1 / >= 0")
        self.recipe_list = [load_recipe(p) for p in self.recipes.split(",") if p]
        if not self.recipe_list:
            raise ValueError("recipes: name at least one recipe YAML file")

    def batch_list(self, recipe: Recipe) -> list[int]:
        """The micro-batches to try for ``recipe``, largest first.

        ``--batch_sizes``, else the recipe's, its half and its quarter (16, 8, 4): an out-of-memory error at the
        recipe's micro-batch still measures the recipe.
        """
        sizes = {int(b) for b in self.batch_sizes.split(",") if b}
        if not sizes:
            sizes = {max(1, recipe.batch // factor) for factor in (1, 2, 4)}
        return sorted(sizes, reverse=True)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is a CUDA allocation failure, in any of the forms torch, cuBLAS and kernels raise it."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(message in str(error) for message in OOM_MESSAGES)


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


def _lora_model(base, recipe: Recipe):
    args = GeoModelConfig(
        model_name_or_path="random", family=FAMILY, use_peft=True, lora_r=recipe.lora_r, lora_alpha=recipe.lora_alpha
    )
    args.lora_dropout = 0.0
    if recipe.activation_checkpointing:
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return get_peft_model(base, lora_config(args, get_family(FAMILY)))


def _qlora_model(saved: Path, recipe: Recipe, dtype: torch.dtype):
    args = GeoModelConfig(
        model_name_or_path=str(saved),
        family=FAMILY,
        use_peft=True,
        lora_r=recipe.lora_r,
        lora_alpha=recipe.lora_alpha,
        lora_dropout=0.0,
        load_in_4bit=True,
        dtype=str(dtype).removeprefix("torch."),
        attn_implementation=recipe.attn_implementation,
    )
    loaded = load_model(args, activation_checkpointing=recipe.activation_checkpointing)
    # As geollava-train does after TRL casts a quantized model's trainable parameters to bf16.
    match_trainable_dtype(loaded.model, dtype)
    return loaded.model


def save_random_base(config, device, dtype: torch.dtype, folder: Path, attn_implementation: str) -> Path:
    """Build the random base on ``device`` (initialised there: fast), save it in shards and free it."""
    model = build_random_model(config, device, dtype, attn_implementation)
    model.save_pretrained(folder, max_shard_size=SHARD_SIZE)
    del model
    _free(device)  # the 4-bit reload needs the memory the bf16 copy held
    return folder


def _model(recipe: Recipe, config, device, dtype: torch.dtype, workdir: Path, weights: Path | None):
    if recipe.method == "qlora":
        if weights is None:
            weights = workdir / "base"
            if not weights.exists():  # saved once, for every QLoRA recipe
                save_random_base(config, device, dtype, weights, recipe.attn_implementation)
        return _qlora_model(weights, recipe, dtype)
    if weights is None:
        base = build_random_model(config, device, dtype, recipe.attn_implementation)
    else:
        base = AutoModelForImageTextToText.from_pretrained(
            weights, dtype=dtype, device_map={"": str(device)}, attn_implementation=recipe.attn_implementation
        )
    return _lora_model(base, recipe)


def run_recipe(
    recipe: Recipe,
    config: LlavaNextVideoConfig,
    bench: GpuTrainBenchConfig,
    device,
    dtype: torch.dtype,
    workdir: Path,
    weights: Path | None = None,
) -> dict:
    """Benchmark one recipe (at its micro-batch, or the largest of ``--batch_sizes`` that fits).

    Args:
        recipe: The recipe.
        config: The model config (the checkpoint's, or the 7B one for a random model).
        bench: The benchmark options.
        device: ``cuda`` (or ``cpu`` for the dry run).
        dtype: Weights / compute dtype.
        workdir: Holds the saved random base (``workdir/base``) for QLoRA.
        weights: The checkpoint folder; ``None``: a random model of ``config``.

    Returns:
        The measurement, or ``error: "no batch size fits"`` with what each micro-batch gave (``tried``).
    """
    autocast = dtype if dtype != torch.float32 else None
    _free(device)
    model = _model(recipe, config, device, dtype, workdir, weights)
    model.train()
    lora_parameters = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    # Counted on a meta-device copy: packed 4-bit weights would under-count the QLoRA base.
    with torch.device("meta"):
        counts = parameter_counts(LlavaNextVideoForConditionalGeneration(config))
    flops = flops_per_sample(counts, config, bench.tokens_per_sample, lora_parameters)
    common = {"recipe": recipe.name, "method": recipe.method, "weights": str(weights) if weights else "random"}
    tried, result = [], {**common, "error": "no batch size fits"}
    for batch_size in bench.batch_list(recipe):
        model.zero_grad(set_to_none=True)
        _free(device)
        try:
            batch = synthetic_batch(config, batch_size, bench.tokens_per_sample, bench.answer_tokens, device, dtype)
            timing = measure(model, batch, bench.steps, bench.warmup_steps, device, autocast)
        except (torch.OutOfMemoryError, RuntimeError) as error:
            if not is_out_of_memory(error):
                raise
            tried.append({"batch": batch_size, "result": f"out of memory ({type(error).__name__})"})
            logger.warning("%s: batch %d does not fit (%s), trying a smaller one", recipe.name, batch_size, error)
            batch = error = None  # drop the failed step's tensors (the traceback holds its frames) before the next
            continue
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.device(device).type == "cuda" else None
        samples_per_s = bench.steps * batch_size / timing["seconds"]
        tried.append({"batch": batch_size, "result": "measured"})
        result = {
            **common,
            "batch": batch_size,
            "activation_checkpointing": recipe.activation_checkpointing,
            "lora_r": recipe.lora_r,
            "lora_alpha": recipe.lora_alpha,
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
            "goal_samples_per_s": GOALS[recipe.method],
        }
        break
    result["tried"] = tried
    del model
    _free(device)
    return result


def render_markdown(result: dict) -> str:
    """The results as a Markdown page."""
    lines = [
        "# GPU training benchmark: the LLaVA-NeXT-Video-7B recipes"
        + (" (dry run on the CPU, tiny config: nothing here is a GPU figure)" if result["dry_run"] else ""),
        "",
        f"Device: {result['device']} (peak {result['peak_tflops']} dense bf16 TFLOP/s used for MFU). "
        f"{result['tokens_per_sample']} tokens/sample ({result['video_tokens']} video tokens, "
        f"{result['answer_tokens']} supervised), 2 frames at 336 px, {result['steps']} measured steps after "
        f"{result['warmup_steps']} warm-up steps on synthetic batches.",
        "",
        "| recipe | method | weights | batch | samples/s | tokens/s | peak GiB | TFLOP/s (4N) | MFU 4N | MFU 6N "
        "| goal samples/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["recipes"]:
        weights = "random (7B config)" if r["weights"] == "random" else "checkpoint"
        if "error" in r:
            error = r["error"].splitlines()[0].replace("|", "/")[:200]
            tried = ", ".join(f"{t['batch']}: {t['result']}" for t in r.get("tried", []))
            lines.append(
                f"| {r['recipe']} | {r['method']} | {weights} | - | {error} ({tried or 'nothing tried'}) | | | | | | |"
            )
            continue
        met = "met" if r["samples_per_s"] >= r["goal_samples_per_s"] else "not met"
        lines.append(
            f"| {r['recipe']} | {r['method']} | {weights} | {r['batch']} | {r['samples_per_s']} | {r['tokens_per_s']} "
            f"| {r['peak_memory_gib']} | {r['achieved_tflops']['4n']} | {r.get('mfu_4n')} | {r.get('mfu_6n')} "
            f"| {r['goal_samples_per_s']} ({met}) |"
        )
    if result.get("pending"):
        lines += ["", f"Not run (yet): {', '.join(result['pending'])}."]
    lines += [
        "",
        "MFU 4N counts what the run computes (frozen base: forward + input gradients, LoRA 6N, attention scores, "
        "vision tower forward only); MFU 6N is the usual 6 x parameters x tokens yardstick, which over-counts a "
        "frozen base. The paper's run: ~1 sample/s on an RTX A6000 (QLoRA, batch 2).",
    ]
    return "\n".join(lines) + "\n"


def _setup(bench: GpuTrainBenchConfig):
    """Device, dtype, model config and the peak TFLOP/s: the GPU's, or the CPU with a tiny config (dry run)."""
    if bench.dry_run:
        return "cpu", torch.float32, tiny_config(), "cpu (dry run)", None
    name = torch.cuda.get_device_name()
    return "cuda", torch.bfloat16, real_config(), name, peak_tflops(name, bench.peak_tflops)


def run_recipes(bench: GpuTrainBenchConfig, workdir: Path, save) -> list[dict]:
    """Each recipe in its own try, ``save(results, pending)`` after each; a failed recipe keeps its traceback."""
    device, dtype, config, _, peak = _setup(bench)
    results = []
    for i, recipe in enumerate(bench.recipe_list):
        began = time.perf_counter()
        try:
            weights = None if bench.dry_run else find_weights(bench.base, recipe.model_id)
            model_config = config if weights is None else AutoConfig.from_pretrained(weights)
            result = run_recipe(recipe, model_config, bench, device, dtype, workdir, weights)
        except Exception as error:  # noqa: BLE001 - recorded with its traceback; the next recipe still runs
            logger.exception("%s failed", recipe.name)
            kind = "out of memory" if is_out_of_memory(error) else "error"
            result = {"recipe": recipe.name, "method": recipe.method, "weights": "random", "tried": []}
            result |= {"error": f"{kind}: {type(error).__name__}: {error}", "traceback": traceback.format_exc()}
            error = None
            _free(device)
        result["seconds"] = round(time.perf_counter() - began, 1)
        if "error" not in result and peak:
            for key in ("4n", "6n"):
                result[f"mfu_{key}"] = round(result["achieved_tflops"][key] / peak, 3)
        logger.info("%s: %s", recipe.name, json.dumps({k: v for k, v in result.items() if k not in SILENT}))
        results.append(result)
        save(results, [r.name for r in bench.recipe_list[i + 1 :]])
    return results


#: Result keys too long for the log line.
SILENT = ("parameters", "traceback")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark on the GPU (or the dry run on the CPU); without CUDA, say so and write nothing."""
    (bench,) = HfArgumentParser(GpuTrainBenchConfig).parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not bench.dry_run and not torch.cuda.is_available():
        print("gpu_train: no CUDA device on this machine: nothing measured, no results written")
        return 1 if bench.require_cuda else 0
    _, _, config, name, peak = _setup(bench)
    out_dir = bench.out_dir or (None if bench.dry_run else str(RESULTS))
    header = {
        "device": name,
        "dry_run": bench.dry_run,
        "peak_tflops": peak,
        "versions": {"torch": torch.__version__, "cuda": torch.version.cuda},
        "tokens_per_sample": bench.tokens_per_sample,
        "answer_tokens": bench.answer_tokens,
        "video_tokens": video_tokens(config),
        "steps": bench.steps,
        "warmup_steps": bench.warmup_steps,
    }

    def save(results: list[dict], pending: list[str]) -> None:
        if out_dir:
            out = {**header, "recipes": results, "pending": pending, "complete": not pending}
            write_results("gpu_train", out, render_markdown(out), Path(out_dir))

    workdir = Path(bench.work_dir or tempfile.mkdtemp(prefix="gpu-train-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        results = run_recipes(bench, workdir, save)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)  # the saved 7B base: ~14 GB
    print(render_markdown({**header, "recipes": results, "pending": []}))
    return 0 if all("error" not in r and r["losses_finite"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
