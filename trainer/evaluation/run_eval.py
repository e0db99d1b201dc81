"""Generate for a test split, score it, and write a report with plots: ``geollava-eval``.

    geollava-eval --model outputs/quickstart/base --adapter outputs/quickstart/adapter \
        --dataset outputs/quickstart/dataset --split test --out outputs/eval

Generates in-process (base + adapter + masks, left-padded batches) or, with ``--server URL``, through an
OpenAI-compatible server; appends to ``OUT/predictions.jsonl`` (a rerun skips the rows there); under
``accelerate launch --num_processes N`` each rank captions its share and the main process merges and scores once.
Then ``metrics.json``, ``report.md`` and PNG plots. See docs/evaluation.md.
"""

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from datasets import load_dataset
from tqdm.auto import tqdm
from transformers import AutoConfig, HfArgumentParser

from dataset_builder.atomic import write_lines
from dataset_builder.prompts import strip_visual_placeholder
from trainer.evaluation.generation import generate_batch
from trainer.evaluation.metric_sets import EncoderOptions
from trainer.evaluation.report import write_report
from trainer.evaluation.score import collect_rows, score_rows, summary_lines, write_json_atomic
from trainer.evaluation.server_backend import ServerConfig, chat_request, resolve_served_model, run_requests
from trainer.models.device import DEVICE_CHOICES, model_device, resolve_device, resolve_dtype
from trainer.models.families import family_of
from trainer.models.loading import load_for_inference


logger = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.jsonl"
METRICS_FILE = "metrics.json"
#: What produced predictions.jsonl; a resumed run must match it, or it would mix two models' outputs.
GENERATION_FILE = "generation_config.json"
GENERATION_KEYS = ("model", "adapter", "dataset", "config", "split")  # what was captioned
GENERATION_KEYS += ("max_new_tokens", "load_in_4bit", "dtype", "do_sample", "num_beams")  # and how
#: Which served model captioned them (absent or None: the model loaded in-process).
SERVED_KEY = "served_model"
#: Each rank's part of predictions.jsonl under data-parallel evaluation, merged by the main process.
PART_PATTERN = "predictions.part-*.jsonl"


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


def check_same_generation(
    out: Path, config: EvalConfig, resuming: bool, served_model: str | None = None, write: bool = True
) -> None:
    """Record the generation settings in ``OUT/generation_config.json``, or check a resumed run uses the same ones.

    Args:
        out: The output folder.
        config: The run's options.
        resuming: Whether predictions from an earlier run are there.
        served_model: The served model's name with ``--server`` (``None``: in-process).
        write: Write the record (only the main process does under data-parallel evaluation).

    Raises:
        ValueError: Naming the settings that differ from those that wrote the existing ``predictions.jsonl``.
    """
    settings = {key: getattr(config, key) for key in GENERATION_KEYS} | {SERVED_KEY: served_model}
    record = out / GENERATION_FILE
    if resuming and record.exists():
        # A record written before a setting existed was written with that setting's default.
        defaults = {f.name: f.default for f in fields(EvalConfig) if f.default is not MISSING} | {SERVED_KEY: None}
        before = {**defaults, **json.loads(record.read_text(encoding="utf-8"))}
        changed = {k: (before.get(k), v) for k, v in settings.items() if before.get(k) != v}
        if changed:
            diff = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
            raise ValueError(
                f"{out / PREDICTIONS_FILE} was generated with other settings ({diff}); "
                "use another --out, or --resume false to start over"
            )
        return
    if write:
        write_json_atomic(settings, record)


def prediction_record(row: dict, has_changes: bool) -> tuple[dict, str]:
    """The record a row's prediction is written with (without ``prediction``) and its question.

    Raises:
        ValueError: As :func:`row_prompt_and_references`, for a row that cannot be captioned.
    """
    question, references = row_prompt_and_references(row)
    record = {"id": str(row["id"]), "prompt": question, "references": references}
    if row.get("category") is not None:
        record["category"] = row["category"]
    if has_changes and row.get("changes") is not None:
        record["changes"] = row["changes"]
    if row.get("timestamps") is not None:
        record["timestamps"] = row["timestamps"]
    return record, question


def generate_predictions(
    model, processor, family, dataset, path: Path, config: EvalConfig, done: set[str], rows: list[int] | None = None
) -> dict:
    """Generate for the rows of ``dataset`` not in ``done``, appending one JSON line per row to ``path``.

    Args:
        model: The loaded model.
        processor: Its processor.
        family: Its family.
        dataset: The split selection.
        path: The JSON lines file to append to.
        config: The run's options (batch size, budget, decoding).
        done: Ids already captioned.
        rows: Only these row indices (a rank's share); ``None``: all of them.

    Returns:
        ``{"generated", "skipped": [{"id", "reason"}], "seconds", "rows_per_s"}``.
    """
    todo = [i for i, row_id in enumerate(dataset["id"]) if str(row_id) not in done]
    if rows is not None:
        share = set(rows)
        todo = [i for i in todo if i in share]
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
                    record, question = prediction_record(row, has_changes)
                except ValueError as err:
                    logger.warning("row %r: skipped: %s", row.get("id"), err)
                    skipped.append({"id": row.get("id"), "reason": str(err)})
                    continue
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


class RowsLeft(RuntimeError):
    """Rows the server did not caption (it failed on them or stopped answering); a rerun captions them."""

    def __init__(self, failed: list[dict], path: Path):
        self.failed = failed
        shown = ", ".join(str(f["id"]) for f in failed[:20]) + (
            f" and {len(failed) - 20} more" if len(failed) > 20 else ""
        )
        reasons = sorted({f["reason"] for f in failed})[:3]
        super().__init__(
            f"{len(failed)} row(s) left without a prediction: {shown} ({'; '.join(reasons)}); "
            f"the others are in {path}: rerun the same command to caption only these"
        )


def generate_remote(
    family,
    served_model: str,
    dataset,
    path: Path,
    config: EvalConfig,
    server: ServerConfig,
    done: set[str],
    rows: list[int] | None = None,
) -> dict:
    """:func:`generate_predictions` through an OpenAI-compatible server: one chat completion per row.

    Rows are read and encoded in the sending workers (so only the requests in flight are in memory) and written in
    dataset order as their answers come back.

    Returns:
        As :func:`generate_predictions`, plus ``client_seconds_per_row``, ``server_seconds_per_row`` and
        ``retries_by_reason``.

    Raises:
        RowsLeft: Naming the rows the server failed on or was not asked for once it stopped answering.
    """
    todo = [i for i, row_id in enumerate(dataset["id"]) if str(row_id) not in done]
    if rows is not None:
        share = set(rows)
        todo = [i for i in todo if i in share]
    has_changes = "changes" in dataset.column_names
    records: dict[int, dict] = {}
    ids = dataset["id"]  # a row never built (not sent) is named without decoding its frames
    skipped, failed = [], []

    def build(position: int) -> Callable[[], dict]:
        def body() -> dict:
            row = dataset[todo[position]]
            try:
                record, question = prediction_record(row, has_changes)
            except ValueError as err:
                records[position] = {"id": row.get("id"), "skipped": str(err)}
                raise
            records[position] = record
            return chat_request(
                family,
                question,
                row["frames"],
                model=served_model,
                max_new_tokens=config.max_new_tokens,
                do_sample=config.do_sample,
                dates=row.get("timestamps"),
            )

        return body

    start = time.perf_counter()
    with open(path, "a", encoding="utf-8") as sink, tqdm(total=len(todo), unit="row", desc="asking the server") as bar:

        def write(result) -> None:
            record = records.pop(result.index, None) or {"id": ids[todo[result.index]]}
            if result.skipped is not None:
                logger.warning("row %r: skipped: %s", record["id"], result.skipped)
                skipped.append({"id": record["id"], "reason": result.skipped})
            elif result.error is not None:
                logger.error("row %r: no prediction: %s", record["id"], result.error)
                failed.append({"id": record["id"], "reason": result.error})
            else:
                sink.write(json.dumps(record | {"prediction": result.text}, ensure_ascii=False) + "\n")
                sink.flush()
            bar.update(1)

        stats = run_requests([build(k) for k in range(len(todo))], server, write)
    seconds = time.perf_counter() - start
    if failed:
        raise RowsLeft(failed, path)
    generated = len(todo) - len(skipped)
    return {
        "generated": generated,
        "skipped": skipped,
        "seconds": round(seconds, 3),
        "rows_per_s": round(generated / seconds, 3) if generated and seconds > 0 else None,
        "client_seconds_per_row": round(stats.client_seconds / max(1, stats.sent), 6),
        "server_seconds_per_row": round(stats.server_seconds / max(1, stats.sent), 6),
        "retries_by_reason": dict(stats.retries_by_reason),
    }


# ---------------------------------------------------------------------- data-parallel evaluation
@dataclass(frozen=True)
class Ranks:
    """This process's place under ``accelerate launch`` (one process: index 0 of 1).

    Attributes:
        index: This process's rank.
        count: How many processes evaluate together.
        local_index: Its rank on this machine (which GPU it takes).
        barrier: Waits until every process reaches it.
    """

    index: int = 0
    count: int = 1
    local_index: int = 0
    barrier: Callable[[], None] = lambda: None

    @property
    def is_main(self) -> bool:
        """Whether this process merges, scores and reports."""
        return self.index == 0


def process_ranks() -> Ranks:
    """The ranks ``accelerate launch``/``torchrun`` started (``WORLD_SIZE`` > 1), or one process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Ranks()
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())  # gloo on CPU-only machines, NCCL on GPUs
    return Ranks(state.process_index, state.num_processes, state.local_process_index, state.wait_for_everyone)


def rank_rows(todo: list[int], batch_size: int, ranks: Ranks) -> list[int]:
    """This rank's share of ``todo``: whole batches dealt round robin, so every batch is the one 1 process makes."""
    return [
        i
        for b in range(0, len(todo), batch_size)
        if (b // batch_size) % ranks.count == ranks.index
        for i in todo[b : b + batch_size]
    ]


def part_path(out: Path, ranks: Ranks) -> Path:
    """Where a rank appends its predictions: its part, or ``predictions.jsonl`` itself with one process."""
    if ranks.count == 1:
        return out / PREDICTIONS_FILE
    return out / PART_PATTERN.replace("*", f"{ranks.index:05d}-of-{ranks.count:05d}")


def merge_parts(out: Path, order: list[str]) -> None:
    """Merge the ranks' parts into ``predictions.jsonl``, in dataset order (``order``), and remove them.

    The lines are kept as written, so N processes give the same bytes as one. Ids outside ``order`` (another split
    selection) follow in the order they were written; an id twice keeps its first line.
    """
    parts = sorted(out.glob(PART_PATTERN))
    if not parts:
        return
    lines: dict[str, str] = {}
    for path in [out / PREDICTIONS_FILE, *parts]:
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    lines.setdefault(str(json.loads(line).get("id")), line)
    position = {row_id: k for k, row_id in enumerate(order)}
    ids = sorted(lines, key=lambda i: (i not in position, position.get(i, 0)))
    write_lines(out / PREDICTIONS_FILE, [lines[i] for i in ids])
    for path in parts:
        path.unlink()


def done_ids(out: Path) -> set[str]:
    """Ids already captioned: in ``predictions.jsonl`` and in any rank's part (a torn last line is dropped)."""
    return {
        str(r.get("id"))
        for path in [out / PREDICTIONS_FILE, *sorted(out.glob(PART_PATTERN))]
        for r in read_predictions(path)
    }


def run_eval(config: EvalConfig, server: ServerConfig | None = None) -> dict | None:
    """The whole ``geollava-eval`` run; returns the metrics dict (also written to ``OUT/metrics.json``).

    Under ``accelerate launch --num_processes N`` every process captions its share of the rows into its own part
    of ``predictions.jsonl`` and the main process merges the parts in dataset order and scores once; the other
    processes return ``None``.

    Args:
        config: The options.
        server: Where the model runs when it is served (``server.server`` set); ``None``: in-process.

    Raises:
        ValueError: If the split is empty, no prediction can be scored, or options do not go together.
        RowsLeft: If the server did not caption every row (the rest are kept: rerun to finish).
    """
    remote = server is not None and server.server is not None
    ranks = process_ranks()
    if remote:
        check_server_options(config, ranks)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset(config.dataset, config.config, split=config.split)
    if config.limit is not None:
        dataset = dataset.select(range(min(config.limit, len(dataset))))
    if len(dataset) == 0:
        raise ValueError(f"{config.dataset} ({config.config}, {config.split}) has no rows")
    order = [str(i) for i in dataset["id"]]
    wanted = set(order)
    served_model = resolve_served_model(server) if remote else None

    path = out / PREDICTIONS_FILE
    if not config.resume and ranks.is_main:
        for old in [path, *out.glob(PART_PATTERN)]:
            old.unlink(missing_ok=True)
    ranks.barrier()
    resuming = path.exists() or any(out.glob(PART_PATTERN))
    check_same_generation(out, config, resuming, served_model, write=ranks.is_main)
    if ranks.is_main:
        done = done_ids(out)  # the main process drops torn lines before the others read
    ranks.barrier()
    done = done_ids(out)
    reused = len(done & wanted)
    todo = [i for i, row_id in enumerate(order) if row_id not in done]
    share = rank_rows(todo, config.batch_size, ranks) if ranks.count > 1 else None
    generation = {"generated": 0, "skipped": [], "seconds": 0.0, "rows_per_s": None}
    generation_device = None
    start = time.perf_counter()
    if todo and (share is None or share):
        sink = part_path(out, ranks)
        if remote:
            family = family_of(AutoConfig.from_pretrained(config.model))
            generation = generate_remote(family, served_model, dataset, sink, config, server, done, share)
        else:
            device = config.device
            if ranks.count > 1 and device == "auto" and resolve_device("auto").type == "cuda":
                device = f"cuda:{ranks.local_index}"  # one GPU per rank
            model, processor, family = load_for_inference(
                config.model, config.adapter, load_in_4bit=config.load_in_4bit, dtype=config.dtype, device=device
            )
            generation_device = str(model_device(model))
            generation = generate_predictions(model, processor, family, dataset, sink, config, done, share)
            del model
    ranks.barrier()
    if not ranks.is_main:
        return None
    if ranks.count > 1:
        merge_parts(out, order)
        generation = _merged_generation(out, dataset, done, wanted, time.perf_counter() - start, generation)
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
        "processes": ranks.count,
    }
    if remote:
        metrics["run"] |= {
            "server": server.server,
            SERVED_KEY: served_model,
            "concurrency": server.concurrency,
            "padding_side": None,  # one request per row
            **{k: generation[k] for k in ("client_seconds_per_row", "server_seconds_per_row", "retries_by_reason")},
        }
    write_json_atomic(metrics, out / METRICS_FILE)
    records = [r for r in read_predictions(path) if str(r.get("id")) in wanted]
    write_report(out, metrics, records)
    return metrics


def _merged_generation(out: Path, dataset, done: set[str], wanted: set[str], seconds: float, mine: dict) -> dict:
    """The whole run's generation figures, once the parts are merged: rows new in the file, the slowest rank's time.

    Rows no rank captioned are the ones it skipped (each rank logged why); here their reasons are found again.
    """
    now = done_ids(out)
    generated = len((now - done) & wanted)
    has_changes = "changes" in dataset.column_names
    skipped = []
    for k, row_id in enumerate(dataset["id"]):
        if str(row_id) not in now:
            try:
                prediction_record(dataset[k], has_changes)
            except ValueError as err:
                skipped.append({"id": row_id, "reason": str(err)})
    merged = {
        "generated": generated,
        "skipped": skipped,
        "seconds": round(seconds, 3),
        "rows_per_s": round(generated / seconds, 3) if generated and seconds > 0 else None,
    }
    return mine | merged


def check_server_options(config: EvalConfig, ranks: Ranks) -> None:
    """Refuse the in-process options that mean nothing for a served model.

    Raises:
        ValueError: For ``--adapter``, ``--load_in_4bit`` or ``--num_beams`` > 1 with ``--server``, or several
            processes (the server batches the requests of one: raise ``--concurrency`` instead).
    """
    if ranks.count > 1:
        raise ValueError(f"--server under {ranks.count} processes: run one process and raise --concurrency")
    if config.adapter is not None:
        raise ValueError(
            "--adapter: a server serves one model; merge the adapter first (geollava-export) and serve that, or "
            "serve the adapter with vLLM's --lora-modules NAME=ADAPTER and pass --served_model NAME"
        )
    if config.load_in_4bit:
        raise ValueError("--load_in_4bit: the server quantizes (or not) the model it serves")
    if config.num_beams != 1:
        raise ValueError(f"--num_beams {config.num_beams}: chat completions have no beam search")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``geollava-eval``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        config, server = HfArgumentParser((EvalConfig, ServerConfig)).parse_args_into_dataclasses(args=argv)
    except ValueError as err:
        print(f"geollava-eval: error: {err}", file=sys.stderr)
        return 2
    try:
        metrics = run_eval(config, server)
    except RowsLeft as err:
        print(f"geollava-eval: error: {err}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as err:  # unloadable model/adapter/dataset, empty split, nothing to score
        print(f"geollava-eval: error: {err}", file=sys.stderr)
        return 1
    if metrics is None:  # not the main process of a data-parallel run: it prints the results
        return 0
    print("\n".join(summary_lines(metrics)))
    print(f"-> {Path(config.out) / METRICS_FILE}, report.md and plots in {config.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
