"""Pruning before quantization at scale: peak memory, disk and time of pruning a >= 1B-parameter bf16 checkpoint.

    .venv/bin/python benchmarks/bench_prune.py --compare_loaded true  # ~1.3 B parameters, 5 %, minutes on 2 cores

Goal: peak RSS <= 1.3 x the checkpoint's size on disk; the files' invariants are checked too. Writes
``benchmarks/results/prune.{json,md}``. See docs/pruning.md ("At 7B scale").
"""

import gc
import json
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    CLIPVisionConfig,
    HfArgumentParser,
    LlamaConfig,
    LlavaNextVideoConfig,
)


HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # gpu_model beside this file; the project's packages from a checkout

from gpu_model import build_random_model  # noqa: E402
from results_io import write_results  # noqa: E402

from trainer.models.families import family_of  # noqa: E402
from trainer.pruning.masks import MASKS_FILE, load_masks  # noqa: E402
from trainer.pruning.methods import collect_targets  # noqa: E402
from trainer.pruning.pruned_copy import checkpoint_entries, target_entries  # noqa: E402


RESULTS = HERE / "results"
GOAL_RSS_RATIO = 1.3
# The child's own peak: VmHWM of /proc/self/status, the high-water mark of its address space since exec
# (ru_maxrss would carry the parent's footprint at fork over exec on Linux).
PEAK = "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1])"
CHILD = f"""
import json, sys, time
from trainer.models.families import get_family
from trainer.pruning.methods import PruningConfig
from trainer.pruning.pruned_copy import prune_before_quantization
after_imports = {PEAK}
config = PruningConfig(pruning_method="magnitude", pruning_sparsity=float(sys.argv[3]))
start = time.perf_counter()
prune_before_quantization(sys.argv[1], config, sys.argv[2], get_family("llava-next-video"))
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "peak_rss_kib": {PEAK}, "rss_after_imports_kib": after_imports}}))
"""
LOADED = f"""
import json, sys, time
import torch
from trainer.models.families import get_family
from trainer.pruning.methods import PruningConfig
from trainer.pruning.pruned_copy import prune_before_quantization
config = PruningConfig(pruning_method="magnitude", pruning_sparsity=float(sys.argv[3]))
start = time.perf_counter()
family = get_family("llava-next-video")
prune_before_quantization(sys.argv[1], config, sys.argv[2], family, dtype=getattr(torch, sys.argv[4]))
print(json.dumps({{"seconds": time.perf_counter() - start, "peak_rss_kib": {PEAK}}}))
"""


@dataclass
class PruneBenchConfig:
    """Options of the pruning benchmark."""

    hidden_size: int = field(default=2048, metadata={"help": "Language model width (TinyLlama-1.1B: 2048)."})
    intermediate_size: int = field(default=5632, metadata={"help": "MLP width (TinyLlama-1.1B: 5632)."})
    layers: int = field(default=22, metadata={"help": "Language model layers (TinyLlama-1.1B: 22)."})
    vocab_size: int = field(default=32064, metadata={"help": "Vocabulary (LLaVA-NeXT-Video-7B-hf: 32064)."})
    sparsity: float = field(default=0.05, metadata={"help": "Fraction pruned (the paper's headline: 5 %)."})
    max_shard_size: str = field(default="1GB", metadata={"help": "Shard size of the checkpoint it writes."})
    min_parameters: float = field(
        default=1e9, metadata={"help": "Refuse a smaller model (below 1B the memory ratio says little about 7B)."}
    )
    compare_loaded: bool = field(
        default=False, metadata={"help": "Also prune by loading the whole model in fp32 (for comparison)."}
    )
    workdir: str | None = field(default=None, metadata={"help": "Where the checkpoints go (default: a temp dir)."})
    out_dir: str = field(default=str(RESULTS), metadata={"help": "Where prune.json and prune.md go."})


def model_config(bench: PruneBenchConfig) -> LlavaNextVideoConfig:
    """LLaVA-NeXT-Video's structure with a ~1B language model and a small vision tower."""
    text = LlamaConfig(
        vocab_size=bench.vocab_size,
        hidden_size=bench.hidden_size,
        intermediate_size=bench.intermediate_size,
        num_hidden_layers=bench.layers,
        num_attention_heads=bench.hidden_size // 64,
        num_key_value_heads=bench.hidden_size // 64,
        tie_word_embeddings=False,
    )
    vision = CLIPVisionConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=4)
    return LlavaNextVideoConfig(text_config=text, vision_config=vision, tie_word_embeddings=False)


def folder_bytes(folder: Path, skip: tuple[str, ...] = ()) -> int:
    """Bytes of the files in ``folder`` (not its sub-folders), except those named in ``skip``."""
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and p.name not in skip)


def run_child(code: str, *args: str) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON line of measurements."""
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=HERE.parent, capture_output=True, text=True, check=False
    )
    if proc.returncode:
        raise RuntimeError(f"the pruning process failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_files(source: Path, pruned: Path, sparsity: float) -> dict:
    """The invariants, read back from the files one tensor at a time."""
    masks = load_masks(pruned)
    before, after = checkpoint_entries(source), checkpoint_entries(pruned)
    report = json.loads((pruned / "pruning.json").read_text())
    n_weights = sum(m.numel() for m in masks.values())
    mask_zeros = sum(int((~m).sum()) for m in masks.values())
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(pruned))
    targets = collect_targets(model, family_of(model))
    by_key = {name: entry.key for name, entry in target_entries(model, targets, after).items()}
    assert by_key.keys() == masks.keys()
    zeros_match, identical = True, True
    for name, mask in masks.items():
        weight = after[by_key[name]].read()
        zeros_match &= bool((weight[~mask] == 0).all()) and after[by_key[name]].dtype == before[by_key[name]].dtype
    targets = set(by_key.values())
    for key, entry in before.items():
        if key not in targets:
            identical &= torch.equal(entry.read(), after[key].read())
    return {
        "n_weights": n_weights,
        "n_pruned": report["n_pruned"],
        "exact": report["n_pruned"] == round(sparsity * n_weights) == mask_zeros,
        "masks_zeros_are_the_copys_zeros": zeros_match,
        "other_tensors_identical": identical,
        "dtype": report["dtype"],
    }


def render(result: dict) -> str:
    """The results as Markdown."""
    s = result["streaming"]
    lines = [
        "# Pruning before quantization at scale",
        "",
        f"Checkpoint written by the benchmark: {result['parameters'] / 1e9:.2f} B parameters "
        f"({result['target_weights'] / 1e9:.2f} B pruned targets), bf16, {result['shards']} shards, "
        f"{result['checkpoint_gib']:.2f} GiB on disk. {result['sparsity']:.0%} global magnitude pruning "
        f"(exact threshold). Measured on {result['machine']}, a shared machine: times vary with its load.",
        "",
        "| path | peak RSS (GiB) | peak / checkpoint size | time (s) | pruned copy (GiB) | masks (MiB) |",
        "|---|---|---|---|---|---|",
        f"| streaming the shards (`prune_before_quantization`) | {s['peak_rss_gib']:.2f} | {s['rss_ratio']:.2f} "
        f"(goal <= {GOAL_RSS_RATIO}) | {s['seconds']:.1f} | {s['copy_gib']:.2f} | {s['masks_mib']:.1f} |",
    ]
    if "loaded_fp32" in result:
        c = result["loaded_fp32"]
        lines.append(
            f"| loading the whole model in fp32 (for comparison) | {c['peak_rss_gib']:.2f} | {c['rss_ratio']:.2f} "
            f"| {c['seconds']:.1f} | {c['copy_gib']:.2f} | - |"
        )
    lines += [
        "",
        f"Peak RSS includes the interpreter and its imports ({s['rss_after_imports_gib']:.2f} GiB before pruning). "
        f"Checks: exact sparsity {result['checks']['exact']}, masks' zeros are the copy's zeros "
        f"{result['checks']['masks_zeros_are_the_copys_zeros']}, every other tensor identical "
        f"{result['checks']['other_tensors_identical']}, dtype {result['checks']['dtype']}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the checkpoint, prune it in a child process, check and record.

    1. A randomly initialised LLaVA-NeXT-Video-shaped checkpoint: a Llama language model of ``--hidden_size`` /
       ``--layers`` (TinyLlama-1.1B's shape by default) and a small CLIP tower, bf16, in ``--max_shard_size`` shards.
    2. ``prune_before_quantization`` (the path ``geollava-train`` takes for QLoRA + pruning) prunes it ``--sparsity``
       in a fresh process that reports its own peak RSS (``VmHWM``, imports included) and time; with
       ``--compare_loaded``, so does the whole-model fp32 path.
    3. The invariants, read back from the files: exactly ``round(s N)`` weights pruned, the saved masks' zeros are the
       copy's zeros, every other tensor byte-identical, the same dtype.
    """
    (bench,) = HfArgumentParser(PruneBenchConfig).parse_args_into_dataclasses(args=argv)
    gib = 2**30
    with tempfile.TemporaryDirectory(prefix="bench-prune-", dir=bench.workdir) as tmp:
        source, pruned = Path(tmp) / "base", Path(tmp) / "pruned"
        start = time.perf_counter()
        model = build_random_model(model_config(bench), "cpu", torch.bfloat16)
        parameters = sum(p.numel() for p in model.parameters())
        targets = sum(p.numel() for n, p in model.named_parameters() if "language_model.layers" in n and "proj" in n)
        if parameters < bench.min_parameters:
            raise SystemExit(f"{parameters / 1e9:.2f} B parameters: below --min_parameters {bench.min_parameters:g}")
        model.save_pretrained(source, max_shard_size=bench.max_shard_size)
        del model
        gc.collect()
        build_seconds = time.perf_counter() - start
        checkpoint = folder_bytes(source)
        streamed = run_child(CHILD, str(source), str(pruned), str(bench.sparsity))
        streamed |= {
            "peak_rss_gib": streamed["peak_rss_kib"] * 1024 / gib,
            "rss_after_imports_gib": streamed["rss_after_imports_kib"] * 1024 / gib,
            "rss_ratio": streamed["peak_rss_kib"] * 1024 / checkpoint,
            "copy_gib": folder_bytes(pruned, skip=(MASKS_FILE,)) / gib,
            "masks_mib": (pruned / MASKS_FILE).stat().st_size / 2**20,
        }
        result = {
            "parameters": parameters,
            "target_weights": targets,
            "sparsity": bench.sparsity,
            "shards": len(list(source.glob("*.safetensors"))),
            "checkpoint_bytes": checkpoint,
            "checkpoint_gib": checkpoint / gib,
            "build_and_save_seconds": round(build_seconds, 1),
            "streaming": streamed,
            "goal_rss_ratio": GOAL_RSS_RATIO,
            "goal_met": streamed["rss_ratio"] <= GOAL_RSS_RATIO,
            "checks": check_files(source, pruned, bench.sparsity),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
            "options": asdict(bench),
        }
        if bench.compare_loaded:
            loaded = run_child(LOADED, str(source), str(Path(tmp) / "loaded"), str(bench.sparsity), "float32")
            loaded |= {
                "peak_rss_gib": loaded["peak_rss_kib"] * 1024 / gib,
                "rss_ratio": loaded["peak_rss_kib"] * 1024 / checkpoint,
                "copy_gib": folder_bytes(Path(tmp) / "loaded", skip=(MASKS_FILE,)) / gib,
            }
            result["loaded_fp32"] = loaded
    print(write_results("prune", result, render(result), Path(bench.out_dir)))
    checks = result["checks"]
    ok = checks["exact"] and checks["masks_zeros_are_the_copys_zeros"] and checks["other_tensors_identical"]
    return 0 if ok and result["goal_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
