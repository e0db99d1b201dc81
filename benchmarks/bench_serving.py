"""Serving and data-parallel evaluation, side by side on the tiny model; the export's memory on a 1.27 B checkpoint.

    .venv/bin/python benchmarks/bench_serving.py  # minutes on 2 cores

Rows/s of in-process batched ``geollava-eval``, of ``--server`` against ``transformers serve``, and of a 2-process
(gloo) eval; the client's own time per row against the server's; ``geollava-export``'s peak RSS and time. Writes
``benchmarks/results/serving.{json,md}``. See docs/evaluation.md "At scale".
"""

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, HfArgumentParser


HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]  # bench_prune and gpu_model beside this file; the project from a checkout

from bench_prune import PEAK, PruneBenchConfig, model_config  # noqa: E402
from gpu_model import build_random_model  # noqa: E402
from results_io import write_results  # noqa: E402

from tests.serving.helpers import random_masks, tiny_release, tiny_split  # noqa: E402
from tests.serving.server import transformers_serve  # noqa: E402
from tests.trainer.helpers import launch_two_processes  # noqa: E402
from trainer.evaluation.run_eval import main as eval_main  # noqa: E402


RESULTS = HERE / "results"
GOAL_DP_SPEEDUP = 1.7
GOAL_CLIENT_SHARE = 0.05
GOAL_EXPORT_SLACK = 2**30  # the export's peak RSS <= the largest shard + the adapter + 1 GiB
EXPORT = f"""
import json, sys, time
from trainer.export import export_merged
after_imports = {PEAK}
start = time.perf_counter()
report = export_merged(sys.argv[1], sys.argv[2], sys.argv[3])
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "peak_rss_kib": {PEAK}, "rss_after_imports_kib": after_imports,
                  "merged_by": report.merged_by, "lora_modules": report.lora_modules,
                  "masked_modules": report.masked_modules, "dtype": report.dtype}}))
"""


@dataclass
class ServingBenchConfig:
    """Options of the serving benchmark."""

    rows: int = field(default=32, metadata={"help": "Rows of the tiny split each evaluation captions."})
    max_new_tokens: int = field(default=24, metadata={"help": "Generation budget per row."})
    batch_size: int = field(default=8, metadata={"help": "In-process batch size (1 and 2 processes)."})
    concurrency: int = field(default=4, metadata={"help": "Requests in flight with --server."})
    family: str = field(default="llava-next-video", metadata={"help": "The tiny model's family."})
    export: bool = field(default=True, metadata={"help": "Also measure the export of the 1.27 B checkpoint."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank of the 1.27 B checkpoint's adapter."})
    workdir: str | None = field(default=None, metadata={"help": "Where models and outputs go (default: a temp dir)."})
    out_dir: str = field(default=str(RESULTS), metadata={"help": "Where serving.json and serving.md go."})


def eval_args(bench: ServingBenchConfig, model: Path, data: Path, out: Path) -> list[str]:
    """The flags every evaluation shares: greedy, the same budget, no model-based metric (generation is timed)."""
    args = ["--model", str(model), "--dataset", str(data), "--out", str(out), "--split", "test"]
    args += ["--max_new_tokens", str(bench.max_new_tokens), "--batch_size", str(bench.batch_size)]
    return [*args, "--meteor", "false", "--model_metrics", "false"]


def run_evals(bench: ServingBenchConfig, root: Path) -> dict:
    """The three evaluations of the same rows, their rows/s, and whether they wrote the same predictions."""
    release = tiny_release(bench.family, root / "release")
    data = tiny_split(root, n=bench.rows, seed=7)
    results, predictions = {}, {}

    def record(name: str, out: Path) -> None:
        metrics = json.loads((out / "metrics.json").read_text())
        results[name] = {k: metrics["run"].get(k) for k in ("rows_generated", "generation_seconds", "rows_per_s")}
        for key in ("client_seconds_per_row", "server_seconds_per_row", "concurrency"):
            if key in metrics["run"]:
                results[name][key] = metrics["run"][key]
        predictions[name] = (out / "predictions.jsonl").read_bytes()

    if eval_main(eval_args(bench, release.merged, data, root / "in_process")):
        raise RuntimeError("the in-process evaluation failed")
    record("in_process", root / "in_process")
    with transformers_serve(release.merged, log=root / "serve.log") as url:
        server = ["--server", url, "--concurrency", str(bench.concurrency)]
        if eval_main([*eval_args(bench, release.merged, data, root / "server"), *server]):
            raise RuntimeError("the --server evaluation failed")
    record("server", root / "server")
    flags = eval_args(bench, release.merged, data, root / "two_processes")
    options = {flags[k].lstrip("-"): flags[k + 1] for k in range(0, len(flags), 2)}
    launch = ["--config_file", "trainer/recipes/accelerate_configs/cpu_2proc.yaml"]
    launch_two_processes(str(ROOT / "trainer/evaluation/run_eval.py"), launch, options, {}, timeout=1800)
    record("two_processes", root / "two_processes")
    same = {name: predictions[name] == predictions["in_process"] for name in predictions}
    server = results["server"]
    # The server's time per row is its wall time per row (it answers one at a time); a request's latency also
    # counts the time it queued behind the others in flight.
    server["server_wall_seconds_per_row"] = server["generation_seconds"] / server["rows_generated"]
    share = server["client_seconds_per_row"] / server["server_wall_seconds_per_row"]
    return {
        "evaluations": results,
        "same_predictions_as_in_process": same,
        "dp_speedup": results["two_processes"]["rows_per_s"] / results["in_process"]["rows_per_s"],
        "client_share_of_server_time": share,
    }


def run_export(bench: ServingBenchConfig, root: Path) -> dict:
    """Export a LoRA adapter (with 5 % masks) of the 1.27 B bf16 bench checkpoint in a child; its peak RSS and time."""
    from peft import LoraConfig, get_peft_model

    from trainer.models.families import get_family
    from trainer.pruning.masks import save_masks
    from trainer.tiny.build import build_tiny_model

    base, adapter = root / "big-base", root / "big-adapter"
    prune = PruneBenchConfig()
    model = build_random_model(model_config(prune), "cpu", torch.bfloat16)
    parameters = sum(p.numel() for p in model.parameters())
    model.save_pretrained(base, max_shard_size=prune.max_shard_size)
    tiny = build_tiny_model(bench.family, root / "tiny-processor", image_size=32)
    for name in ("processor_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(tiny / name, base / name)  # export saves the processor beside the weights
    family = get_family(bench.family)
    lora = LoraConfig(r=bench.lora_r, target_modules=family.lora_target_modules, init_lora_weights=False)
    torch.manual_seed(0)
    peft_model = get_peft_model(model, lora)
    peft_model.save_pretrained(adapter)
    del peft_model, model
    save_masks(random_masks(base, bench.family, fraction=0.05), adapter, {"method": "random", "target_sparsity": 0.05})
    shards = [p.stat().st_size for p in base.glob("*.safetensors")]
    adapter_bytes = sum(p.stat().st_size for p in adapter.iterdir() if p.suffix == ".safetensors")
    proc = subprocess.run(
        [sys.executable, "-c", EXPORT, str(adapter), str(root / "big-merged"), str(base)],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode:
        raise RuntimeError(f"the export failed:\n{proc.stderr[-3000:]}")
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    peak = child["peak_rss_kib"] * 1024
    budget = max(shards) + adapter_bytes + GOAL_EXPORT_SLACK
    merged = AutoModelForImageTextToText.from_pretrained(root / "big-merged", dtype="auto")
    loads = sum(p.numel() for p in merged.parameters()) == parameters and merged.dtype == torch.bfloat16
    del merged
    gib = 2**30
    return {
        "parameters": parameters,
        "shards": len(shards),
        "checkpoint_gib": sum(shards) / gib,
        "largest_shard_gib": max(shards) / gib,
        "adapter_and_masks_gib": adapter_bytes / gib,
        "peak_rss_gib": peak / gib,
        "rss_after_imports_gib": child["rss_after_imports_kib"] * 1024 / gib,
        "budget_gib": budget / gib,
        "seconds": child["seconds"],
        "merged_by": child["merged_by"],
        "lora_modules": child["lora_modules"],
        "masked_modules": child["masked_modules"],
        "dtype": child["dtype"],
        "loads_alone": loads,
        "goal_met": peak <= budget,
    }


def render(result: dict) -> str:
    """The results as Markdown."""
    e, opts = result["evaluations"], result["options"]
    rows = [
        ("in-process, batched (`geollava-eval`, batch " + str(opts["batch_size"]) + ")", "in_process"),
        (f"`--server` against `transformers serve` (concurrency {opts['concurrency']})", "server"),
        ("2 processes (`accelerate launch`, gloo, 1 thread each)", "two_processes"),
    ]
    lines = [
        "# Serving and data-parallel evaluation",
        "",
        f"The tiny merged `{opts['family']}` ({opts['rows']} rows, {opts['max_new_tokens']} new tokens, greedy), the "
        f"three evaluations in one run on {result['machine']}: a shared machine, so times vary with its load.",
        "",
        "| evaluation | rows/s | generation (s) | same predictions.jsonl as in-process |",
        "|---|---|---|---|",
    ]
    for label, key in rows:
        same = result["same_predictions_as_in_process"][key]
        lines.append(f"| {label} | {e[key]['rows_per_s']:.2f} | {e[key]['generation_seconds']:.1f} | {same} |")
    s = e["server"]
    lines += [
        "",
        f"- 2 processes / 1 process: **{result['dp_speedup']:.2f}x** (goal >= {GOAL_DP_SPEEDUP}x: "
        f"{'met' if result['dp_speedup'] >= GOAL_DP_SPEEDUP else 'not met'}).",
        f"- The client's own time per row (reading the row, encoding the frames, building the request, reading the "
        f"reply): {1000 * s['client_seconds_per_row']:.1f} ms against the server's "
        f"{1000 * s['server_wall_seconds_per_row']:.0f} ms of wall time per row (a request's latency, queueing behind "
        f"the {opts['concurrency'] - 1} others in flight: {1000 * s['server_seconds_per_row']:.0f} ms), "
        f"**{100 * result['client_share_of_server_time']:.1f} %** "
        f"(goal < {100 * GOAL_CLIENT_SHARE:.0f} %: "
        f"{'met' if result['client_share_of_server_time'] < GOAL_CLIENT_SHARE else 'not met'}).",
        "- `transformers serve` generates one request at a time for these models (no continuous batching for "
        "vision-language models), so against it `--server` runs at batch-1 speed; an engine that batches concurrent "
        "requests (vLLM, SGLang) is where `--concurrency` pays.",
        f"- The machine was shared with other jobs (load average {result.get('load_average', '?')} on 2 cores): the "
        "1-process run's two intra-op threads suffer most from it (each waits for the other), the 2 processes run one "
        "thread each, so the ratio above is larger than an idle machine would give.",
    ]
    if "export" in result:
        x = result["export"]
        lines += [
            "",
            "## `geollava-export` of the 1.27 B checkpoint",
            "",
            f"bench_prune's checkpoint ({x['parameters'] / 1e9:.2f} B parameters, {x['dtype']}, {x['shards']} shards, "
            f"{x['checkpoint_gib']:.2f} GiB), a LoRA adapter (r {opts['lora_r']}, {x['lora_modules']} modules) with "
            f"5 % masks on {x['masked_modules']} modules; merged {x['merged_by']}, in a fresh process.",
            "",
            "| peak RSS (GiB) | largest shard + adapter + 1 GiB | time (s) | loads alone, bf16 |",
            "|---|---|---|---|",
            f"| {x['peak_rss_gib']:.2f} (imports: {x['rss_after_imports_gib']:.2f}) | {x['budget_gib']:.2f} "
            f"({'met' if x['goal_met'] else 'not met'}) | {x['seconds']:.1f} | {x['loads_alone']} |",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the three evaluations and the export; record them."""
    (bench,) = HfArgumentParser(ServingBenchConfig).parse_args_into_dataclasses(args=argv)
    with tempfile.TemporaryDirectory(prefix="bench-serving-", dir=bench.workdir) as tmp:
        start = time.perf_counter()
        result = run_evals(bench, Path(tmp))
        if bench.export:
            result["export"] = run_export(bench, Path(tmp))
        result |= {
            "load_average": round(os.getloadavg()[0], 1),
            "seconds": round(time.perf_counter() - start, 1),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
            "options": asdict(bench),
        }
    print(write_results("serving", result, render(result), Path(bench.out_dir)))
    ok = all(result["same_predictions_as_in_process"].values()) and result["dp_speedup"] >= GOAL_DP_SPEEDUP
    ok &= result["client_share_of_server_time"] < GOAL_CLIENT_SHARE and result.get("export", {}).get("goal_met", True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
