"""Build the GeoLLaVA dataset from an fMoW-rgb tree, in the Hub's own layout.

    geollava-build --fmow-root outputs/synth-fmow --out outputs/geollava --annotator synthetic

Pairs (the paper's rule) → two frames per pair (JPEG) and a 2-frame mp4 → conversations (one of the paper's 6 prompt
templates + the annotator's answer) → Parquet shards + README.md (YAML ``configs`` and ``dataset_info``) that
``load_dataset(OUT)`` reads with no custom code, plus ``geollava_json/`` (the official JSON form),
``build_report.json`` and ``videos/``. Shards are written under temporary names and renamed; a rerun with the same
inputs and options resumes, a rerun with other ones starts over.
"""

import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from datasets import Dataset, Features, Image, List, Value
from tqdm.auto import tqdm
from transformers import HfArgumentParser

from dataset_builder.annotate import AnnotationRequest, get_annotator
from dataset_builder.fmow import DROP_REASONS, ScanResult, scan_fmow
from dataset_builder.frames import encode_jpeg, load_frame, write_mp4
from dataset_builder.pairs import Pair, find_pairs
from dataset_builder.prompts import choose_template, human_turn


logger = logging.getLogger(__name__)

STATE_FILE = ".geollava_build_state.json"
SAMPLE_CONFIG = "sample_10k"
OUTPUTS = ("data", "videos", "geollava_json", "README.md", "build_report.json")


@dataclass
class BuildConfig:
    """Command-line options of ``geollava-build``."""

    fmow_root: str = field(metadata={"help": "Root of an fMoW-rgb tree (real, or from geollava-synth)."})
    out: str = field(metadata={"help": "Output folder (Hub dataset layout)."})
    splits: str = field(default="train,val", metadata={"help": "Comma-separated fMoW splits (val becomes test)."})
    annotator: str = field(
        default="synthetic", metadata={"help": "synthetic | openai | none | import:PATH (official GeoLLaVA JSON)."}
    )
    min_gap_days: int = field(default=365, metadata={"help": "Smallest gap between the two dates of a pair."})
    max_image_bytes: int = field(default=1_000_000, metadata={"help": "Images larger than this are dropped first."})
    frame_size: int = field(default=336, metadata={"help": "Side of the square frames, in pixels."})
    sample_size: int = field(default=10_000, metadata={"help": "Train rows in the sample_10k config."})
    sample_seed: int = field(default=0, metadata={"help": "Seed of the sample_10k subset."})
    num_proc: int = field(default=1, metadata={"help": "Processes writing shards."})
    no_videos: bool = field(default=False, metadata={"help": "Do not write the 2-frame mp4 clips."})
    shard_rows: int = field(default=1000, metadata={"help": "Rows per Parquet shard."})
    jpeg_quality: int = field(default=95, metadata={"help": "JPEG quality of the stored frames."})

    def __post_init__(self):
        if self.frame_size < 16 or self.frame_size % 2:
            raise ValueError(f"--frame_size {self.frame_size}: must be an even number of pixels, at least 16")
        if self.min_gap_days < 0:
            raise ValueError(f"--min_gap_days {self.min_gap_days}: must be >= 0")
        if self.num_proc < 1 or self.shard_rows < 1 or self.sample_size < 0:
            raise ValueError("--num_proc and --shard_rows must be >= 1, --sample_size >= 0")
        if not (self.annotator in ("synthetic", "openai", "none") or self.annotator.startswith("import:")):
            raise ValueError(f"--annotator {self.annotator!r}: expected synthetic, openai, none or import:PATH")

    @property
    def split_list(self) -> list[str]:
        """The fMoW splits to read."""
        return [s.strip() for s in self.splits.split(",") if s.strip()]


def features(with_videos: bool, with_changes: bool) -> Features:
    """The row schema (docs/CONTRACTS.md §2)."""
    spec = {
        "id": Value("string"),
        "split": Value("string"),
        "category": Value("string"),
        "location_id": Value("string"),
        "image1": Value("string"),
        "image2": Value("string"),
        "timestamp1": Value("string"),
        "timestamp2": Value("string"),
        "gap_days": Value("int32"),
        "frames": List(Image()),
    }
    if with_videos:
        spec["video"] = Value("string")
    spec |= {
        "conversations": List({"from": Value("string"), "value": Value("string")}),
        "prompt_template_id": Value("int32"),
        "gsd": Value("float32"),
        "country_code": Value("string"),
        "cloud_cover": Value("int32"),
    }
    if with_changes:
        spec["changes"] = List({"kind": Value("string"), "location": Value("string"), "size": Value("string")})
    return Features(spec)


def _fingerprint(cfg: BuildConfig, scan: ScanResult) -> str:
    h = hashlib.sha256()
    options = {k: v for k, v in asdict(cfg).items() if k not in ("num_proc", "out")}
    h.update(json.dumps(options, sort_keys=True).encode())
    for key in sorted(scan.locations):
        for image in scan.locations[key]:
            h.update(f"{image.path}|{image.size_bytes}|{image.timestamp_text}".encode())
    gt = Path(cfg.fmow_root) / "groundtruth"
    if gt.is_dir():
        for path in sorted(gt.glob("*.jsonl")):
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:16]


def _prepare_out(out: Path, fingerprint: str) -> dict:
    """Resume a build with the same fingerprint; otherwise clear our own outputs (never mix two runs)."""
    state_path = out / STATE_FILE
    if state_path.exists():
        state = json.loads(state_path.read_text())
        if state.get("fingerprint") == fingerprint:
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
    _save_state(out, state)
    return state


def _save_state(out: Path, state: dict) -> None:
    tmp = out / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, out / STATE_FILE)


def _load_ground_truth(fmow_root: Path, fmow_split: str) -> dict[str, list[dict]] | None:
    path = fmow_root / "groundtruth" / f"{fmow_split}.jsonl"
    if not path.exists():
        return None
    changes = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            for pair_id, pair in json.loads(line)["pairs"].items():
                changes[pair_id] = pair["changes"]
    return changes


def _row(pair: Pair, caption: str, frames_jpeg: list[bytes], video: str | None, changes) -> dict:
    template_id = choose_template(pair.id)
    row = {
        "id": pair.id,
        "split": pair.split,
        "category": pair.category,
        "location_id": pair.location_id,
        "image1": pair.first.stem,
        "image2": pair.second.stem,
        "timestamp1": pair.first.timestamp_text,
        "timestamp2": pair.second.timestamp_text,
        "gap_days": pair.gap_days,
        "frames": [{"bytes": data, "path": None} for data in frames_jpeg],
    }
    if video is not None:
        row["video"] = video
    row |= {
        "conversations": [{"from": "human", "value": human_turn(template_id)}, {"from": "gpt", "value": caption}],
        "prompt_template_id": template_id,
        "gsd": pair.first.gsd,
        "country_code": pair.first.country_code,
        "cloud_cover": pair.first.cloud_cover,
    }
    if changes is not None:
        row["changes"] = changes
    return row


def _write_shard(job: dict) -> dict:
    """Make one shard: decode and encode the frames, write the clips, write Parquet under a temp name, rename."""
    out, size, quality = Path(job["out"]), job["frame_size"], job["jpeg_quality"]
    rows, failed = [], []
    for item in job["items"]:
        pair: Pair = item["pair"]
        try:
            frames = [load_frame(pair.first.path, size), load_frame(pair.second.path, size)]
        except Exception as err:  # noqa: BLE001 - a corrupt image drops its pair; reported, build goes on
            failed.append({"id": pair.id, "reason": f"corrupt_image: {err}"})
            continue
        video = None
        if job["videos"]:
            video = f"videos/{pair.split}/{pair.id}.mp4"
            write_mp4(frames, out / video)
        frames_jpeg = [encode_jpeg(frame, quality) for frame in frames]
        rows.append(_row(pair, item["caption"], frames_jpeg, video, item["changes"]))
    target = out / job["path"]
    tmp = target.with_name(f".{target.name}.tmp")
    Dataset.from_list(rows, features=job["features"]).to_parquet(str(tmp))
    os.replace(tmp, target)
    return {"path": job["path"], "rows": len(rows), "failed": failed}


def _annotate(cfg: BuildConfig, pairs: list[Pair], report: dict) -> dict[str, str]:
    options = {}
    if cfg.annotator == "synthetic":
        options["fmow_root"] = cfg.fmow_root
    annotator = get_annotator(cfg.annotator, **options)
    report["annotation"] = {"annotator": annotator.name, "model": annotator.model, "prompt": annotator.prompt}
    requests = [
        AnnotationRequest(
            id=p.id,
            image_paths=(p.first.path, p.second.path),
            metadata={"split": p.first.split, "fmow_root": cfg.fmow_root, "dataset_split": p.split},
        )
        for p in pairs
    ]
    captions, problems = {}, defaultdict(list)
    for result in tqdm(annotator.annotate(requests), total=len(requests), desc="annotating", unit="pair"):
        if result.status == "ok" and result.text is not None:
            captions[result.id] = result.text
        else:
            problems[result.status].append({"id": result.id, "reason": result.reason})
    report["annotation"]["not_annotated"] = dict(problems)
    for status, items in problems.items():
        logger.warning("%d pair(s) not annotated (%s), e.g. %s: they are left out", len(items), status, items[0])
    return captions


def build(cfg: BuildConfig) -> dict:
    """Run the whole build; return the build report."""
    start = time.perf_counter()
    root, out = Path(cfg.fmow_root), Path(cfg.out)
    scan = scan_fmow(root, cfg.split_list, cfg.max_image_bytes)
    report = {
        "fmow_root": str(root),
        "options": {k: v for k, v in asdict(cfg).items() if k not in ("out", "fmow_root")},
        "images_seen": scan.images_seen,
        "msrgb_ignored": scan.msrgb_ignored,
        "images_dropped": {reason: len(scan.dropped.get(reason, [])) for reason in DROP_REASONS},
        "dropped_paths": scan.dropped,
        "empty_locations": scan.empty_locations,
    }
    for reason, paths in scan.dropped.items():
        logger.warning("skipped %d file(s): %s (e.g. %s)", len(paths), reason, paths[0])
    pairs = [p for key in sorted(scan.locations) for p in find_pairs(scan.locations[key], cfg.min_gap_days)]
    if not pairs:
        raise RuntimeError(
            f"no usable pairs in {root} (splits {cfg.split_list}): {scan.images_seen} images seen, "
            f"dropped {report['images_dropped']}; a pair needs two usable images of one location "
            f">= {cfg.min_gap_days} days apart"
        )
    fingerprint = _fingerprint(cfg, scan)
    state = _prepare_out(out, fingerprint)
    captions = _annotate(cfg, pairs, report)
    pairs = [p for p in pairs if p.id in captions]
    truth = {s: _load_ground_truth(root, s) for s in cfg.split_list}
    with_changes = any(t is not None for t in truth.values())
    feats = features(not cfg.no_videos, with_changes)
    by_split: dict[str, list[Pair]] = defaultdict(list)
    for p in pairs:
        by_split[p.split].append(p)
    jobs = []
    for split, split_pairs in by_split.items():
        if not cfg.no_videos:
            (out / "videos" / split).mkdir(parents=True, exist_ok=True)
        n = -(-len(split_pairs) // cfg.shard_rows)
        for i in range(n):
            chunk = split_pairs[i * cfg.shard_rows : (i + 1) * cfg.shard_rows]
            items = [
                {
                    "pair": p,
                    "caption": captions[p.id],
                    "changes": (truth.get(p.first.split) or {}).get(p.id, []) if with_changes else None,
                }
                for p in chunk
            ]
            path = f"data/{split}-{i:05d}-of-{n:05d}.parquet"
            jobs.append(
                {
                    "path": path,
                    "items": items,
                    "out": str(out),
                    "frame_size": cfg.frame_size,
                    "jpeg_quality": cfg.jpeg_quality,
                    "videos": not cfg.no_videos,
                    "features": feats,
                }
            )
    (out / "data").mkdir(parents=True, exist_ok=True)
    todo = [j for j in jobs if j["path"] not in state["shards"] or not (out / j["path"]).exists()]
    if len(todo) < len(jobs):
        logger.info("resuming: %d of %d shards already written", len(jobs) - len(todo), len(jobs))
    with tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="shards", unit="shard") as bar:

        def record(result):
            state["shards"][result["path"]] = result
            _save_state(out, state)
            bar.update()

        if cfg.num_proc > 1 and len(todo) > 1:
            with get_context("fork").Pool(min(cfg.num_proc, len(todo))) as pool:
                for result in pool.imap_unordered(_write_shard, todo):
                    record(result)
        else:
            for job in todo:
                record(_write_shard(job))
    shard_info = [state["shards"][j["path"]] for j in jobs]
    report["pairs_failed"] = [f for s in shard_info for f in s["failed"]]
    rows_per_split = Counter()
    for job, info in zip(jobs, shard_info, strict=True):
        rows_per_split[job["path"].split("/")[1].split("-")[0]] += info["rows"]
    sample_ids = write_sample_config(out, cfg, by_split.get("train", []), feats)
    write_official_json(out, cfg)
    report |= _statistics(by_split, report["pairs_failed"], rows_per_split, sample_ids, time.perf_counter() - start)
    (out / "build_report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    from model_cards.dataset_card import write_dataset_card

    write_dataset_card(out)
    state["complete"] = True
    _save_state(out, state)
    return report


def write_sample_config(out: Path, cfg: BuildConfig, train_pairs: list[Pair], feats: Features) -> int:
    """The sample_10k config: a fixed, seeded subset of train (all of train when it is smaller)."""
    sample_dir = out / "data" / SAMPLE_CONFIG
    shutil.rmtree(sample_dir, ignore_errors=True)
    train_shards = sorted((out / "data").glob("train-*.parquet"))
    if not train_shards:
        return 0
    ids = sorted(p.id for p in train_pairs)
    rng = np.random.default_rng(cfg.sample_seed)
    chosen = (
        set(ids)
        if len(ids) <= cfg.sample_size
        else {ids[i] for i in rng.choice(len(ids), cfg.sample_size, replace=False)}
    )
    sample_dir.mkdir(parents=True)
    tables = [pq.read_table(path) for path in train_shards]
    import pyarrow as pa
    import pyarrow.compute as pc

    table = pa.concat_tables(tables)
    table = table.filter(pc.is_in(table["id"], value_set=pa.array(sorted(chosen))))
    n = max(1, -(-table.num_rows // cfg.shard_rows))
    for i in range(n):
        part = table.slice(i * cfg.shard_rows, cfg.shard_rows)
        target = sample_dir / f"train-{i:05d}-of-{n:05d}.parquet"
        tmp = target.with_name(f".{target.name}.tmp")
        pq.write_table(part, tmp)
        os.replace(tmp, target)
    return table.num_rows


def write_official_json(out: Path, cfg: BuildConfig) -> None:
    """The official GeoLLaVA form: ``geollava_json/{split}.json`` = ``[{"id", "video", "conversations"}]``."""
    from dataset_builder.official_json import export_rows

    folder = out / "geollava_json"
    folder.mkdir(exist_ok=True)
    for shard_split in sorted({p.name.split("-")[0] for p in (out / "data").glob("*.parquet")}):
        rows = []
        for path in sorted((out / "data").glob(f"{shard_split}-*.parquet")):
            rows += pq.read_table(path, columns=["id", "conversations"]).to_pylist()
        export_rows(rows, folder / f"{shard_split}.json")


def _statistics(by_split, failed, rows_per_split, sample_rows, seconds) -> dict:
    failed_ids = {f["id"] for f in failed}
    stats = {"pairs_per_split": dict(rows_per_split), "sample_10k_rows": sample_rows, "seconds": round(seconds, 2)}
    categories, gaps, locations, images = {}, [], {}, {}
    for split, pairs in by_split.items():
        kept = [p for p in pairs if p.id not in failed_ids]
        categories[split] = dict(sorted(Counter(p.category for p in kept).items()))
        locations[split] = len({p.location_id for p in kept})
        images[split] = len({p.first.stem for p in kept} | {p.second.stem for p in kept})
        gaps += [p.gap_days for p in kept]
    edges = [365, 500, 730, 1095, 1460, 2190, 10**6]
    hist = {f"{lo}-{hi - 1}" if hi < 10**6 else f">={lo}": 0 for lo, hi in zip(edges, edges[1:], strict=False)}
    for gap in gaps:
        for (lo, hi), key in zip(zip(edges, edges[1:], strict=False), hist, strict=True):
            if lo <= gap < hi:
                hist[key] += 1
    stats |= {
        "pairs_per_category": categories,
        "locations_per_split": locations,
        "images_in_pairs_per_split": images,
        "gap_days": {
            "min": int(min(gaps)) if gaps else None,
            "median": float(np.median(gaps)) if gaps else None,
            "mean": round(float(np.mean(gaps)), 1) if gaps else None,
            "max": int(max(gaps)) if gaps else None,
            "histogram": hist,
        },
    }
    return stats


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``geollava-build``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    (cfg,) = HfArgumentParser(BuildConfig).parse_args_into_dataclasses(args=argv)
    try:
        report = build(cfg)
    except (FileNotFoundError, FileExistsError, RuntimeError, ValueError) as err:
        print(f"geollava-build: {err}", file=sys.stderr)
        return 1
    dropped = sum(report["images_dropped"].values())
    print(
        f"built {cfg.out}: {report['pairs_per_split']} pairs, {report['images_seen']} images seen, {dropped} dropped, "
        f"{len(report['pairs_failed'])} pairs failed, in {report['seconds']} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
