"""The quickstart's report (report.json, report.md): metrics of the base, the trained adapter and the majority answer,
and whether the profile's bars are met. Read by scripts/quickstart.py; everything comes from the stages' own files.
"""

import json
import os
from pathlib import Path

from dataset_builder.atomic import write_json, write_text
from trainer.evaluation.grounding import majority_baseline
from trainer.evaluation.metric_sets import TEMPORAL_KEYS


#: The bars a profile can set (profiles.yaml ``bars``): name -> (metric, how the target is computed from the
#: reference's value, its wording, the reference: the base model's metrics or the majority answer's).
BARS = {
    "grounding_f1_min": ("grounding_f1", lambda x, ref: x, "trained grounding F1 >= {x}", "base"),
    "grounding_f1_vs_base": (
        "grounding_f1",
        lambda x, ref: x * ref,
        "trained grounding F1 >= {x}x the base's",
        "base",
    ),
    "rougeL_min": ("rougeL", lambda x, ref: x, "trained ROUGE-L >= {x}", "base"),
    "rougeL_gain": ("rougeL", lambda x, ref: ref + x, "trained ROUGE-L >= the base's + {x}", "base"),
    "temporal_f1_gain": ("temporal_f1", lambda x, ref: ref + x, "trained temporal F1 >= the base's + {x}", "base"),
    "temporal_f1_vs_majority": (
        "temporal_f1",
        lambda x, ref: ref + x,
        "trained temporal F1 >= the majority answer's + {x}",
        "majority",
    ),
}
#: The metrics the markdown table shows, in order.
TABLE_KEYS = ("rougeL", "rouge1", "sentence_bleu2", "bertscore_f1", "grounding_f1", "temporal_f1", "cider_d", "s_m")


def check_bars(bars: dict, base: dict, trained: dict, majority: dict | None = None) -> list[dict]:
    """Each bar with the trained value, the target it must reach and whether it does.

    Args:
        bars: ``{bar name (see BARS): its number}``.
        base: The base model's metrics.json.
        trained: The trained adapter's metrics.json.
        majority: The majority answer's metrics (:func:`majority_metrics`), for the bars against it.

    Returns:
        ``[{"bar", "metric", "value", "target", "met"}]``; a metric that was not computed does not meet its bar.
    """
    checked = []
    for name, x in bars.items():
        metric, target_of, wording, reference = BARS[name]
        value, base_value = trained.get(metric), (base if reference == "base" else majority or {}).get(metric)
        target = target_of(x, base_value) if isinstance(base_value, int | float) else None
        met = isinstance(value, int | float) and target is not None and value >= target
        checked.append({"bar": wording.format(x=x), "metric": metric, "value": value, "target": target, "met": met})
    return checked


def majority_metrics(predictions_path: Path, metrics: dict | None = None) -> dict:
    """Grounding of always naming the test split's most common change kinds, from the rows' true ``changes``.

    On sequences, the ``temporal_*`` of the dates-only majority answer come with it, from the evaluation's
    ``metrics`` (``temporal_majority``, :func:`trainer.evaluation.temporal.temporal_majority`).

    Returns:
        :func:`trainer.evaluation.grounding.majority_baseline`'s dict, or ``{}`` when no row carries ``changes``.
    """
    rows = [json.loads(line) for line in predictions_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    changes = [row["changes"] for row in rows if row.get("changes") is not None]
    majority = majority_baseline(changes) if changes else {}
    temporal = (metrics or {}).get("temporal_majority") or {}
    return {**majority, **{key: temporal[key] for key in TEMPORAL_KEYS if key in temporal}}


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "—"


def report_markdown(report: dict) -> str:
    """report.md from report.json's dict."""
    metrics, profile = report["metrics"], report["profile"]
    base, trained, majority = metrics["base"], metrics["trained"], metrics["majority"]
    lines = [
        "# GeoLLaVA quickstart report" + ("" if profile == "default" else f" ({profile} profile)"),
        "",
        f"Main job: **{report['main_job_seconds']} s** on {os.cpu_count()} cores. "
        f"Rows ({report.get('config', 'default')} config): {report['rows']}.",
        f"Sparsity reached: {report['sparsity']}. Repos (loopback Hub): {', '.join(report['repos'].values())}.",
        "",
        "| metric | base | trained | majority |",
        "|---|---|---|---|",
    ]
    for key in TABLE_KEYS:
        if key in base or key in trained:
            lines.append(f"| {key} | {_fmt(base.get(key))} | {_fmt(trained.get(key))} | {_fmt(majority.get(key))} |")
    if majority:
        kinds = ", ".join(majority["kinds"])
        lines += ["", f"Majority: always naming the test split's most common change kinds ({kinds})."]
        if "temporal_f1" in majority:
            lines.append(
                "Its temporal F1 is the dates-only majority answer's: the split's most common kinds, each in the "
                "interval where it happens most often, with each row's own dates."
            )
    if report["bars"]:
        lines += ["", "| bar | trained | target | met |", "|---|---|---|---|"]
        for bar in report["bars"]:
            met = "yes" if bar["met"] else "**no**"
            lines.append(f"| {bar['bar']} | {_fmt(bar['value'])} | {_fmt(bar['target'])} | {met} |")
    lines += ["", "| stage | seconds |", "|---|---|"]
    lines += [f"| {name} | {seconds} |" for name, seconds in report["stage_seconds"].items()]
    return "\n".join(lines) + "\n"


def write_report(
    out: Path, profile: str, bars: dict, stage_seconds: dict, hub: dict, total_seconds: float, repos: dict
) -> dict:
    """Write report.json and report.md from the stages' own output files; return the report."""
    base_metrics = json.loads((out / "eval_base" / "metrics.json").read_text())
    trained_metrics = json.loads((out / "eval_trained" / "metrics.json").read_text())
    build = json.loads((out / "dataset" / "build_report.json").read_text())
    pruning_path = out / "adapter" / "pruning.json"
    pruning = json.loads(pruning_path.read_text()) if pruning_path.exists() else {}
    majority = majority_metrics(out / "eval_trained" / "predictions.jsonl", trained_metrics)
    config = (trained_metrics.get("run") or {}).get("config") or "default"  # the config trained and scored
    report = {
        "profile": profile,
        "stage_seconds": stage_seconds,
        "main_job_seconds": round(total_seconds, 1),
        "config": config,
        "rows": build.get("pairs_per_split", {}) if config == "default" else build[config]["rows_per_split"],
        "metrics": {"base": base_metrics, "trained": trained_metrics, "majority": majority},
        "sparsity": pruning.get("sparsity_reached", pruning.get("sparsity")),
        "repos": repos,
        "hub_round_trip": hub,
        "bars": check_bars(bars, base_metrics, trained_metrics, majority),
    }
    write_json(out / "report.json", report, indent=2)
    write_text(out / "report.md", report_markdown(report))
    return report


def print_summary(out: Path, report: dict, demo: str) -> None:
    """Print report.md, the headline numbers, whether the bars are met, and what to do next."""
    metrics = report["metrics"]
    base, trained, majority = metrics["base"], metrics["trained"], metrics["majority"]
    print()
    print((out / "report.md").read_text())
    print(
        f"ROUGE-L {_fmt(base.get('rougeL'))} -> {_fmt(trained.get('rougeL'))}, "
        f"grounding F1 {_fmt(base.get('grounding_f1'))} -> {_fmt(trained.get('grounding_f1'))} "
        f"(majority answer {_fmt(majority.get('grounding_f1'))})"
    )
    if "temporal_f1" in trained:
        print(
            f"temporal F1 {_fmt(base.get('temporal_f1'))} -> {_fmt(trained.get('temporal_f1'))} "
            f"(majority answer {_fmt(majority.get('temporal_f1'))})"
        )
    missed = [bar["bar"] for bar in report["bars"] if not bar["met"]]
    if report["bars"]:
        print("bars: all met" if not missed else f"bars NOT met: {'; '.join(missed)}")
    print("\nNext:")
    print(f"  {demo}")
    print("  see README.md 'Real fMoW, real models, the real Hub' for the same commands at full scale")
