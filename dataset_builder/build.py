"""Build the GeoLLaVA dataset from an fMoW-rgb tree, in the Hub's own layout.

    geollava-build --fmow-root outputs/synth-fmow --out outputs/geollava --annotator synthetic

Stages: scan the tree (drop unusable images with their reason) → pairs (the paper's rule; with ``--sequences``, also
every location's views in time order) → answers from the annotator → per shard, the frames (JPEG) and 2-frame mp4s
→ Parquet shards → the ``sample_10k`` config, the official JSON form, ``build_report.json`` and the card that
``load_dataset(OUT[, CONFIG])`` reads with no custom code. A rerun with the same inputs and options resumes; one with
other options starts over. See docs/dataset.md.
"""

import hashlib
import json
import logging
import shutil
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm
from transformers import HfArgumentParser

from dataset_builder.annotation import AnnotationRequest, get_annotator
from dataset_builder.annotation.openai.config import OpenAIAnnotatorConfig
from dataset_builder.atomic import write_json
from dataset_builder.card import write_dataset_card
from dataset_builder.changes import load_ground_truth
from dataset_builder.fmow import DROP_REASONS, SKIP_REASONS, ScanResult, scan_fmow
from dataset_builder.official_json import export_official
from dataset_builder.pairs import Pair, find_pairs
from dataset_builder.rows import features, sequence_features
from dataset_builder.sequences import MIN_VIEWS, ViewSequence, find_sequence
from dataset_builder.shards import plan_sequence_shards, plan_shards, run_shards, write_sample_config
from dataset_builder.statistics import pair_statistics, sequence_statistics


logger = logging.getLogger(__name__)

#: Bumped when the output of the same inputs and options changes, so an old folder is rebuilt, not resumed.
BUILD_FORMAT = 2
STATE_FILE = ".geollava_build_state.json"
CAPTIONS_FILE = ".geollava_build_captions.jsonl"
#: Everything a build writes into --out (cleared before a build with another fingerprint).
OUTPUTS = ("README.md", "build_report.json", "data", "videos", "geollava_json", CAPTIONS_FILE)


@dataclass
class BuildConfig:
    """Command-line options of ``geollava-build``."""

    fmow_root: str = field(metadata={"help": "Root of an fMoW-rgb tree (real, or from geollava-synth)."})
    out: str = field(metadata={"help": "Output folder (Hub dataset layout)."})
    splits: str = field(default="train,val", metadata={"help": "Comma-separated fMoW splits (val becomes test)."})
    annotator: str = field(
        default="synthetic", metadata={"help": "synthetic | openai | none | import:PATH (official GeoLLaVA JSON)."}
    )
    min_gap_days: int = field(default=365, metadata={"help": "Smallest gap between the two dates of a pair, in days."})
    max_image_bytes: int = field(
        default=1_000_000, metadata={"help": "Images larger than this many bytes are dropped before pairing."}
    )
    frame_size: int = field(default=336, metadata={"help": "Side of the square frames, in pixels (even)."})
    sample_size: int = field(default=10_000, metadata={"help": "Train rows in the sample_10k config (0: no sample)."})
    sample_seed: int = field(default=0, metadata={"help": "Seed of the sample_10k subset."})
    num_proc: int = field(default=1, metadata={"help": "Processes making shards (decode, encode, clips, Parquet)."})
    no_videos: bool = field(default=False, metadata={"help": "Do not write the 2-frame mp4 clips."})
    shard_rows: int = field(default=1000, metadata={"help": "Rows per Parquet shard (~120 MB at 336 px)."})
    jpeg_quality: int = field(default=95, metadata={"help": "JPEG quality of the stored frames (1-95)."})
    sequences: bool = field(
        default=False,
        metadata={
            "help": "Also write the sequences config: each location with at least 3 usable views as one row of its "
            "views in time order."
        },
    )
    max_frames: int = field(
        default=8,
        metadata={
            "help": "Most views in a sequences row: a location with more keeps this many, spread evenly over its "
            "dates (the first and the last included)."
        },
    )

    def __post_init__(self):
        if self.frame_size < 16 or self.frame_size % 2:
            raise ValueError(f"--frame_size {self.frame_size}: must be an even number of pixels, at least 16")
        for name in ("min_gap_days", "sample_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} {getattr(self, name)}: must be >= 0")
        for name in ("max_image_bytes", "num_proc", "shard_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} {getattr(self, name)}: must be >= 1")
        if not 1 <= self.jpeg_quality <= 95:
            raise ValueError(f"--jpeg_quality {self.jpeg_quality}: must be in 1..95")
        if not self.split_list:
            raise ValueError(f"--splits {self.splits!r}: name at least one fMoW split (e.g. train,val)")
        if not (self.annotator in ("synthetic", "openai", "none") or self.annotator.startswith("import:")):
            raise ValueError(f"--annotator {self.annotator!r}: expected synthetic, openai, none or import:PATH")
        if self.annotator.startswith("import:") and not Path(self.annotator.removeprefix("import:")).exists():
            raise ValueError(
                f"--annotator {self.annotator!r}: {self.annotator.removeprefix('import:')} does not exist"
            )
        if self.max_frames < MIN_VIEWS:
            raise ValueError(
                f"--max_frames {self.max_frames}: must be at least {MIN_VIEWS} (a sequence's fewest views)"
            )
        if self.sequences and self.annotator.startswith("import:"):
            raise ValueError(
                f"--sequences with --annotator {self.annotator!r}: the official JSON holds pairs only; use synthetic, "
                "openai or none"
            )

    @property
    def split_list(self) -> list[str]:
        """The fMoW splits to read."""
        return [s.strip() for s in self.splits.split(",") if s.strip()]


def _hash_path(h, path: Path) -> None:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        h.update(str(file).encode())
        h.update(hashlib.sha256(file.read_bytes()).digest())


def build_fingerprint(cfg: BuildConfig, scan: ScanResult, annotator_options: dict) -> str:
    """What makes two builds the same: options, the usable input listing, ground truth and imported answers."""
    h = hashlib.sha256()
    # without --sequences its options change nothing: a pairs-only folder keeps its fingerprint (and resumes)
    ignored = ("num_proc", "out") if cfg.sequences else ("num_proc", "out", "sequences", "max_frames")
    options = {k: v for k, v in asdict(cfg).items() if k not in ignored}
    answer_options = {k: v for k, v in annotator_options.items() if k not in OPERATIONAL_OPTIONS}
    options |= {"format": BUILD_FORMAT, "annotator_options": answer_options}
    h.update(json.dumps(options, sort_keys=True, default=str).encode())
    for key in sorted(scan.locations):
        for image in scan.locations[key]:
            stat = image.path.stat()
            h.update(f"{image.path}|{stat.st_size}|{stat.st_mtime_ns}|{image.timestamp_text}".encode())
    groundtruth = Path(cfg.fmow_root) / "groundtruth"
    if groundtruth.is_dir():
        _hash_path(h, groundtruth)
    if cfg.annotator.startswith("import:"):
        _hash_path(h, Path(cfg.annotator.removeprefix("import:")))
    return h.hexdigest()[:16]


def _prepare_out(out: Path, fingerprint: str) -> dict:
    """Resume a build with the same fingerprint; otherwise clear our own outputs (never mix two runs)."""
    state_path = out / STATE_FILE
    if state_path.exists():
        try:
            state = json.loads(state_path.read_text())
        except ValueError:
            state = {}
        if state.get("fingerprint") == fingerprint:
            for tmp in [*out.glob(".*.tmp"), *(out / "data").rglob(".*.tmp"), *(out / "videos").rglob(".*.tmp")]:
                tmp.unlink(missing_ok=True)  # left by the interrupted run
            return state
        logger.info("%s holds another build (%s); starting over", out, state.get("fingerprint"))
    elif out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty and holds no geollava-build state: choose an empty --out")
    for name in OUTPUTS:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    out.mkdir(parents=True, exist_ok=True)
    state = {"fingerprint": fingerprint, "shards": {}}
    write_json(out / STATE_FILE, state)
    return state


#: OpenAI options that change how fast or how cheaply answers come, not what they say: not part of the fingerprint,
#: so changing them on a rerun resumes instead of starting over.
OPERATIONAL_OPTIONS = frozenset(
    {
        "concurrency",
        "rpm",
        "tpm",
        "max_retries",
        "backoff_s",
        "backoff_max_s",
        "timeout_s",
        "max_cost_usd",
        "batch",
        "batch_poll_s",
        "batch_max_requests",
        "batch_max_bytes",
        "batch_max_enqueued_tokens",
        "cache_path",
        "price_table",
        "retry_failed",
        "report_path",
        "dry_run",
    }
)


def _annotator_options(cfg: BuildConfig, openai_cfg) -> dict:
    if cfg.annotator == "synthetic":
        return {"fmow_root": cfg.fmow_root}
    if cfg.annotator == "openai" and openai_cfg is not None:
        options = asdict(openai_cfg)
        # the annotation report sits beside build_report.json unless asked elsewhere
        options["report_path"] = options.get("report_path") or str(Path(cfg.out) / "annotation_report.json")
        return options
    return {}


def _annotate(
    cfg: BuildConfig, pairs: list[Pair], sequences: list[ViewSequence], options: dict, out: Path, report: dict
) -> dict[str, str]:
    """Answers by pair id and sequence key; answers already written by an interrupted run of this build are reused.

    Requests are made one at a time as the annotator asks for them (an annotator that sends, ``openai``, reads
    each pair's images only when it plans or sends it), so nothing but the answers grows with the number of pairs.
    The sequences are asked after the pairs, in the same stream (one estimate, one budget, one Batch run).
    """
    annotator = get_annotator(cfg.annotator, **options)
    report["annotation"] = {
        "annotator": annotator.name,
        "model": annotator.model,
        "prompt": annotator.prompt,
        "options": {k: v for k, v in options.items() if k != "fmow_root"},
    }
    if sequences:
        report["annotation"]["sequence_prompt"] = annotator.sequence_prompt
    captions: dict[str, str] = {}
    cache = out / CAPTIONS_FILE
    if cache.exists():
        with open(cache, encoding="utf-8") as fh:
            for line in fh:
                try:
                    entry = json.loads(line)
                    captions[entry["id"]] = entry["text"]
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by the interruption: that pair is asked again
        logger.info("resuming: %d answer(s) already written", len(captions))
    todo = [p for p in pairs if p.id not in captions]
    todo_sequences = [s for s in sequences if s.key not in captions]

    def requests() -> Iterator[AnnotationRequest]:
        for p in todo:
            yield AnnotationRequest(
                id=p.id,
                image_paths=(p.first.path, p.second.path),
                metadata={
                    "split": p.first.split,
                    "dataset_split": p.split,
                    "fmow_root": cfg.fmow_root,
                    "category": p.category,
                    "timestamps": (p.first.timestamp_text, p.second.timestamp_text),
                    "gap_days": p.gap_days,
                },
            )
        for s in todo_sequences:
            yield AnnotationRequest(
                id=s.key,
                image_paths=tuple(view.path for view in s.views),
                timestamps=s.timestamps,
                metadata={
                    "split": s.views[0].split,
                    "dataset_split": s.split,
                    "fmow_root": cfg.fmow_root,
                    "category": s.category,
                    "location_id": s.id,
                    "stems": [view.stem for view in s.views],
                },
            )

    if todo and hasattr(annotator, "estimate") and not options.get("dry_run"):
        estimate, cached = annotator.estimate(requests())  # streamed: the price is known before anything is sent
        logger.info("%d pair(s) already answered in the cache; %s", cached, estimate.summary())
    problems, sequence_problems = defaultdict(list), defaultdict(list)
    sequence_keys = {s.key for s in todo_sequences}
    total = len(todo) + len(todo_sequences)
    with open(cache, "a", encoding="utf-8") as fh:
        results = annotator.annotate(requests())
        for result in tqdm(results, total=total, desc="annotating", unit="pair", disable=not total):
            if result.status == "ok" and result.text is not None:
                captions[result.id] = result.text
                fh.write(json.dumps({"id": result.id, "text": result.text}, ensure_ascii=False) + "\n")
                fh.flush()
            else:
                found = sequence_problems if result.id in sequence_keys else problems
                found[result.status].append({"id": result.id, "reason": result.reason})
    report["annotation"]["not_annotated"] = dict(problems)
    if sequences:
        report["annotation"]["sequences_not_annotated"] = dict(sequence_problems)
    for what, found in (("pair", problems), ("sequence", sequence_problems)):
        for status, items in found.items():
            logger.warning(
                "%d %s(s) not annotated (%s), e.g. %s: they are left out", len(items), what, status, items[0]
            )
    return captions


def build(cfg: BuildConfig, openai_cfg=None) -> dict:
    """Run the whole build.

    Args:
        cfg: The build options.
        openai_cfg: The OpenAI annotator's options (an ``OpenAIAnnotatorConfig``) when ``--annotator openai``.

    Returns:
        The build report (also written to ``{out}/build_report.json``).

    Raises:
        FileNotFoundError: If the root is not an fMoW tree.
        FileExistsError: If ``--out`` is a non-empty folder that no build wrote.
        RuntimeError: If no pair can be made.
    """
    start = time.perf_counter()
    root, out = Path(cfg.fmow_root), Path(cfg.out)
    # 1. scan: usable images per location, everything else with its reason
    scan = scan_fmow(root, cfg.split_list, cfg.max_image_bytes)
    report = _scan_report(cfg, root, scan)
    # 2. pairs: the paper's rule, per location
    pairs = [p for key in sorted(scan.locations) for p in find_pairs(scan.locations[key], cfg.min_gap_days)]
    if not pairs:
        raise RuntimeError(
            f"no usable pairs in {root} (splits {cfg.split_list}): {scan.images_seen} images seen, "
            f"{scan.images_usable} usable, dropped {scan.dropped and {k: len(v) for k, v in scan.dropped.items()}}; "
            f"a pair needs two usable images of one location >= {cfg.min_gap_days} days apart"
        )
    report["pairs_found"] = len(pairs)
    sequences = _find_sequences(cfg, scan, report) if cfg.sequences else []
    options = _annotator_options(cfg, openai_cfg)
    fingerprint = build_fingerprint(cfg, scan, options)
    state = _prepare_out(out, fingerprint)
    # 3. answers
    captions = _annotate(cfg, pairs, sequences, options, out, report)
    if options.get("dry_run"):
        # an estimate only: the tokens and price are in annotation_report.json; no shards, no card
        report["dry_run"] = True
        report["seconds"] = round(time.perf_counter() - start, 2)
        return report
    annotated = [p for p in pairs if p.id in captions]
    report["pairs_not_annotated"] = len(pairs) - len(annotated)
    if not annotated:
        raise RuntimeError(f"the {cfg.annotator} annotator answered none of the {len(pairs)} pairs: nothing to write")
    annotated_sequences = [s for s in sequences if s.key in captions]
    if sequences:
        report["sequences"]["not_annotated"] = len(sequences) - len(annotated_sequences)
        if not annotated_sequences:
            raise RuntimeError(
                f"the {cfg.annotator} annotator answered none of the {len(sequences)} sequences: nothing to write"
            )
    # 4. shards: frames, clips, Parquet (resumable)
    shards = _write_shards(cfg, annotated, annotated_sequences, captions, state, report)
    # 5. the sample config, the official form, the report, the card (last: a folder with a README is complete)
    report["sample_10k_rows"] = write_sample_config(out, cfg.sample_size, cfg.sample_seed, cfg.shard_rows)
    report["official_json"] = export_official(out, out, videos=not cfg.no_videos)
    report["shards"] = shards
    report["seconds"] = round(time.perf_counter() - start, 2)
    write_json(out / "build_report.json", report)
    write_dataset_card(out)
    state["complete"] = True
    write_json(out / STATE_FILE, state)
    return report


def _find_sequences(cfg: BuildConfig, scan: ScanResult, report: dict) -> list[ViewSequence]:
    """The sequences rule over every location, counted into ``report["sequences"]``.

    Raises:
        RuntimeError: If no location has enough usable views (``--sequences`` asked for a config it cannot make).
    """
    found = [s for key in sorted(scan.locations) if (s := find_sequence(scan.locations[key], cfg.max_frames))]
    report["sequences"] = {
        "max_frames": cfg.max_frames,
        "locations_too_few_views": len(scan.locations) - len(found),
        "found": len(found),
        "subsampled": sum(s.n_views > len(s.views) for s in found),
    }
    if not found:
        raise RuntimeError(
            f"--sequences: no location in {cfg.fmow_root} (splits {cfg.split_list}) has {MIN_VIEWS} usable views; "
            f"{len(scan.locations)} location(s) have 1 or 2"
        )
    return found


def _scan_report(cfg: BuildConfig, root: Path, scan: ScanResult) -> dict:
    """The report's opening: the options and what the scan kept, dropped and skipped (each skip logged once)."""
    for reason, paths in {**scan.dropped, **scan.skipped}.items():
        logger.warning("skipped %d file(s): %s, e.g. %s", len(paths), reason, paths[0])
    return {
        "fmow_root": str(root.resolve()),
        "synthetic": (root / "groundtruth").is_dir(),
        "splits": cfg.split_list,
        "options": {k: v for k, v in asdict(cfg).items() if k not in ("out", "fmow_root")},
        "images_seen": scan.images_seen,
        "images_usable": scan.images_usable,
        "images_dropped": {reason: len(scan.dropped.get(reason, [])) for reason in DROP_REASONS},
        "files_skipped": {reason: len(scan.skipped.get(reason, [])) for reason in SKIP_REASONS},
        "msrgb_ignored": scan.msrgb_ignored,
        "locations_seen": len(scan.locations) + len(scan.empty_locations),
        "empty_locations": scan.empty_locations,
        "dropped_paths": scan.dropped,
        "skipped_paths": scan.skipped,
    }


def _write_shards(
    cfg: BuildConfig,
    annotated: list[Pair],
    sequences: list[ViewSequence],
    captions: dict[str, str],
    state: dict,
    report: dict,
) -> dict:
    """Write (or resume) the shards, add the kept rows' statistics to ``report``; returns the pairs' shards per split.

    The sequences' shards are written by the same workers, after the pairs'; their counts go to
    ``report["sequences"]``.

    Raises:
        RuntimeError: If every pair (or every sequence) failed to decode, or the rows written disagree with those kept.
    """
    root, out = Path(cfg.fmow_root), Path(cfg.out)
    truth = {s: load_ground_truth(root, s) for s in cfg.split_list}
    truth = {s: t or {} for s, t in truth.items()} if any(t is not None for t in truth.values()) else {}
    jobs = plan_shards(
        annotated,
        captions,
        truth,
        features(with_videos=not cfg.no_videos, with_changes=bool(truth)),
        out=cfg.out,
        shard_rows=cfg.shard_rows,
        frame_size=cfg.frame_size,
        jpeg_quality=cfg.jpeg_quality,
        videos=not cfg.no_videos,
    )
    sequence_jobs = plan_sequence_shards(
        sequences,
        captions,
        truth,
        sequence_features(with_changes=bool(truth)),
        out=cfg.out,
        shard_rows=cfg.shard_rows,
        max_frames=cfg.max_frames,
        frame_size=cfg.frame_size,
        jpeg_quality=cfg.jpeg_quality,
    )
    run_shards(jobs + sequence_jobs, state, out / STATE_FILE, num_proc=cfg.num_proc)
    failed = _failures(jobs, state)
    failed_ids = {f["id"] for f in failed}
    report["pairs_failed"] = failed
    kept = [p for p in annotated if p.id not in failed_ids]
    if not kept:
        raise RuntimeError(f"every one of the {len(annotated)} pairs failed to decode, e.g. {failed[0]}")
    report |= pair_statistics(kept)
    rows_written = _rows_written(jobs, state, out, "pair")
    if rows_written != report["pairs_per_split"]:
        raise RuntimeError(f"rows written {rows_written} != pairs kept {report['pairs_per_split']}")
    if sequence_jobs:
        _check_sequences(sequences, sequence_jobs, state, out, report["sequences"])
    return {split: sum(j["split"] == split for j in jobs) for split in rows_written}


def _check_sequences(sequences: list[ViewSequence], jobs: list[dict], state: dict, out: Path, report: dict) -> None:
    """The sequences' failures, statistics and shards per split, into ``report`` (the report's ``sequences``).

    Raises:
        RuntimeError: If every sequence failed to decode, or the rows written disagree with the sequences kept.
    """
    failed = _failures(jobs, state)
    failed_keys = {f["id"] for f in failed}
    kept = [s for s in sequences if s.key not in failed_keys]
    if not kept:
        raise RuntimeError(f"every one of the {len(sequences)} sequences failed to decode, e.g. {failed[0]}")
    report["failed"] = failed
    report["per_split"] = sequence_statistics(kept)
    report["rows_per_split"] = {split: stats["rows"] for split, stats in report["per_split"].items()}
    rows_written = _rows_written(jobs, state, out, "sequence")
    if rows_written != report["rows_per_split"]:
        raise RuntimeError(f"sequence rows written {rows_written} != sequences kept {report['rows_per_split']}")
    report["shards"] = {split: sum(j["split"] == split for j in jobs) for split in rows_written}


def _failures(jobs: list[dict], state: dict) -> list[dict]:
    """The rows of some shards that failed to decode (``{"id", "reason"}``), as their workers recorded them."""
    return [f for job in jobs for f in state["shards"][job["path"]]["failed"]]


def _rows_written(jobs: list[dict], state: dict, out: Path, what: str) -> dict[str, int]:
    """Rows written per split; the shards of a split whose every row failed are removed (no empty split)."""
    rows_written = Counter()
    for job in jobs:
        rows_written[job["split"]] += state["shards"][job["path"]]["rows"]
    for split in [s for s, n in rows_written.items() if n == 0]:
        logger.warning("split %s: every %s failed to decode; no shards for it", split, what)
        for job in jobs:
            if job["split"] == split:
                (out / job["path"]).unlink(missing_ok=True)
        del rows_written[split]
    return dict(rows_written)


def _parser() -> HfArgumentParser:
    return HfArgumentParser([BuildConfig, OpenAIAnnotatorConfig])


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``geollava-build``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parsed = _parser().parse_args_into_dataclasses(args=argv)
    cfg, openai_cfg = parsed
    try:
        report = build(cfg, openai_cfg)
    except (FileNotFoundError, FileExistsError, RuntimeError, ValueError) as err:
        print(f"geollava-build: {err}", file=sys.stderr)
        return 1
    sequences = report.get("sequences")
    if report.get("dry_run"):
        also = f" and {sequences['found']} sequences" if sequences else ""
        print(
            f"dry run: {report['pairs_found']} pairs{also} estimated, nothing sent, no shards written; the estimate "
            f"is in {Path(cfg.out) / 'annotation_report.json'}"
        )
        return 0
    print(
        f"built {cfg.out}: pairs {report['pairs_per_split']} (sample_10k: {report['sample_10k_rows']} train rows), "
        f"{report['images_seen']} images seen, {report['images_usable']} usable, "
        f"{sum(report['images_dropped'].values())} dropped, {report['pairs_not_annotated']} pairs not annotated, "
        f"{len(report['pairs_failed'])} failed, in {report['seconds']} s"
    )
    if sequences:
        print(
            f"sequences: rows {sequences['rows_per_split']} (at most {sequences['max_frames']} frames, "
            f"{sequences['subsampled']} subsampled), {sequences['not_annotated']} not annotated, "
            f"{len(sequences['failed'])} failed"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
