"""Scoring time for 6,042 rows of ~100-word captions: ROUGE, sentence BLEU-2 and MiniLM BERTScore on the CPU.

    .venv/bin/python benchmarks/bench_scoring.py

6,042 is the size of GeoLLaVA's test set. Goal (issue 7): <= 60 s on 2 cores. BERTScore is timed in float32 (the
exact value, the default) and under bfloat16 autocast (``--bertscore_bf16``), with the largest F1 difference between
the two. Writes benchmarks/results/scoring.json and .md.
"""

import json
import os
import random
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from trainer.evaluation import metrics  # noqa: E402


N_ROWS = int(os.environ.get("BENCH_ROWS", "6042"))
GOAL_S = 60.0

OBJECTS = [
    "building",
    "warehouse",
    "road",
    "parking lot",
    "field",
    "forest",
    "river",
    "lake",
    "bridge",
    "runway",
    "solar farm",
    "construction site",
    "residential block",
    "highway",
    "canal",
    "shipyard",
    "stadium",
]
PLACES = ["north", "south", "east", "west", "north-east", "south-west", "centre", "upper left", "lower right"]
VERBS = ["was built", "was demolished", "was widened", "was cleared", "expanded", "shrank", "appeared", "was paved"]
ADJS = ["large", "small", "dense", "sparse", "green", "brown", "grey", "bright", "irregular", "rectangular"]


def caption(rng: random.Random) -> str:
    """A ~100-word, GPT-style description of two images and their changes."""
    sentences = [
        f"The first image shows a {rng.choice(ADJS)} {rng.choice(OBJECTS)} in the {rng.choice(PLACES)} with a "
        f"{rng.choice(ADJS)} {rng.choice(OBJECTS)} nearby and several {rng.choice(ADJS)} areas around it.",
        f"The second image shows the same location, where a {rng.choice(OBJECTS)} is now visible in the "
        f"{rng.choice(PLACES)} next to a {rng.choice(ADJS)} {rng.choice(OBJECTS)}.",
    ]
    while sum(len(s.split()) for s in sentences) < 95:
        sentences.append(
            f"Between the two images, a {rng.choice(ADJS)} {rng.choice(OBJECTS)} {rng.choice(VERBS)} in the "
            f"{rng.choice(PLACES)}, changing the appearance of the {rng.choice(OBJECTS)}."
        )
    return " ".join(sentences)


def main():
    rng = random.Random(0)
    refs = [[caption(rng)] for _ in range(N_ROWS)]
    # predictions share part of their reference (as a fine-tuned model's do) and differ elsewhere
    preds = []
    for (ref,) in refs:
        words = ref.split()
        cut = rng.randint(len(words) // 3, 2 * len(words) // 3)
        preds.append(" ".join(words[:cut] + caption(rng).split()[cut:]))
    n_words = sum(len(p.split()) for p in preds) / N_ROWS

    timings = {}
    start = time.perf_counter()
    metrics.rouge_scores(preds, refs)
    timings["rouge"] = time.perf_counter() - start
    start = time.perf_counter()
    metrics.sentence_bleu2(preds, refs)
    timings["sentence_bleu2"] = time.perf_counter() - start
    metrics.bertscore_f1(preds[:4], refs[:4])  # model load, not timed
    start = time.perf_counter()
    exact, info = metrics.bertscore_f1(preds, refs)
    timings["bertscore_minilm_fp32"] = time.perf_counter() - start
    start = time.perf_counter()
    fast, _ = metrics.bertscore_f1(preds, refs, bf16=True)
    timings["bertscore_minilm_bf16"] = time.perf_counter() - start
    max_diff = max(abs(a - b) for a, b in zip(exact, fast, strict=True))
    mean_diff = abs(sum(exact) - sum(fast)) / N_ROWS

    total_fp32 = timings["rouge"] + timings["sentence_bleu2"] + timings["bertscore_minilm_fp32"]
    total_bf16 = timings["rouge"] + timings["sentence_bleu2"] + timings["bertscore_minilm_bf16"]
    result = {
        "benchmark": "scoring: ROUGE + sentence BLEU-2 + MiniLM BERTScore",
        "rows": N_ROWS,
        "mean_prediction_words": round(n_words, 1),
        "torch_threads": __import__("torch").get_num_threads(),
        "cpu_count": os.cpu_count(),
        "bertscore_model": info.as_dict(),
        "seconds": {k: round(v, 2) for k, v in timings.items()},
        "total_seconds_fp32": round(total_fp32, 2),
        "total_seconds_bf16": round(total_bf16, 2),
        "bf16_speedup_on_bertscore": round(timings["bertscore_minilm_fp32"] / timings["bertscore_minilm_bf16"], 2),
        "bf16_max_abs_f1_difference": max_diff,
        "bf16_mean_f1_difference": mean_diff,
        "rows_per_s_fp32": round(N_ROWS / total_fp32, 1),
        "goal_seconds": GOAL_S,
        "goal_met_fp32": total_fp32 <= GOAL_S,
        "goal_met_bf16": total_bf16 <= GOAL_S,
    }
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "scoring.json").write_text(json.dumps(result, indent=2) + "\n")
    s = result["seconds"]
    lines = [
        "# Scoring speed (CPU)",
        "",
        f"{N_ROWS} rows, predictions of ~{result['mean_prediction_words']} words, one reference each; "
        f"{result['torch_threads']} torch threads on {result['cpu_count']} CPUs (shared machine: one run).",
        "",
        "| step | seconds |",
        "|---|---|",
        f"| ROUGE-1/2/L (rouge-score, Porter stemmer, memoized stems) | {s['rouge']} |",
        f"| sentence BLEU-2 (NLTK, method1) | {s['sentence_bleu2']} |",
        f"| BERTScore MiniLM L6, float32 (default, exact) | {s['bertscore_minilm_fp32']} |",
        f"| BERTScore MiniLM L6, bfloat16 autocast (`--bertscore_bf16`) | {s['bertscore_minilm_bf16']} |",
        f"| **total, float32** | **{result['total_seconds_fp32']}** |",
        f"| **total, bfloat16** | **{result['total_seconds_bf16']}** |",
        "",
        f"bfloat16 is {result['bf16_speedup_on_bertscore']}x faster on BERTScore; its F1 differs from float32 by at "
        f"most {max_diff:.2e} per row ({mean_diff:.2e} on the mean).",
        f"Goal <= {GOAL_S:.0f} s: float32 {'met' if result['goal_met_fp32'] else 'NOT met'}, "
        f"bfloat16 {'met' if result['goal_met_bf16'] else 'NOT met'}.",
        "",
    ]
    (out / "scoring.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
