"""Annotation benchmark: throughput under an RPM limit, estimate-vs-actual tokens, and the paper-scale cost.

    .venv/bin/python benchmarks/bench_annotation.py

The real annotator runs against the tests' fake server (200 ms latency, a server-side RPM window answering 429
beyond it), which counts tokens by OpenAI's published rule: the input-token error measures our implementation of
the rule, not OpenAI's tokenizer. Writes benchmarks/results/annotation.{json,md}. See docs/annotation.md.
"""

import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from results_io import write_results  # noqa: E402

from dataset_builder.annotation.base import AnnotationRequest  # noqa: E402
from dataset_builder.annotation.openai.annotator import OpenAIAnnotator  # noqa: E402
from dataset_builder.annotation.openai.cost import (  # noqa: E402
    EXPECTED_OUTPUT_TOKENS,
    estimate_cost,
    load_price_table,
    pricing_for,
    request_input_tokens,
)
from dataset_builder.prompts import ANNOTATION_PROMPT  # noqa: E402
from tests.annotation.fake_openai import FakeOpenAIServer, FakeState  # noqa: E402


RPM = 600
LATENCY_S = 0.2
PAIRS = 150
PAPER_PAIRS = {"train": 100_000, "test": 6_042}


def _jpeg(seed: int, size=(336, 336)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def throughput() -> dict:
    os.environ["OPENAI_API_KEY"] = "sk-bench-not-a-real-key"
    requests = [
        AnnotationRequest(f"p{i}", (Path("a.jpg"), Path("b.jpg")), (_jpeg(2 * i), _jpeg(2 * i + 1)))
        for i in range(PAIRS)
    ]
    state = FakeState(latency_s=LATENCY_S, rpm_limit=RPM, answer_words=140)
    with FakeOpenAIServer(state) as server, tempfile.TemporaryDirectory() as tmp:
        annotator = OpenAIAnnotator(
            base_url=server.base_url,
            cache_path=f"{tmp}/cache.jsonl",
            rpm=RPM,
            tpm=0,
            concurrency=16,
            max_tokens=400,
            timeout_s=10,
        )
        start = time.perf_counter()
        results = list(annotator.annotate(requests))
        wall = time.perf_counter() - start
        report = annotator.report()
        annotator.close()
    ok = sum(r.status == "ok" for r in results)
    tokens = report["tokens"]
    arrivals = state.arrivals
    server_rate = 60 * (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    est_out = EXPECTED_OUTPUT_TOKENS * ok
    est_total = tokens["estimated_input_of_answered"] + est_out
    actual_total = tokens["actual_input"] + tokens["actual_output"]
    return {
        "pairs": PAIRS,
        "succeeded": ok,
        "rpm_limit": RPM,
        "latency_s": LATENCY_S,
        "concurrency": 16,
        "requests": report["requests"],
        "server_429": state.outcomes.get("429 rpm", 0),
        "wall_s": round(wall, 2),
        "achieved_rpm_client": report["requests_per_minute"],
        "achieved_rpm_server": round(server_rate, 1),
        "fraction_of_limit": round(server_rate / RPM, 4),
        "input_tokens": {
            "estimated": tokens["estimated_input_of_answered"],
            "actual": tokens["actual_input"],
            "error_pct": tokens["input_error_pct"],
        },
        "output_tokens": {
            "estimated": est_out,
            "actual": tokens["actual_output"],
            "error_pct": round(100 * (est_out - tokens["actual_output"]) / tokens["actual_output"], 2),
        },
        "total_tokens_error_pct": round(100 * (est_total - actual_total) / actual_total, 3),
        "cost_usd": report["cost_usd"],
    }


def paper_scale() -> list[dict]:
    table = load_price_table()
    mini = pricing_for("gpt-4o-mini", table)
    n = sum(PAPER_PAIRS.values())
    rows = []
    for label, size, detail in (
        ("stored 336 px frames, detail low", (336, 336), "low"),
        ("stored 336 px frames, detail high", (336, 336), "high"),
        ("fMoW images at 512 px (builder default), detail high", (512, 384), "high"),
        ("full-resolution fMoW (e.g. 2000x1500), detail high", (2000, 1500), "high"),
    ):
        tokens = request_input_tokens(ANNOTATION_PROMPT, [size, size], detail, mini.image_rule)
        for batch in (False, True):
            est = estimate_cost([tokens] * n, mini, EXPECTED_OUTPUT_TOKENS, 300, batch)
            rows.append(
                {
                    "images": label,
                    "api": "Batch" if batch else "sync",
                    "pairs": n,
                    "input_tokens_per_pair": tokens,
                    "input_tokens": est.input_tokens,
                    "output_tokens": est.output_tokens,
                    "cost_usd": round(est.cost_usd, 2),
                    "max_cost_usd": round(est.max_cost_usd, 2),
                }
            )
    return rows


def main() -> None:
    result = {
        "throughput": throughput(),
        "paper_scale_gpt_4o_mini": paper_scale(),
        "expected_output_tokens": EXPECTED_OUTPUT_TOKENS,
        "prices": "dataset_builder/annotation/openai/openai_prices.yaml",
    }
    t = result["throughput"]
    lines = [
        "# Annotation benchmark",
        "",
        f"Fake OpenAI server on loopback, {t['latency_s']} s latency, server-side RPM limit {t['rpm_limit']} "
        f"(sliding 60 s window), {t['pairs']} pairs, concurrency {t['concurrency']}.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| achieved requests/min (server clock) | {t['achieved_rpm_server']} |",
        f"| fraction of the RPM limit | {t['fraction_of_limit']:.1%} |",
        f"| 429s from the server's limit | {t['server_429']} |",
        f"| input tokens: estimate vs actual | {t['input_tokens']['estimated']:,} vs {t['input_tokens']['actual']:,} "
        f"({t['input_tokens']['error_pct']} %) |",
        f"| output tokens: estimate vs actual | {t['output_tokens']['estimated']:,} vs "
        f"{t['output_tokens']['actual']:,} ({t['output_tokens']['error_pct']} %) |",
        f"| total tokens error | {t['total_tokens_error_pct']} % |",
        "",
        f"## Paper scale: {sum(PAPER_PAIRS.values()):,} pairs (100,000 train + 6,042 test), gpt-4o-mini",
        "",
        f"Output estimated at {EXPECTED_OUTPUT_TOKENS} tokens a pair; the upper bound uses max_tokens 300.",
        "",
        "| images | API | input tokens/pair | input tokens | output tokens | estimate (USD) | upper bound (USD) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["paper_scale_gpt_4o_mini"]:
        lines.append(
            f"| {r['images']} | {r['api']} | {r['input_tokens_per_pair']:,} | {r['input_tokens']:,} | "
            f"{r['output_tokens']:,} | {r['cost_usd']:,.2f} | {r['max_cost_usd']:,.2f} |"
        )
    print(write_results("annotation", result, lines))


if __name__ == "__main__":
    main()
