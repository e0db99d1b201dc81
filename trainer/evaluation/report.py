"""``report.md`` and PNG plots of an evaluation: our metrics against the papers' rows, per category, lengths.

The paper numbers are constants here, copied from the GeoLLaVA README / Table 1 (raw values, as its code printed
them) and from CCExpert's LEVIR-CC table (given x100 there, stored raw here).
"""

import logging
import math
from pathlib import Path

import matplotlib


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the headless backend

from dataset_builder.atomic import atomic_path, write_text
from trainer.evaluation.metric_sets import LEVIRCC_KEYS


logger = logging.getLogger(__name__)

#: GeoLLaVA Table 1 (README): ROUGE-1, ROUGE-2, ROUGE-L, "BLEU" (sentence BLEU-2), "BERT" (SBERT cosine).
PAPER_KEYS = ("rouge1", "rouge2", "rougeL", "sentence_bleu2", "sbert_cosine")
PAPER_TABLE1: dict[str, tuple[float, float, float, float, float]] = {
    "Video-LLaVA base": (0.211, 0.041, 0.122, 0.039, 0.456),
    "Video-LLaVA 10K LoRA": (0.563, 0.214, 0.313, 0.243, 0.849),
    "Video-LLaVA 100K LoRA": (0.576, 0.226, 0.325, 0.250, 0.863),
    "Video-LLaVA 10K QLoRA": (0.565, 0.212, 0.310, 0.243, 0.845),
    "Video-LLaVA 100K QLoRA": (0.571, 0.220, 0.316, 0.250, 0.854),
    "Video-LLaVA 10K Prune 5%": (0.031, 0.007, 0.024, 0.010, 0.265),
    "Video-LLaVA 100K Prune 5%": (0.125, 0.034, 0.110, 0.043, 0.359),
    "LLaVA-NeXT base": (0.197, 0.037, 0.113, 0.042, 0.404),
    "LLaVA-NeXT 10K LoRA": (0.554, 0.198, 0.300, 0.232, 0.856),
    "LLaVA-NeXT 100K LoRA": (0.562, 0.199, 0.300, 0.239, 0.864),
    "LLaVA-NeXT 10K QLoRA": (0.543, 0.193, 0.283, 0.213, 0.836),
    "LLaVA-NeXT 100K QLoRA": (0.561, 0.202, 0.302, 0.229, 0.858),
    "LLaVA-NeXT 10K Prune 5%": (0.532, 0.178, 0.278, 0.209, 0.829),
    "LLaVA-NeXT 100K Prune 5%": (0.541, 0.183, 0.284, 0.210, 0.840),
    "Final model (100K LoRA)": (0.556, 0.202, 0.290, 0.227, 0.850),
}
#: Rows drawn in the comparison plot (all rows are in the report's table).
PLOT_ROWS = ("Video-LLaVA base", "Video-LLaVA 100K LoRA", "LLaVA-NeXT 100K QLoRA", "LLaVA-NeXT 10K Prune 5%")
#: CCExpert-7B on LEVIR-CC (its table gives these x100).
CCEXPERT_7B = {"bleu4": 0.6549, "meteor": 0.4182, "rougeL_coco": 0.7655, "cider_d": 1.4332, "s_m": 0.8180}

PLOTS = {
    "paper": "metrics_vs_paper.png",
    "levircc": "levircc_vs_ccexpert.png",
    "category": "rougeL_per_category.png",
    "lengths": "prediction_lengths.png",
}


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.3f}"


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def plot_vs_paper(metrics: dict, path: Path) -> Path:
    """Grouped bars: this run's five GeoLLaVA metrics next to a few Table 1 rows."""
    labels = ["R-1", "R-2", "R-L", "BLEU (sent. BLEU-2)", "BERT (SBERT cos.)"]
    series = {"this run": [metrics.get(k, float("nan")) for k in PAPER_KEYS]}
    series.update({row: list(PAPER_TABLE1[row]) for row in PLOT_ROWS})
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        xs = [x + i * width for x in range(len(labels))]
        ax.bar(xs, [0 if v is None or not math.isfinite(v) else v for v in values], width, label=name)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(labels))], labels)
    ax.set_ylim(0, 1)
    ax.set_ylabel("score (raw)")
    ax.set_title("GeoLLaVA metrics: this run vs the paper's Table 1")
    ax.legend(fontsize=8, ncol=2)
    return _save(fig, path)


def plot_levircc(metrics: dict, path: Path) -> Path:
    """Bars (x100, as LEVIR-CC papers print them): this run vs CCExpert-7B."""
    keys = ["bleu4", "meteor", "rougeL_coco", "cider_d", "s_m"]
    fig, ax = plt.subplots(figsize=(8, 4))
    xs = range(len(keys))
    ours = [100 * metrics[k] if k in metrics else 0 for k in keys]
    ax.bar([x - 0.2 for x in xs], ours, 0.4, label="this run")
    ax.bar([x + 0.2 for x in xs], [100 * CCEXPERT_7B[k] for k in keys], 0.4, label="CCExpert-7B (LEVIR-CC)")
    ax.set_xticks(list(xs), ["BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D", "S*m"])
    ax.set_ylabel("x100")
    ax.set_title("LEVIR-CC metrics (pycocoevalcap)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_per_category(metrics: dict, path: Path) -> Path:
    """Horizontal bars of ROUGE-L per category, with the row count of each."""
    per = metrics.get("per_category") or {}
    items = sorted(per.items(), key=lambda kv: kv[1]["rougeL"] if kv[1]["rougeL"] is not None else 0)
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.28 * len(items) + 1)))
    if items:
        ax.barh([f"{c} (n={v['n']})" for c, v in items], [v["rougeL"] or 0 for _, v in items])
    else:
        ax.text(0.5, 0.5, "no 'category' in the predictions", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlim(0, 1)
    ax.set_xlabel("ROUGE-L (F, stemmed)")
    ax.set_title("ROUGE-L per category")
    return _save(fig, path)


def plot_lengths(records: list[dict], path: Path) -> Path:
    """Histogram of prediction lengths (words) against the first reference's."""
    preds = [len(r.get("prediction", "").split()) for r in records]
    refs = [len(r["references"][0].split()) for r in records if r.get("references")]
    fig, ax = plt.subplots(figsize=(7, 4))
    top = max([*preds, *refs, 1])
    bins = range(0, top + 2, max(1, (top + 1) // 30))
    ax.hist(refs, bins=bins, alpha=0.5, label="reference")
    ax.hist(preds, bins=bins, alpha=0.5, label="prediction")
    ax.set_xlabel("length (whitespace words)")
    ax.set_ylabel("rows")
    ax.set_title("Prediction and reference lengths")
    ax.legend()
    return _save(fig, path)


def render_markdown(metrics: dict, records: list[dict], plots: dict[str, str]) -> str:
    """The text of ``report.md``."""
    run = metrics.get("run", {})
    unavailable = metrics.get("unavailable", {})
    lines = ["# Evaluation report", ""]
    if run:
        lines += [
            f"- model: `{run.get('model')}`, adapter: `{run.get('adapter') or 'none (base model)'}`",
            f"- data: `{run.get('dataset')}` config `{run.get('config') or 'default'}`, split `{run.get('split')}`",
            f"- decoding: {run.get('decoding')}, max_new_tokens {run.get('max_new_tokens')}, batch size "
            f"{run.get('batch_size')} (left padding); {run.get('rows_per_s') or '—'} rows/s",
        ]
    lines += [
        f"- rows scored: {metrics.get('n_rows')}, skipped: {metrics.get('n_skipped', 0)}, empty predictions: "
        f"{metrics.get('empty_predictions', 0)} (scored as they are, not dropped)",
        "",
        "## GeoLLaVA metrics (macro mean over rows, as the paper's code)",
        "",
        "| row | ROUGE-1 | ROUGE-2 | ROUGE-L | BLEU (sentence BLEU-2) | BERT (SBERT cosine) |",
        "|---|---|---|---|---|---|",
        "| **this run** | " + " | ".join(_fmt(metrics.get(k)) for k in PAPER_KEYS) + " |",
    ]
    lines += [f"| {row} | " + " | ".join(_fmt(v) for v in values) + " |" for row, values in PAPER_TABLE1.items()]
    models = metrics.get("models", {})
    lines += [
        "",
        f"- BERTScore F1 (real BERTScore, not in the paper): {_fmt(metrics.get('bertscore_f1'))}"
        + (f" — {models['bertscore_f1']['detail']}" if "bertscore_f1" in models else ""),
        f"- SBERT model: {models['sbert_cosine']['detail']}" if "sbert_cosine" in models else "- SBERT: not computed",
        f"- corpus sacreBLEU (13a, for reference): {_fmt(metrics.get('sacrebleu'))}",
        "",
        "## LEVIR-CC metrics (pycocoevalcap, whole set in one call; x100 as LEVIR-CC papers print them)",
        "",
        "| row | BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | METEOR | ROUGE-L | CIDEr-D | S*m |",
        "|---|---|---|---|---|---|---|---|---|",
        "| **this run** | "
        + " | ".join(f"{100 * metrics[k]:.2f}" if k in metrics else "—" for k in LEVIRCC_KEYS)
        + " |",
        "| CCExpert-7B (LEVIR-CC) | — | — | — | "
        + " | ".join(f"{100 * CCEXPERT_7B[k]:.2f}" for k in ("bleu4", "meteor", "rougeL_coco", "cider_d", "s_m"))
        + " |",
        "",
        f"- tokenization: {models.get('levircc', {}).get('tokenizer', '—')}",
    ]
    per_category = metrics.get("per_category") or {}
    if per_category:
        lines += ["", "## ROUGE-L per category", "", "| category | rows | ROUGE-L |", "|---|---|---|"]
        lines += [f"| {c} | {v['n']} | {_fmt(v['rougeL'])} |" for c, v in per_category.items()]
    if "grounding_f1" in metrics:
        lines += [
            "",
            "## Grounding (does the caption name the true kinds of change?)",
            "",
            f"Micro-averaged over {metrics['grounding_rows']} rows: precision {_fmt(metrics['grounding_precision'])}, "
            f"recall {_fmt(metrics['grounding_recall'])}, F1 {_fmt(metrics['grounding_f1'])}; macro F1 "
            f"{_fmt(metrics.get('grounding_f1_macro'))}; exact kind set {_fmt(metrics.get('grounding_exact_match'))}.",
            "",
            "| kind | TP | FP | FN | precision | recall | F1 |",
            "|---|---|---|---|---|---|---|",
        ]
        for kind, c in metrics.get("grounding_per_kind", {}).items():
            lines.append(
                f"| {kind} | {c['tp']} | {c['fp']} | {c['fn']} | {_fmt(c['precision'])} | {_fmt(c['recall'])} "
                f"| {_fmt(c['f1'])} |"
            )
    if "temporal_f1" in metrics:
        counts, truth = metrics.get("temporal_counts", {}), metrics.get("temporal_truth", {})
        majority = metrics.get("temporal_majority") or {}
        lines += [
            "",
            "## Temporal grounding (sequences: is each change named with an interval that holds it?)",
            "",
            f"Micro-averaged over {metrics['temporal_rows']} sequence rows ({truth.get('changes', 0)} with true "
            f"changes, {truth.get('annotation', 0)} from a dated reference): precision "
            f"{_fmt(metrics['temporal_precision'])}, recall {_fmt(metrics['temporal_recall'])}, F1 "
            f"{_fmt(metrics['temporal_f1'])} (TP {counts.get('tp')}, FP {counts.get('fp')}, FN {counts.get('fn')}).",
        ]
        if majority:
            answer = ", ".join(f"{k} in interval {majority['gaps'][k] + 1}" for k in majority["kinds"]) or "no change"
            lines.append(
                f"Majority answer (no image, the prompt's dates): {answer}: temporal F1 "
                f"{_fmt(majority['temporal_f1'])}, grounding F1 {_fmt(majority.get('grounding_f1'))}."
            )
    if unavailable:
        lines += ["", "## Not computed", ""] + [f"- `{k}`: {why}" for k, why in unavailable.items()]
    if metrics.get("skipped"):
        lines += ["", "## Skipped rows", ""]
        lines += [f"- {s.get('id')!r} (line {s.get('line', '—')}): {s['reason']}" for s in metrics["skipped"][:50]]
        if len(metrics["skipped"]) > 50:
            lines.append(f"- ... and {len(metrics['skipped']) - 50} more (see metrics.json)")
    lines += ["", "## Plots", ""] + [f"![{name}]({file})" for name, file in plots.items()]
    lines += ["", "## Examples", ""]
    for r in records[:5]:
        lines += [f"**{r['id']}** — {r.get('prompt', '')}", "", f"- prediction: {r.get('prediction', '')!r}"]
        lines += [f"- reference: {r['references'][0]!r}", ""]
    lib = metrics.get("libraries", {})
    lines += ["## Libraries", "", ", ".join(f"{k} {v}" for k, v in lib.items()), ""]
    return "\n".join(lines)


def write_report(out_dir: str | Path, metrics: dict, records: list[dict]) -> list[Path]:
    """Write ``report.md`` and the PNG plots into ``out_dir``.

    Args:
        out_dir: Output folder (exists).
        metrics: The metrics dict (``metrics.json``).
        records: The prediction records (``predictions.jsonl`` rows) of the scored selection.

    Returns:
        The paths written.
    """
    out = Path(out_dir)
    written = [
        plot_vs_paper(metrics, out / PLOTS["paper"]),
        plot_levircc(metrics, out / PLOTS["levircc"]),
        plot_per_category(metrics, out / PLOTS["category"]),
        plot_lengths(records, out / PLOTS["lengths"]),
    ]
    text = render_markdown(metrics, records, {name: path.name for name, path in zip(PLOTS, written, strict=True)})
    write_text(out / "report.md", text)
    written.append(out / "report.md")
    logger.info("report and %d plots in %s", len(written) - 1, out)
    return written
