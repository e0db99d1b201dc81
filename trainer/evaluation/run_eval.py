"""Generate for a test split, score it, and write a report with plots: ``geollava-eval``.

    geollava-eval --model outputs/quickstart/base --adapter outputs/quickstart/adapter \
        --dataset outputs/quickstart/dataset --split test --out outputs/eval

Loads the base (optionally 4-bit) + adapter + pruning masks on ``--device`` (``auto``: the first CUDA device in bf16
when there is one, else the CPU), generates for every row in left-padded batches (greedy,
the training prompt format), appends to ``DIR/predictions.jsonl`` batch by batch (a rerun skips the rows already
there), then writes ``metrics.json`` (``geollava-score``'s keys plus the run settings), ``report.md`` and PNG plots.
"""

import json
import logging
import sys
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from datasets import load_dataset
from tqdm.auto import tqdm
from transformers import HfArgumentParser

from dataset_builder.atomic import write_lines
from dataset_builder.prompts import strip_visual_placeholder
from trainer.evaluation.generation import generate_batch
from trainer.evaluation.metric_sets import EncoderOptions
from trainer.evaluation.report import write_report
from trainer.evaluation.score import collect_rows, score_rows, summary_lines, write_json_atomic
from trainer.models.device import DEVICE_CHOICES, model_device, resolve_device, resolve_dtype
from trainer.models.loading import load_for_inference


logger = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.jsonl"
METRICS_FILE = "metrics.json"
#: What produced predictions.jsonl; a resumed run must match it, or it would mix two models' outputs.
GENERATION_FILE = "generation_config.json"
GENERATION_KEYS = ("model", "adapter", "dataset", "config", "split")  # what was captioned
GENERATION_KEYS += ("max_new_tokens", "load_in_4bit", "dtype", "do_sample", "num_beams")  # and how


@dataclass
class EvalConfig:
    """Options of ``geollava-eval``."""

    model: str = field(metadata={"help": "Base model folder or Hub id."})
    dataset: str = field(metadata={"help": "Dataset folder or Hub repo id (Hub layout, CONTRACTS.md §2)."})
    out: str = field(metadata={"help": "Output folder: predictions.jsonl, metrics.json, report.md, plots."})
    adapter: str | None = field(default=None, metadata={"help": "Adapter folder or Hub repo id (none: base model)."})
    config: str | None = field(
        default=None, metadata={"help": "Dataset config name (e.g. 'default', 'sequences', 'levircc')."}
    )
    split: str = field(default="test", metadata={"help": "Dataset split."})
    limit: int | None = field(default=None, metadata={"help": "Evaluate only the first N rows of the split."})
    batch_size: int = field(default=8, metadata={"help": "Rows per generation batch (left padding)."})
    max_new_tokens: int = field(default=256, metadata={"help": "Generation budget per row."})
    load_in_4bit: bool = field(default=False, metadata={"help": "Quantize the (masked) base to NF4."})
    dtype: str | None = field(
        default=None, metadata={"help": "Model dtype, e.g. 'float32' (default: bf16 on CUDA, the checkpoint's on CPU)"}
    )
    device: str = field(
        default="auto", metadata={"help": f"Where the model runs: {DEVICE_CHOICES} (auto: CUDA when available)."}
    )
    do_sample: bool = field(default=False, metadata={"help": "Sample instead of greedy decoding."})
    num_beams: int = field(
        default=1,
        metadata={
            "help": "Beam search with this many beams (1: greedy, as the GeoLLaVA paper's evaluation; change "
            "captioning on LEVIR-CC commonly reports beam size 3)."
        },
    )
    resume: bool = field(default=True, metadata={"help": "Skip rows already in predictions.jsonl."})
    meteor: bool = field(default=True, metadata={"help": "Run METEOR (needs Java)."})
    model_metrics: bool = field(default=True, metadata={"help": "Compute sbert_cosine and bertscore_f1."})

    def __post_init__(self):
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {self.limit}")
        if self.batch_size < 1:
            raise ValueError(f"--batch_size must be >= 1, got {self.batch_size}")
        if self.max_new_tokens < 1:
            raise ValueError(f"--max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.num_beams < 1:
            raise ValueError(f"--num_beams must be >= 1, got {self.num_beams}")
        resolve_dtype(self.dtype, resolve_device(self.device))  # a bad --device or --dtype fails here, before loading

    @property
    def decoding(self) -> str:
        """How the predictions are decoded, in words (written into ``metrics.json``)."""
        if self.num_beams == 1:
            return "sampling" if self.do_sample else "greedy"
        return f"beam search ({self.num_beams} beams{', sampling' if self.do_sample else ''})"


def row_question_and_references(row: dict) -> tuple[str, list[str]]:
    """The question (human turn without ``<video>``) and the reference caption(s) of a pair or sequence row.

    References are the row's ``references`` (LEVIR-CC: 5 captions) when present and non-empty, else the gpt turn.
    lmms-eval scores rows without their images, so this is apart from :func:`row_prompt_and_references`.

    Raises:
        ValueError: Naming the field that is missing or malformed.
    """
    conversations = row.get("conversations")
    if not conversations or len(conversations) < 2:
        raise ValueError(f"'conversations' must hold a human and a gpt turn, got {conversations!r}")
    human, gpt = conversations[0], conversations[1]
    if human.get("from") != "human" or gpt.get("from") != "gpt":
        raise ValueError(f"'conversations' must be human then gpt, got {human.get('from')!r}, {gpt.get('from')!r}")
    question = strip_visual_placeholder(human.get("value") or "")
    if not question:
        raise ValueError("the human turn has no question text")
    references = [r for r in (row.get("references") or []) if r and r.strip()]
    if not references:
        if not (gpt.get("value") or "").strip():
            raise ValueError("no reference: the gpt turn is empty and there is no 'references'")
        references = [gpt["value"]]
    return question, references


def row_prompt_and_references(row: dict) -> tuple[str, list[str]]:
    """The question and reference caption(s) of a row to generate for: :func:`row_question_and_references`, its frames.

    Raises:
        ValueError: Naming the field that is missing or malformed.
    """
    question, references = row_question_and_references(row)
    frames, timestamps = row.get("frames"), row.get("timestamps")  # a sequences row dates its N frames
    if not frames or len(frames) != (2 if timestamps is None else len(timestamps)):
        what = "2 images" if timestamps is None else f"one image per timestamp ({len(timestamps)})"
        raise ValueError(f"'frames' must hold {what}, got {0 if not frames else len(frames)}")
    return question, references


def read_predictions(path: Path) -> list[dict]:
    """Records already in ``predictions.jsonl``; a torn last line (interrupted run) is dropped and the file fixed."""
    if not path.exists():
        return []
    records, bad = [], 0
    lines = path.read_text(encoding="utf-8").splitlines()
    for line in lines:
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            bad += 1
    if bad:
        logger.warning("%s: dropped %d unreadable line(s) left by an interrupted run", path, bad)
        write_lines(path, [json.dumps(r, ensure_ascii=False) for r in records])
    return records


def check_same_generation(out: Path, config: EvalConfig, resuming: bool) -> None:
    """Record the generation settings in ``OUT/generation_config.json``, or check a resumed run uses the same ones.

    Raises:
        ValueError: Naming the settings that differ from those that wrote the existing ``predictions.jsonl``.
    """
    settings = {key: getattr(config, key) for key in GENERATION_KEYS}
    record = out / GENERATION_FILE
    if resuming and record.exists():
        # A record written before a setting existed was written with that setting's default.
        defaults = {f.name: f.default for f in fields(EvalConfig) if f.default is not MISSING}
        before = {**defaults, **json.loads(record.read_text(encoding="utf-8"))}
        changed = {k: (before.get(k), v) for k, v in settings.items() if before.get(k) != v}
        if changed:
            diff = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
            raise ValueError(
                f"{out / PREDICTIONS_FILE} was generated with other settings ({diff}); "
                "use another --out, or --resume false to start over"
            )
        return
    write_json_atomic(settings, record)


def generate_predictions(model, processor, family, dataset, path: Path, config: EvalConfig, done: set[str]) -> dict:
    """Generate for the rows of ``dataset`` not in ``done``, appending one JSON line per row to ``path``.

    Returns:
        ``{"generated", "skipped": [{"id", "reason"}], "seconds", "rows_per_s"}``.
    """
    todo = [i for i, row_id in enumerate(dataset["id"]) if str(row_id) not in done]
    skipped: list[dict] = []
    generated = 0
    has_changes = "changes" in dataset.column_names
    start = time.perf_counter()
    with open(path, "a", encoding="utf-8") as sink, tqdm(total=len(todo), unit="row", desc="generating") as bar:
        for begin in range(0, len(todo), config.batch_size):
            batch = dataset.select(todo[begin : begin + config.batch_size])
            records, questions, frames, dates = [], [], [], []
            for row in batch:
                try:
                    question, references = row_prompt_and_references(row)
                except ValueError as err:
                    logger.warning("row %r: skipped: %s", row.get("id"), err)
                    skipped.append({"id": row.get("id"), "reason": str(err)})
                    continue
                record = {"id": str(row["id"]), "prompt": question, "references": references}
                if row.get("category") is not None:
                    record["category"] = row["category"]
                if has_changes and row.get("changes") is not None:
                    record["changes"] = row["changes"]
                if row.get("timestamps") is not None:
                    record["timestamps"] = row["timestamps"]
                records.append(record)
                questions.append(question)
                frames.append(row["frames"])
                dates.append(row.get("timestamps"))
            texts = generate_batch(
                model,
                processor,
                family,
                questions,
                frames,
                max_new_tokens=config.max_new_tokens,
                do_sample=config.do_sample,
                num_beams=config.num_beams,
                dates=dates,
            )
            for record, text in zip(records, texts, strict=True):
                record["prediction"] = text
                sink.write(json.dumps(record, ensure_ascii=False) + "\n")
            sink.flush()
            generated += len(records)
            bar.update(len(batch))
    seconds = time.perf_counter() - start
    return {
        "generated": generated,
        "skipped": skipped,
        "seconds": round(seconds, 3),
        "rows_per_s": round(generated / seconds, 3) if generated and seconds > 0 else None,
    }


def run_eval(config: EvalConfig) -> dict:
    """The whole ``geollava-eval`` run; returns the metrics dict (also written to ``OUT/metrics.json``).

    Raises:
        ValueError: If the split is empty or no prediction can be scored.
    """
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset(config.dataset, config.config, split=config.split)
    if config.limit is not None:
        dataset = dataset.select(range(min(config.limit, len(dataset))))
    if len(dataset) == 0:
        raise ValueError(f"{config.dataset} ({config.config}, {config.split}) has no rows")
    wanted = {str(i) for i in dataset["id"]}

    path = out / PREDICTIONS_FILE
    if not config.resume and path.exists():
        path.unlink()
    check_same_generation(out, config, path.exists())
    done = {str(r.get("id")) for r in read_predictions(path)}
    reused = len(done & wanted)
    generation = {"generated": 0, "skipped": [], "seconds": 0.0, "rows_per_s": None}
    generation_device = None
    if wanted - done:
        model, processor, family = load_for_inference(
            config.model, config.adapter, load_in_4bit=config.load_in_4bit, dtype=config.dtype, device=config.device
        )
        generation_device = str(model_device(model))
        generation = generate_predictions(model, processor, family, dataset, path, config, done)
        del model
    logger.info("%d rows generated, %d reused from %s", generation["generated"], reused, path)

    rows, skipped, n_empty = collect_rows(path)
    rows = [r for r in rows if r.id in wanted]
    if not rows:
        raise ValueError(f"no prediction can be scored in {path}")
    options = EncoderOptions(device=config.device)  # the metric encoders run where the model ran
    metrics = score_rows(rows, meteor=config.meteor, model_metrics=config.model_metrics, options=options)
    metrics["empty_predictions"] = sum(not r.prediction.strip() for r in rows)
    metrics["skipped"] = [*generation["skipped"], *[s for s in skipped if s.get("id") in wanted]]
    metrics["n_skipped"] = len(metrics["skipped"])
    metrics["run"] = {
        **asdict(config),
        "rows_in_split_selection": len(dataset),
        "rows_generated": generation["generated"],
        "rows_reused": reused,
        "generation_seconds": generation["seconds"],
        "rows_per_s": generation["rows_per_s"],
        "decoding": config.decoding,
        "padding_side": "left",
        "generation_device": generation_device,
    }
    write_json_atomic(metrics, out / METRICS_FILE)
    records = [r for r in read_predictions(path) if str(r.get("id")) in wanted]
    write_report(out, metrics, records)
    return metrics


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``geollava-eval``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        (config,) = HfArgumentParser(EvalConfig).parse_args_into_dataclasses(args=argv)
    except ValueError as err:
        print(f"geollava-eval: error: {err}", file=sys.stderr)
        return 2
    try:
        metrics = run_eval(config)
    except (OSError, ValueError) as err:  # unloadable model/adapter/dataset, empty split, nothing to score
        print(f"geollava-eval: error: {err}", file=sys.stderr)
        return 1
    print("\n".join(summary_lines(metrics)))
    print(f"-> {Path(config.out) / METRICS_FILE}, report.md and plots in {config.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
