"""Batched greedy generation (left padding) against batch 1 on a tiny model: speed-up, and identical outputs.

    .venv/bin/python benchmarks/bench_generation.py

Goal: >= 4x rows/s at batch 16 on 2 CPU cores, outputs equal to batch 1 under greedy decoding.
Writes benchmarks/results/generation.json and .md.
"""

import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from results_io import write_results  # noqa: E402

from dataset_builder.prompts import PROMPT_TEMPLATES  # noqa: E402
from trainer.evaluation.generation import generate_batch  # noqa: E402
from trainer.models.loading import load_for_inference  # noqa: E402
from trainer.tiny.build import build_tiny_model  # noqa: E402


FAMILY = os.environ.get("BENCH_FAMILY", "llava-next-video")
N_ROWS = int(os.environ.get("BENCH_ROWS", "64"))
MAX_NEW_TOKENS = 32
BATCH_SIZES = (1, 4, 8, 16)
CORPUS = [*PROMPT_TEMPLATES, "The first image shows farmland. A new building was built in the north-east."]


def run(model, processor, family, questions, frames, batch_size):
    outputs = []
    start = time.perf_counter()
    for i in range(0, len(questions), batch_size):
        outputs += generate_batch(
            model, processor, family, questions[i : i + batch_size], frames[i : i + batch_size], MAX_NEW_TOKENS
        )
    return outputs, time.perf_counter() - start


def main():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_model(FAMILY, Path(tmp) / "tiny", corpus=CORPUS)
        model, processor, family = load_for_inference(path)
        questions = [PROMPT_TEMPLATES[i % len(PROMPT_TEMPLATES)] for i in range(N_ROWS)]
        frames = [[rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(2)] for _ in range(N_ROWS)]
        run(model, processor, family, questions[:4], frames[:4], 4)  # warm-up
        results, reference = {}, None
        for bs in BATCH_SIZES:
            outputs, seconds = run(model, processor, family, questions, frames, bs)
            reference = outputs if reference is None else reference
            results[bs] = {
                "seconds": round(seconds, 3),
                "rows_per_s": round(N_ROWS / seconds, 2),
                "equal_to_batch_1": outputs == reference,
                "n_differing_rows": sum(a != b for a, b in zip(outputs, reference, strict=True)),
            }
    base = results[1]["rows_per_s"]
    for r in results.values():
        r["speedup_vs_batch_1"] = round(r["rows_per_s"] / base, 2)
    summary = {
        "benchmark": "batched greedy generation, left padding",
        "family": FAMILY,
        "rows": N_ROWS,
        "max_new_tokens": MAX_NEW_TOKENS,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "by_batch_size": results,
        "goal": "speed-up >= 4x at batch 16, outputs equal to batch 1",
        "goal_met": results[16]["speedup_vs_batch_1"] >= 4 and results[16]["equal_to_batch_1"],
    }
    lines = [
        "# Batched generation (tiny model, CPU)",
        "",
        f"{N_ROWS} rows of the tiny `{FAMILY}`, greedy, max_new_tokens {MAX_NEW_TOKENS}, "
        f"{summary['torch_threads']} torch threads on {summary['cpu_count']} CPUs (shared machine: one run).",
        "",
        "| batch size | seconds | rows/s | speed-up vs batch 1 | outputs equal to batch 1 |",
        "|---|---|---|---|---|",
    ]
    for bs, r in results.items():
        equal = "yes" if r["equal_to_batch_1"] else f"no ({r['n_differing_rows']} rows differ)"
        lines.append(f"| {bs} | {r['seconds']} | {r['rows_per_s']} | {r['speedup_vs_batch_1']}x | {equal} |")
    lines += ["", f"Goal (>= 4x at batch 16, equal outputs): {'met' if summary['goal_met'] else 'NOT met'}."]
    print(write_results("generation", summary, lines))


if __name__ == "__main__":
    main()
