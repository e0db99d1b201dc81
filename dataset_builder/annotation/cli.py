"""``geollava-annotate``: fill or refresh the answers (gpt turns) of a built dataset folder, in place, with OpenAI.

    OPENAI_API_KEY=sk-... geollava-annotate outputs/geollava --max_cost_usd 25 --concurrency 16

The estimate is printed before anything is sent (``--dry_run`` stops there); each shard is rewritten atomically,
``sample_10k`` rows reuse the answers of the same pairs, ``sequences`` rows are asked with their N frames and dates,
and the folder's report, official JSON and card follow. See docs/annotation.md.
"""

import json
import logging
import sys
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from transformers import HfArgumentParser

from dataset_builder.annotation.base import AnnotationRequest
from dataset_builder.annotation.openai.annotator import OpenAIAnnotator
from dataset_builder.annotation.openai.config import OpenAIAnnotatorConfig
from dataset_builder.annotation.openai.cost import summary_line
from dataset_builder.atomic import atomic_path, write_json
from dataset_builder.card import write_dataset_card
from dataset_builder.official_json import export_official
from dataset_builder.sequences import MIN_VIEWS, SEQUENCES_CONFIG


logger = logging.getLogger(__name__)


@dataclass
class AnnotateArguments:
    """What ``geollava-annotate`` works on (the OpenAI options are ``OpenAIAnnotatorConfig``'s)."""

    dataset_dir: str = field(metadata={"help": "A folder written by geollava-build (README.md + data/*.parquet)."})
    overwrite: bool = field(
        default=False, metadata={"help": "Ask again for rows that already have an answer (default: only empty ones)."}
    )
    limit: int | None = field(default=None, metadata={"help": "Annotate at most this many pairs (a trial run)."})

    def __post_init__(self):
        data = Path(self.dataset_dir) / "data"
        if not data.is_dir() or not any(data.rglob("*.parquet")):
            raise ValueError(f"--dataset_dir {self.dataset_dir!r}: no data/*.parquet shards (not a built dataset)")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit {self.limit}: must be >= 1")

    @property
    def shards(self) -> list[Path]:
        """The default config's shards first, then the other configs' (``sample_10k`` reuses their answers)."""
        data = Path(self.dataset_dir) / "data"
        return sorted(data.glob("*.parquet")) + sorted(p for p in data.rglob("*.parquet") if p.parent != data)


def gpt_answer(conversations: list[dict] | None) -> str:
    """The gpt turn's text of a conversation (``""`` when there is none)."""
    for turn in reversed(conversations or []):
        if turn.get("from") == "gpt":
            return turn.get("value") or ""
    return ""


def with_answer(conversations: list[dict] | None, text: str) -> list[dict]:
    """A copy of a conversation whose (last) gpt turn says ``text``; one is appended when it has none."""
    turns = [dict(turn) for turn in conversations or []]
    for turn in reversed(turns):
        if turn.get("from") == "gpt":
            turn["value"] = text
            return turns
    return [*turns, {"from": "gpt", "value": text}]


#: Rows read from a shard at a time (frames included): what bounds the memory of reading, whatever the folder's size.
READ_BATCH_ROWS = 64
_COLUMNS = ["id", "frames", "conversations", "image1", "image2"]
_SEQUENCE_COLUMNS = ["id", "frames", "timestamps", "conversations"]


@dataclass
class _Pass:
    """One streamed pass over the folder: how many more pairs ``--limit`` allows, and the other configs' own rows."""

    remaining: int | None
    others: set[str] = field(default_factory=set)


class FolderRows:
    """The rows of a folder that need an answer, streamed shard by shard (nothing is held beyond a read batch).

    A row is *asked* (an annotation request) when it is in the default config, or in another config
    (``sample_10k``) with an id the default config does not have; it is *looked up* (its answer comes from the cache
    once its default-config twin is answered) otherwise. The first pass (:meth:`scan`) records the default config's
    ids in a set (about 12 MB at 100K ids); later passes reuse it. A ``sequences`` row is always asked, as the
    sequence request ``{split}/{id}`` with its frames and timestamps.

    Args:
        args: The folder and what to annotate.
    """

    def __init__(self, args: AnnotateArguments):
        self.args = args
        self.data = Path(args.dataset_dir) / "data"
        self.default_ids: set[str] = set()
        self._scanned = False

    def new_pass(self) -> _Pass:
        """A pass with the full ``--limit``."""
        return _Pass(self.args.limit)

    def rows(self, path: Path, state: _Pass) -> Iterator[tuple[bool, AnnotationRequest]]:
        """``(asked, request)`` for each row of one shard that needs an answer (see the class docstring)."""
        default = path.parent == self.data
        sequences = path.parent == self.data / SEQUENCES_CONFIG
        columns = _SEQUENCE_COLUMNS if sequences else _COLUMNS
        for batch in pq.ParquetFile(path).iter_batches(batch_size=READ_BATCH_ROWS, columns=columns):
            for row in batch.to_pylist():
                if not self.args.overwrite and gpt_answer(row["conversations"]).strip():
                    continue
                frames = row["frames"] or []
                expected = len(row["timestamps"] or []) if sequences else 2  # a sequence: a frame per timestamp
                short = sequences and expected < MIN_VIEWS
                if short or len(frames) != expected or not all(f and f.get("bytes") for f in frames):
                    logger.warning(
                        "%s: row %s has %d stored frame(s), expected %d: skipped",
                        path,
                        row["id"],
                        len(frames),
                        expected,
                    )
                    continue
                if sequences:
                    asked = True
                elif default:
                    if not self._scanned:
                        self.default_ids.add(row["id"])
                    asked = True
                else:
                    asked = row["id"] not in self.default_ids and row["id"] not in state.others
                    state.others.add(row["id"])
                if asked and state.remaining is not None:
                    if state.remaining == 0:
                        continue
                    state.remaining -= 1
                yield asked, _request(row, path)

    def asked(self, paths: list[Path], state: _Pass) -> Iterator[AnnotationRequest]:
        """The requests of some shards, in order."""
        for path in paths:
            yield from (request for asked, request in self.rows(path, state) if asked)

    def scan(self) -> Iterator[AnnotationRequest]:
        """The first pass: every request of the folder (and the default config's ids, recorded on the way)."""
        yield from self.asked(self.args.shards, self.new_pass())
        self._scanned = True


def _request(row: dict, path: Path) -> AnnotationRequest:
    frames = row["frames"]
    if "timestamps" in row:  # a sequences row: asked as its split's, the row ids of two splits may be alike
        return AnnotationRequest(
            id=f"{path.name.split('-')[0]}/{row['id']}",
            image_paths=(),
            frames_jpeg=tuple(frame["bytes"] for frame in frames),
            metadata={"shard": str(path)},
            timestamps=tuple(row["timestamps"]),
        )
    return AnnotationRequest(
        id=row["id"],
        image_paths=(Path(row["image1"] or ""), Path(row["image2"] or "")),
        frames_jpeg=(frames[0]["bytes"], frames[1]["bytes"]),
        metadata={"shard": str(path)},
    )


def row_answers(answers: dict[str, str]) -> dict[str, str]:
    """Answers by request id (a pair id, or a sequence's ``{split}/{id}``) as answers by the shard's row id."""
    return {request_id.rpartition("/")[2]: text for request_id, text in answers.items()}


def rewrite_shard(path: Path, answers: dict[str, str]) -> int:
    """Rewrite one shard with new gpt turns, atomically (temp name + fsync + rename), one row group at a time.

    The schema (with its ``datasets`` features) and the row groups are kept as they are.

    Args:
        path: The Parquet shard.
        answers: New answer per pair id.

    Returns:
        Rows changed (0: the file is left untouched).
    """
    pf = pq.ParquetFile(path)
    if not any(pair_id in answers for pair_id in pf.read(columns=["id"]).column(0).to_pylist()):
        return 0
    index = pf.schema_arrow.get_field_index("conversations")
    column_field = pf.schema_arrow.field(index)
    changed = 0
    with atomic_path(path, fsync=True) as tmp, pq.ParquetWriter(tmp, pf.schema_arrow) as writer:
        for i in range(pf.metadata.num_row_groups):
            group = pf.read_row_group(i)
            conversations = group.column(index).to_pylist()
            for j, pair_id in enumerate(group.column("id").to_pylist()):
                if pair_id in answers:
                    conversations[j] = with_answer(conversations[j], answers[pair_id])
                    changed += 1
            group = group.set_column(index, column_field, pa.array(conversations, type=column_field.type))
            writer.write_table(group, row_group_size=group.num_rows)
    return changed


def _update_folder(dataset_dir: Path, annotator, problems: dict[str, list]) -> None:
    """Bring build_report.json, geollava_json/ and the card in line with the new answers."""
    report_path = dataset_dir / "build_report.json"
    if report_path.exists():
        report = json.loads(report_path.read_text(encoding="utf-8"))
        report["annotation"] = {
            "annotator": annotator.name,
            "model": annotator.model,
            "prompt": annotator.prompt,
            "not_annotated": problems,
            "report": "annotation_report.json",
        }
        write_json(report_path, report, indent=2, ensure_ascii=False)
    if (dataset_dir / "geollava_json").is_dir():
        export_official(dataset_dir, dataset_dir, videos=(dataset_dir / "videos").is_dir())
    if report_path.exists():
        write_dataset_card(dataset_dir)
    else:
        logger.warning("%s: no build_report.json (not a geollava-build folder): README.md left as it was", dataset_dir)


def _lookup_answers(annotator: OpenAIAnnotator, requests: Iterable[AnnotationRequest], answers: dict) -> None:
    """Add the cached ``ok`` answers of ``requests`` to ``answers`` (nothing is sent or counted)."""
    for request in requests:
        result = annotator.lookup(request)
        if result is not None and result.status == "ok" and result.text:
            answers[request.id] = result.text


def _note(result, answers: dict, problems: dict) -> None:
    if result.status == "ok" and result.text:
        answers[result.id] = result.text
    else:
        problems[result.status].append({"id": result.id, "reason": result.reason})


def _annotate_by_shard(folder: FolderRows, annotator: OpenAIAnnotator, problems: dict) -> None:
    """Chat Completions: each shard's rows are sent, answered and written before the next shard is read."""
    state = folder.new_pass()
    for path in folder.args.shards:
        answers: dict[str, str] = {}

        def asked(path: Path = path, answers: dict = answers) -> Iterator[AnnotationRequest]:
            for is_asked, request in folder.rows(path, state):
                if is_asked:
                    yield request
                else:  # a sample_10k row: its default-config twin was answered in an earlier shard
                    _lookup_answers(annotator, [request], answers)

        for result in annotator.annotate(asked()):
            _note(result, answers, problems)
        changed = rewrite_shard(path, row_answers(answers))
        logger.info("%s: %d row(s) answered", path.relative_to(folder.data.parent), changed)


def _annotate_in_batches(folder: FolderRows, annotator: OpenAIAnnotator, problems: dict) -> None:
    """Batch API: every shard's rows go into the same batch files; then each shard is filled from the cache."""
    for result in annotator.annotate(folder.asked(folder.args.shards, folder.new_pass())):
        _note(result, {}, problems)
    state = folder.new_pass()
    for path in folder.args.shards:
        answers: dict[str, str] = {}
        _lookup_answers(annotator, (request for _, request in folder.rows(path, state)), answers)
        changed = rewrite_shard(path, row_answers(answers))
        logger.info("%s: %d row(s) answered", path.relative_to(folder.data.parent), changed)


def annotate_folder(args: AnnotateArguments, config: OpenAIAnnotatorConfig) -> dict:
    """Estimate, then annotate every row that needs it and rewrite the shards; the core of ``geollava-annotate``.

    The folder is streamed: a first pass plans every row (the estimate; ``--dry_run`` stops there), a second one
    sends and writes shard by shard (Chat Completions) or writes batch files then fills each shard from the cache
    (``--batch``). Rows are read ``READ_BATCH_ROWS`` at a time, so memory does not grow with the folder.

    Args:
        args: The folder and what to annotate.
        config: The OpenAI annotator's options.

    Returns:
        The annotation report (also written to ``annotation_report.json``).
    """
    dataset_dir = Path(args.dataset_dir)
    if config.report_path is None:
        config = replace(config, report_path=str(dataset_dir / "annotation_report.json"))
    annotator = OpenAIAnnotator(**vars(config))
    folder = FolderRows(args)
    try:
        estimate, cached = annotator.estimate(folder.scan())
        print(f"{estimate.pairs + cached} pair(s) to annotate, {cached} already cached; {estimate.summary()}")
        extra = {"estimate": vars(estimate), "cached_before": cached}
        if config.dry_run:
            report = annotator.report() | extra
            write_json(config.report_path, report, indent=2, sort_keys=True)
            return report
        problems: dict[str, list] = defaultdict(list)
        (_annotate_in_batches if config.batch else _annotate_by_shard)(folder, annotator, problems)
        _update_folder(dataset_dir, annotator, dict(problems))
        report = annotator.report() | extra
        write_json(config.report_path, report, indent=2, sort_keys=True)
        return report
    finally:
        annotator.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``geollava-annotate DATASET_DIR [options]``.

    Returns:
        0 when every asked pair has a final answer (refusals included: they are reported); 1 when pairs failed or
        the budget cap left some unsent (rerun to finish; cached answers are not paid again), or on an error.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-"):
        argv = ["--dataset_dir", argv[0], *argv[1:]]
    try:
        args, config = HfArgumentParser([AnnotateArguments, OpenAIAnnotatorConfig]).parse_args_into_dataclasses(
            args=argv
        )
        report = annotate_folder(args, config)
    except (FileNotFoundError, RuntimeError, ValueError, OSError) as err:
        print(f"geollava-annotate: {err}", file=sys.stderr)
        return 1
    if config.dry_run:
        print("dry run: nothing sent")
        return 0
    print(summary_line(report))
    incomplete = report["failed"] + report["not_sent_budget"]
    if incomplete:
        print(
            f"geollava-annotate: {incomplete} pair(s) not annotated yet (failed or over budget): run again to finish",
            file=sys.stderr,
        )
    return 1 if incomplete else 0


if __name__ == "__main__":
    sys.exit(main())
