"""``geollava-annotate``: fill or refresh the answers (gpt turns) of a built dataset folder, in place, with OpenAI.

    OPENAI_API_KEY=sk-... geollava-annotate outputs/geollava --max_cost_usd 25 --concurrency 16

The estimate (tokens and price) is printed before anything is sent; ``--dry_run`` stops there. Each Parquet shard
is rewritten to a temporary name with the new ``conversations`` (same schema and features) and renamed over the old
one, so a crash leaves every shard either old or new. Rows already answered are left alone unless ``--overwrite``;
``sample_10k`` rows reuse the answers of the same pairs. Then ``build_report.json``, ``geollava_json/`` (when
present) and the card's ``dataset_info`` are brought up to date. Exit status 0 when every asked pair has a final
answer (refusals included: they are reported), 1 when pairs failed or the budget cap left some unsent (rerun to
finish; cached answers are not paid again), or on an error.
"""

import json
import logging
import sys
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from transformers import HfArgumentParser

from dataset_builder.annotation.base import AnnotationRequest
from dataset_builder.annotation.openai_annotator import OpenAIAnnotator
from dataset_builder.annotation.openai_config import OpenAIAnnotatorConfig
from dataset_builder.annotation.report import summary_line
from dataset_builder.atomic import write_json, write_parquet
from dataset_builder.card import write_dataset_card
from dataset_builder.official_json import export_official


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


def _requests(path: Path, args: AnnotateArguments, seen: set[str]) -> list[AnnotationRequest]:
    """The rows of one shard that need an answer (each pair id once over the whole folder)."""
    table = pq.read_table(path, columns=["id", "frames", "conversations", "image1", "image2"])
    out = []
    for row in table.to_pylist():
        if row["id"] in seen or (not args.overwrite and gpt_answer(row["conversations"]).strip()):
            continue
        frames = row["frames"] or []
        if len(frames) != 2 or not all(f and f.get("bytes") for f in frames):
            logger.warning("%s: row %s has %d stored frame(s), expected 2: skipped", path, row["id"], len(frames))
            continue
        seen.add(row["id"])
        out.append(
            AnnotationRequest(
                id=row["id"],
                image_paths=(Path(row["image1"] or ""), Path(row["image2"] or "")),
                frames_jpeg=(frames[0]["bytes"], frames[1]["bytes"]),
                metadata={"shard": str(path)},
            )
        )
    return out


def rewrite_shard(path: Path, answers: dict[str, str]) -> int:
    """Rewrite one shard with new gpt turns, atomically (temp name + fsync + rename); same schema and row groups.

    Args:
        path: The Parquet shard.
        answers: New answer per pair id.

    Returns:
        Rows changed (0: the file is left untouched).
    """
    pf = pq.ParquetFile(path)
    row_group_rows = pf.metadata.row_group(0).num_rows if pf.metadata.num_row_groups else None
    table = pf.read()
    index = table.schema.get_field_index("conversations")
    conversations = table.column(index).to_pylist()
    changed = 0
    for i, pair_id in enumerate(table.column("id").to_pylist()):
        if pair_id in answers:
            conversations[i] = with_answer(conversations[i], answers[pair_id])
            changed += 1
    if not changed:
        return 0
    column_field = table.schema.field(index)
    table = table.set_column(index, column_field, pa.array(conversations, type=column_field.type))
    write_parquet(table, path, row_group_size=row_group_rows, fsync=True)
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


def annotate_folder(args: AnnotateArguments, config: OpenAIAnnotatorConfig) -> dict:
    """Estimate, then annotate every row that needs it and rewrite the shards; the core of ``geollava-annotate``.

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
    try:
        plan: list[tuple[Path, list[AnnotationRequest]]] = []
        seen: set[str] = set()
        for path in args.shards:
            requests = _requests(path, args, seen)
            if args.limit is not None:
                requests = requests[: max(0, args.limit - sum(len(r) for _, r in plan))]
            plan.append((path, requests))
        estimate, cached = annotator.estimate(r for _, requests in plan for r in requests)
        print(f"{sum(len(r) for _, r in plan)} pair(s) to annotate, {cached} already cached; {estimate.summary()}")
        if config.dry_run:
            report = annotator.report() | {"estimate": vars(estimate), "cached_before": cached}
            write_json(config.report_path, report, indent=2, sort_keys=True)
            return report
        answers: dict[str, str] = {}
        problems: dict[str, list] = defaultdict(list)
        # one call per shard (answers reach the disk as they come); the Batch API takes everything at once, so
        # that all pairs share the same batches instead of waiting for one batch per shard
        groups = [args.shards] if config.batch else [[path] for path in args.shards]
        for group in groups:
            requests = [r for path, shard_requests in plan if path in group for r in shard_requests]
            for result in annotator.annotate(requests):
                if result.status == "ok" and result.text:
                    answers[result.id] = result.text
                else:
                    problems[result.status].append({"id": result.id, "reason": result.reason})
            for path in group:
                changed = rewrite_shard(path, answers)
                logger.info("%s: %d row(s) answered", path.relative_to(dataset_dir), changed)
        _update_folder(dataset_dir, annotator, dict(problems))
        report = annotator.report() | {"estimate": vars(estimate), "cached_before": cached}
        write_json(config.report_path, report, indent=2, sort_keys=True)
        return report
    finally:
        annotator.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``geollava-annotate DATASET_DIR [options]``."""
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
