"""Scoring 6,042 rows of ~100-word captions on the CPU, against the encoder's floor.

    .venv/bin/python benchmarks/bench_scoring.py            # BENCH_ROWS=300 for a quick check

The floor is one encoder forward over the distinct sentences plus ROUGE; the goal, ``geollava-score``'s GeoLLaVA set
in fp32 within 1.15x of it. The fast precisions' deviation goes to trainer/evaluation/precision_deviation.json. See
docs/evaluation.md "Benchmarks".
"""

import datetime
import os
import platform
import random
import resource
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from results_io import write_results  # noqa: E402

from dataset_builder.atomic import write_json  # noqa: E402
from trainer.evaluation import metrics, shared_encoder  # noqa: E402
from trainer.evaluation.metric_sets import (  # noqa: E402
    EncoderOptions,
    encoder_metrics,
    geollava_set,
    levircc_set,
    shared_encoder_for,
)


N_ROWS = int(os.environ.get("BENCH_ROWS", "6042"))
BF16_ROWS = min(N_ROWS, int(os.environ.get("BENCH_BF16_ROWS", "300")))
TARGET_RATIO = 1.15
RESULTS = ROOT / "benchmarks" / "results"

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


def benchmark_rows(n: int) -> tuple[list[str], list[list[str]]]:
    """``n`` predictions that share part of their reference (as a fine-tuned model's do) and differ elsewhere."""
    rng = random.Random(0)
    refs = [[caption(rng)] for _ in range(n)]
    preds = []
    for (ref,) in refs:
        words = ref.split()
        cut = rng.randint(len(words) // 3, 2 * len(words) // 3)
        preds.append(" ".join(words[:cut] + caption(rng).split()[cut:]))
    return preds, refs


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the machine is shared: wall time alone misleads)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(fn):
    """``(result, wall seconds, CPU seconds)`` of ``fn()``."""
    cpu, wall = cpu_seconds(), time.perf_counter()
    result = fn()
    return result, time.perf_counter() - wall, cpu_seconds() - cpu


def encoder_floor(sentences: list[str], batch_size: int = 64) -> None:
    """One forward of the shared encoder over the distinct sentences, length-sorted, nothing kept: the floor."""
    import torch

    encoder = shared_encoder_for(EncoderOptions())
    tokenizer, model = shared_encoder._load(encoder.path, "fp32", "cpu")  # the model encoder_metrics uses here
    distinct = list(dict.fromkeys(sentences))
    ids = tokenizer(distinct, truncation=True, max_length=tokenizer.model_max_length)["input_ids"]
    ids.sort(key=len, reverse=True)
    with torch.inference_mode():
        for start in range(0, len(ids), batch_size):
            batch = tokenizer.pad({"input_ids": ids[start : start + batch_size]}, return_tensors="pt")
            model(**batch)


def deviation(fast: dict, exact: dict) -> dict:
    """Per metric: the largest and the mean absolute per-row difference, and the difference of the means."""
    out = {}
    for key in ("bertscore_f1", "sbert_cosine"):
        diffs = [a - b for a, b in zip(fast[key], exact[key], strict=False)]
        out[key] = {
            "max_abs": max(abs(d) for d in diffs),
            "mean_abs": sum(abs(d) for d in diffs) / len(diffs),
            "on_the_mean": sum(diffs) / len(diffs),
        }
    return out


def measure_fast(precision: str, n: int, preds, refs, exact: tuple) -> dict:
    """Time ``precision`` on the first ``n`` rows (encoder metrics only) and the deviation of its per-row values.

    Args:
        precision: ``int8`` or ``bf16``.
        n: Rows to score.
        preds: The predictions.
        refs: Their references.
        exact: ``(per-row fp32 values, wall, CPU seconds)`` of the fp32 encoder metrics on all rows; on fewer rows
            fp32 is timed again on the same rows.
    """
    per_row, fp32_wall, fp32_cpu = exact
    if n < len(preds):
        _, fp32_wall, fp32_cpu = timed(lambda: encoder_metrics(preds[:n], refs[:n], EncoderOptions()))
    fast, wall, cpu = timed(lambda: encoder_metrics(preds[:n], refs[:n], EncoderOptions(precision=precision)))
    return {
        "rows": n,
        "seconds": {"fp32": round(fp32_wall, 2), precision: round(wall, 2)},
        # the fp32 part of a whole-set run has no CPU time of its own
        "cpu_seconds": {"fp32": round(fp32_cpu, 2) if fp32_cpu else None, precision: round(cpu, 2)},
        "speedup_cpu": round(fp32_cpu / cpu, 2) if fp32_cpu else None,
        "deviation": deviation(fast.per_row, {k: v[:n] for k, v in per_row.items()}),
    }


def write_markdown(result: dict) -> str:
    """benchmarks/results/scoring.md."""
    s, r = result["seconds"], result
    lines = [
        "# Scoring speed (CPU) at the encoder's floor",
        "",
        f"{r['rows']} rows, predictions of ~{r['mean_prediction_words']} words, one reference each "
        f"({r['distinct_sentences']} distinct sentences); {r['torch_threads']} torch threads on {r['cpu_count']} "
        f"CPUs ({r['cpu']}); measured {r['measured']} on a shared machine, one run: wall seconds, CPU seconds in "
        "brackets.",
        "",
        "| step | seconds |",
        "|---|---|",
        f"| floor: one encoder forward per distinct sentence (MiniLM L6, fp32) | {r['floor_parts']['encoder']} |",
        f"| floor: ROUGE-1/2/L (rouge-score, Porter stemmer) | {r['floor_parts']['rouge']} |",
        f"| **floor** | **{r['floor_seconds']}** ({r['floor_cpu_seconds']}) |",
        f"| ROUGE-1/2/L | {s.get('rouge')} |",
        f"| sentence BLEU-2 + sacreBLEU | {s.get('bleu')} |",
        f"| encoder: tokenize + one forward per distinct sentence, both layers kept | {s.get('encoder')} |",
        f"| BERTScore greedy matching | {s.get('bertscore_matching')} |",
        f"| SBERT cosine (pooled in the same pass) | {s.get('sbert_pooling')} |",
        f"| **GeoLLaVA set, fp32** | **{r['geollava_set_seconds']}** ({r['geollava_set_cpu_seconds']}) |",
        f"| pycocoevalcap: PTB tokenizer, BLEU-1..4, ROUGE-L, CIDEr-D, METEOR 1.5 | {r['levircc_set_seconds']} |",
        f"| **all `geollava-score` computes** | **{r['score_rows_seconds']}** ({r['score_rows_cpu_seconds']}) |",
        "",
        f"GeoLLaVA set / floor: **{r['ratio_geollava_set']}x** in wall time, **{r['ratio_geollava_set_cpu']}x** in "
        f"CPU time (target <= {TARGET_RATIO}x: {'met' if r['target_met'] else 'NOT met'}); everything / floor: "
        f"{r['ratio_everything']}x in wall time (pycocoevalcap's PTB tokenizer and METEOR are Java processes of their "
        "own). Wall times move with the other jobs on a shared machine; CPU times much less.",
        "",
        "| fast precision | rows | encoder metrics, seconds fp32 -> fast (CPU) | speed-up wall (CPU) "
        "| BERTScore F1: max / mean abs per-row difference, on the mean | SBERT cosine: same |",
        "|---|---|---|---|---|---|",
    ]
    for name, fast in r["fast_precisions"].items():
        d = fast["deviation"]
        cells = [
            f"{d[k]['max_abs']:.1e} / {d[k]['mean_abs']:.1e}, {d[k]['on_the_mean']:+.1e}"
            for k in ("bertscore_f1", "sbert_cosine")
        ]
        secs, cpu = fast["seconds"], fast["cpu_seconds"]
        speedup = f"{secs['fp32'] / secs[name]:.2f}x" + (f" ({fast['speedup_cpu']}x)" if fast["speedup_cpu"] else "")
        lines.append(
            f"| {name} | {fast['rows']} | {secs['fp32']} -> {secs[name]} ({cpu['fp32'] or '—'} -> {cpu[name]}) "
            f"| {speedup} | {cells[0]} | {cells[1]} |"
        )
    lines += ["", "fp32 stays the default: it equals bert-score's and sentence-transformers' values within 1e-6.", ""]
    return "\n".join(lines)


def main():
    preds, refs = benchmark_rows(N_ROWS)
    sentences = [*preds, *(r for rs in refs for r in rs)]
    metrics.use_available_cores()
    encoder_floor(sentences[:8])  # model load, not timed
    _, floor_encoder, floor_encoder_cpu = timed(lambda: encoder_floor(sentences))
    _, floor_rouge, floor_rouge_cpu = timed(lambda: metrics.rouge_scores(preds, refs))
    floor = floor_encoder + floor_rouge
    metrics._rouge_scorer.cache_clear()  # a fresh stem memo: the set's ROUGE must not reuse the floor's stems

    # what geollava-score's score_rows runs, one set after the other
    geo, geo_wall, geo_cpu = timed(lambda: geollava_set(preds, refs))
    coco, coco_wall, coco_cpu = timed(lambda: levircc_set(preds, refs, meteor=metrics.java_available()))
    s = {k: round(v, 2) for k, v in {**geo.seconds, **coco.seconds}.items()}
    encoder_part = sum(geo.seconds[k] for k in ("encoder", "bertscore_matching", "sbert_pooling"))
    exact = ({k: geo.per_row[k] for k in ("bertscore_f1", "sbert_cosine")}, encoder_part, None)
    fast = {
        "int8": measure_fast("int8", N_ROWS, preds, refs, exact),
        "bf16": measure_fast("bf16", BF16_ROWS, preds, refs, exact),
    }
    result = {
        "benchmark": "scoring at the encoder's floor: geollava-score's metrics over benchmark rows",
        "measured": datetime.date.today().isoformat(),
        "rows": N_ROWS,
        "distinct_sentences": len(set(sentences)),
        "mean_prediction_words": round(sum(len(p.split()) for p in preds) / N_ROWS, 1),
        "torch_threads": __import__("torch").get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "models": {**geo.models, **coco.models},
        "floor_parts": {"encoder": round(floor_encoder, 2), "rouge": round(floor_rouge, 2)},
        "floor_seconds": round(floor, 2),
        "floor_cpu_seconds": round(floor_encoder_cpu + floor_rouge_cpu, 2),
        "seconds": s,
        "geollava_set_seconds": round(geo_wall, 2),
        "geollava_set_cpu_seconds": round(geo_cpu, 2),
        "levircc_set_seconds": round(coco_wall, 2),
        "score_rows_seconds": round(geo_wall + coco_wall, 2),
        "score_rows_cpu_seconds": round(geo_cpu + coco_cpu, 2),
        "ratio_geollava_set": round(geo_wall / floor, 3),
        # CPU time is what a shared machine disturbs least: the same work costs the same CPU seconds
        "ratio_geollava_set_cpu": round(geo_cpu / (floor_encoder_cpu + floor_rouge_cpu), 3),
        "ratio_everything": round((geo_wall + coco_wall) / floor, 3),
        "target_ratio": TARGET_RATIO,
        "target_met": max(geo_wall / floor, geo_cpu / (floor_encoder_cpu + floor_rouge_cpu)) <= TARGET_RATIO,
        "fast_precisions": fast,
    }
    markdown = write_results("scoring", result, write_markdown(result))
    stored = {"measured": result["measured"], "rows": N_ROWS, "cpu": result["cpu"], "precisions": fast}
    write_json(shared_encoder.DEVIATION_FILE, stored, indent=2)
    print(markdown)


if __name__ == "__main__":
    main()
