"""Parquet shards of a build (the pairs' and the ``sequences`` config's), and the ``sample_10k`` config from them.

Shards are planned per split and written by worker processes (frames, clips, rows), each recorded in the build state
as it lands, so an interrupted build resumes at the first missing shard.
"""

import logging
import math
import shutil
from collections import defaultdict
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datasets import Features
from tqdm.auto import tqdm

from dataset_builder.atomic import ROW_GROUP_ROWS, write_json, write_parquet
from dataset_builder.frames import encode_jpeg, load_frame, write_mp4
from dataset_builder.pairs import Pair
from dataset_builder.rows import make_row, make_sequence_row
from dataset_builder.sequences import SEQUENCES_CONFIG, ViewSequence, sequence_changes


logger = logging.getLogger(__name__)

SAMPLE_CONFIG = "sample_10k"
#: Frames a pair shard holds per row: a sequences shard holds ``shard_rows * PAIR_FRAMES`` frames too.
PAIR_FRAMES = 2


def write_shard(job: dict) -> dict:
    """Make one shard: decode and encode the frames, write the clips, write Parquet under a temp name, rename."""
    if job["config"] == SEQUENCES_CONFIG:
        return _write_sequence_shard(job)
    out, size, quality = Path(job["out"]), job["frame_size"], job["jpeg_quality"]
    feats: Features = job["features"]
    rows, failed = [], []
    for item in job["items"]:
        pair: Pair = item["pair"]
        try:
            frames = [load_frame(pair.first.path, size), load_frame(pair.second.path, size)]
        except Exception as err:  # noqa: BLE001 - an image that does not decode drops its pair; reported
            failed.append({"id": pair.id, "reason": f"corrupt_image: {type(err).__name__}: {err}"})
            continue
        video = None
        if job["videos"]:
            video = f"videos/{pair.split}/{pair.id}.mp4"
            write_mp4(frames, out / video)
        frames_jpeg = [encode_jpeg(frame, quality) for frame in frames]
        rows.append(feats.encode_example(make_row(pair, item["caption"], frames_jpeg, video, item["changes"])))
    table = pa.Table.from_pylist(rows, schema=feats.arrow_schema)
    write_parquet(table, out / job["path"])
    return {"path": job["path"], "split": job["split"], "rows": len(rows), "failed": failed}


def _write_sequence_shard(job: dict) -> dict:
    """One ``sequences`` shard: every kept view's frame (no clips); a view that fails to decode drops its row."""
    out, size, quality = Path(job["out"]), job["frame_size"], job["jpeg_quality"]
    feats: Features = job["features"]
    rows, failed = [], []
    for item in job["items"]:
        sequence: ViewSequence = item["sequence"]
        try:
            frames = [load_frame(view.path, size) for view in sequence.views]
        except Exception as err:  # noqa: BLE001 - an image that does not decode drops its sequence; reported
            failed.append({"id": sequence.key, "reason": f"corrupt_image: {type(err).__name__}: {err}"})
            continue
        frames_jpeg = [encode_jpeg(frame, quality) for frame in frames]
        rows.append(feats.encode_example(make_sequence_row(sequence, item["caption"], frames_jpeg, item["changes"])))
    table = pa.Table.from_pylist(rows, schema=feats.arrow_schema)
    write_parquet(table, out / job["path"], row_group_size=job["row_group_rows"])
    return {"path": job["path"], "split": job["split"], "rows": len(rows), "failed": failed}


def plan_shards(
    pairs: list[Pair],
    captions: dict[str, str],
    truth: dict,
    feats: Features,
    *,
    out: str,
    shard_rows: int,
    frame_size: int,
    jpeg_quality: int,
    videos: bool,
) -> list[dict]:
    """The jobs of :func:`write_shard`: ``shard_rows`` pairs a shard, per split, named ``data/{split}-i-of-n``.

    Args:
        pairs: The annotated pairs, in build order.
        captions: Answer per pair id.
        truth: True changes per fMoW split and pair id (synthetic trees), or ``{}``.
        feats: The row features.
        out: The dataset folder.
        shard_rows: Rows per shard.
        frame_size: Side of the square frames.
        jpeg_quality: JPEG quality of the frames.
        videos: Write the 2-frame clips.

    Returns:
        One job dict per shard.
    """
    by_split: dict[str, list[Pair]] = defaultdict(list)
    for p in pairs:
        by_split[p.split].append(p)
    jobs = []
    for split, split_pairs in by_split.items():
        n = math.ceil(len(split_pairs) / shard_rows)
        for i in range(n):
            items = [
                {
                    "pair": p,
                    "caption": captions[p.id],
                    "changes": truth[p.first.split].get(p.id, []) if truth else None,
                }
                for p in split_pairs[i * shard_rows : (i + 1) * shard_rows]
            ]
            jobs.append(
                {
                    "config": "default",
                    "path": f"data/{split}-{i:05d}-of-{n:05d}.parquet",
                    "split": split,
                    "items": items,
                    "out": out,
                    "frame_size": frame_size,
                    "jpeg_quality": jpeg_quality,
                    "videos": videos,
                    "features": feats,
                }
            )
    return jobs


def plan_sequence_shards(
    sequences: list[ViewSequence],
    captions: dict[str, str],
    truth: dict,
    feats: Features,
    *,
    out: str,
    shard_rows: int,
    max_frames: int,
    frame_size: int,
    jpeg_quality: int,
) -> list[dict]:
    """The jobs of the ``sequences`` config, per split, named ``data/sequences/{split}-i-of-n``.

    A shard holds as many frames as a pair shard (``shard_rows`` pairs of 2): ``2 * shard_rows // max_frames`` rows
    (at least 1), in row groups of as many frames as a pair shard's, so memory and the viewer's pages stay the size
    the ``--shard_rows`` help states.

    Args:
        sequences: The annotated sequences, in build order.
        captions: Answer per sequence key (``{split}/{id}``).
        truth: True changes per fMoW split and pair id (synthetic trees), or ``{}``.
        feats: The row features.
        out: The dataset folder.
        shard_rows: The pairs' rows per shard.
        max_frames: Most frames in a row.
        frame_size: Side of the square frames.
        jpeg_quality: JPEG quality of the frames.

    Returns:
        One job dict per shard.
    """
    rows_per_shard = max(1, shard_rows * PAIR_FRAMES // max_frames)
    by_split: dict[str, list[ViewSequence]] = defaultdict(list)
    for sequence in sequences:
        by_split[sequence.split].append(sequence)
    jobs = []
    for split, split_sequences in by_split.items():
        n = math.ceil(len(split_sequences) / rows_per_shard)
        for i in range(n):
            items = [
                {
                    "sequence": s,
                    "caption": captions[s.key],
                    "changes": sequence_changes(s.views, truth[s.views[0].split]) if truth else None,
                }
                for s in split_sequences[i * rows_per_shard : (i + 1) * rows_per_shard]
            ]
            jobs.append(
                {
                    "config": SEQUENCES_CONFIG,
                    "path": f"data/{SEQUENCES_CONFIG}/{split}-{i:05d}-of-{n:05d}.parquet",
                    "split": split,
                    "items": items,
                    "out": out,
                    "frame_size": frame_size,
                    "jpeg_quality": jpeg_quality,
                    "videos": False,
                    "features": feats,
                    "row_group_rows": max(1, ROW_GROUP_ROWS * PAIR_FRAMES // max_frames),
                }
            )
    return jobs


def run_shards(jobs: list[dict], state: dict, state_path: Path, *, num_proc: int) -> None:
    """Write the shards the state does not record yet, recording each in ``state_path`` as it lands.

    Args:
        jobs: From :func:`plan_shards`.
        state: The build state (``state["shards"]`` is updated).
        state_path: Where the state is saved after each shard.
        num_proc: Worker processes.
    """
    if not jobs:
        return
    out = Path(jobs[0]["out"])
    todo = [j for j in jobs if j["path"] not in state["shards"] or not (out / j["path"]).exists()]
    if len(todo) < len(jobs):
        logger.info("resuming: %d of %d shards already written", len(jobs) - len(todo), len(jobs))
    folders = {out / "videos" / j["split"] for j in todo if j["videos"]} | {(out / j["path"]).parent for j in todo}
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="shards", unit="shard") as bar:

        def record(result: dict) -> None:
            state["shards"][result["path"]] = result
            write_json(state_path, state)
            for failure in result["failed"]:
                logger.warning("pair %s skipped: %s", failure["id"], failure["reason"])
            bar.update()

        if num_proc > 1 and len(todo) > 1:
            # fork: workers inherit the loaded libraries; each holds one shard's frames at a time
            with get_context("fork").Pool(min(num_proc, len(todo)), maxtasksperchild=8) as pool:
                for result in pool.imap_unordered(write_shard, todo):
                    record(result)
        else:
            for job in todo:
                record(write_shard(job))


def write_sample_config(out: Path, sample_size: int, seed: int, shard_rows: int) -> int:
    """The sample_10k config: a fixed, seeded subset of the written train rows (all of train when it is smaller).

    The ids of the train rows are sorted, then ``numpy.random.default_rng(seed).choice`` picks ``sample_size`` of
    them without replacement; rows keep their order in the train shards. Streams shard by shard.

    Args:
        out: The dataset folder (its ``data/train-*.parquet`` must be written).
        sample_size: Rows to pick (0: no sample config).
        seed: The seed.
        shard_rows: Rows per sample shard.

    Returns:
        The number of rows in the sample.
    """
    sample_dir = out / "data" / SAMPLE_CONFIG
    shutil.rmtree(sample_dir, ignore_errors=True)
    train_shards = sorted((out / "data").glob("train-*-of-*.parquet"))
    if not train_shards or sample_size == 0:
        return 0
    ids = sorted(i for path in train_shards for i in pq.read_table(path, columns=["id"])["id"].to_pylist())
    if not ids:
        return 0
    if len(ids) <= sample_size:
        chosen = pa.array(ids)
    else:
        chosen = pa.array(sorted(ids[i] for i in np.random.default_rng(seed).choice(len(ids), sample_size, False)))
    sample_dir.mkdir(parents=True)
    n_shards, written, buffer = math.ceil(len(chosen) / shard_rows), 0, []

    def flush(table: pa.Table) -> None:
        nonlocal written
        index = written // shard_rows
        write_parquet(table, sample_dir / f"train-{index:05d}-of-{n_shards:05d}.parquet")
        written += table.num_rows

    for path in train_shards:
        table = pq.read_table(path)
        buffer.append(table.filter(pc.is_in(table["id"], value_set=chosen)))
        pending = pa.concat_tables(buffer)
        while pending.num_rows >= shard_rows:
            flush(pending.slice(0, shard_rows))
            pending = pending.slice(shard_rows)
        buffer = [pending.combine_chunks()] if pending.num_rows else []
    if buffer:
        flush(pa.concat_tables(buffer))
    return written
