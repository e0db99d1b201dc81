"""Build benchmark: pairs/s and images/s of `geollava-build` on a synthetic tree, against the floor of decoding and
encoding the same images with the same libraries (Pillow decode + resize + JPEG encode, PyAV mp4), in one run.

    .venv/bin/python benchmarks/bench_build.py

Writes benchmarks/results/build.json and build.md. The floor is the per-pair work no builder can skip (decode both
images, bring them to the frame size, encode two JPEGs, write the 2-frame clip); the build adds the scan, Parquet,
the sample config, the official JSON and the card. Also timed: the same build with --num-proc 2, and with
--sequences (its extra time against its own floor: decode, resize and encode every kept view once more).
"""

import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

from results_io import write_results

from dataset_builder.build import BuildConfig, build
from dataset_builder.fmow import scan_fmow
from dataset_builder.frames import encode_jpeg, load_frame, write_mp4
from dataset_builder.pairs import find_pairs
from dataset_builder.sequences import find_sequence
from dataset_builder.synthetic.synth import SynthConfig, generate_tree


RESULTS = Path(__file__).parent / "results"
LOCATIONS, IMAGE_SIZE, FRAME_SIZE = 400, 512, 336


def main():
    work = Path(tempfile.mkdtemp(prefix="bench-build-"))
    try:
        generate_tree(SynthConfig(out=str(work / "fmow"), locations=LOCATIONS, seed=0, image_size=IMAGE_SIZE))
        scan = scan_fmow(work / "fmow", ["train", "val"], 1_000_000)
        pairs = [p for images in scan.locations.values() for p in find_pairs(images)]
        # the floor: the same decode + resize + encode (+ clip) work, no scan/Parquet/bookkeeping
        start = time.perf_counter()
        for pair in pairs:
            frames = [load_frame(pair.first.path, FRAME_SIZE), load_frame(pair.second.path, FRAME_SIZE)]
            for frame in frames:
                encode_jpeg(frame)
            write_mp4(frames, work / "floor.mp4")
        floor = time.perf_counter() - start
        sequences = [s for images in scan.locations.values() if (s := find_sequence(images, 8))]
        start = time.perf_counter()
        for sequence in sequences:
            for view in sequence.views:
                encode_jpeg(load_frame(view.path, FRAME_SIZE))
        sequences_floor = time.perf_counter() - start
        timings = {}
        for num_proc in (1, 2):
            start = time.perf_counter()
            report = build(
                BuildConfig(
                    fmow_root=str(work / "fmow"),
                    out=str(work / f"out{num_proc}"),
                    frame_size=FRAME_SIZE,
                    num_proc=num_proc,
                    shard_rows=100,
                )
            )
            timings[num_proc] = time.perf_counter() - start
        start = time.perf_counter()
        with_sequences = build(
            BuildConfig(
                fmow_root=str(work / "fmow"),
                out=str(work / "out_sequences"),
                frame_size=FRAME_SIZE,
                shard_rows=100,
                sequences=True,
            )
        )
        sequences_seconds = time.perf_counter() - start - timings[1]
        seconds = timings[1]
        n_pairs = sum(report["pairs_per_split"].values())
        size = sum(p.stat().st_size for p in (work / "out1").rglob("*") if p.is_file())
        result = {
            "locations": LOCATIONS,
            "image_size": IMAGE_SIZE,
            "frame_size": FRAME_SIZE,
            "pairs": n_pairs,
            "images_seen": report["images_seen"],
            "build_seconds": round(seconds, 2),
            "floor_seconds": round(floor, 2),
            "pairs_per_s": round(n_pairs / seconds, 1),
            "images_per_s": round(report["images_seen"] / seconds, 1),
            "ratio_to_floor": round(seconds / floor, 2),
            "goal_ratio": 1.5,
            "build_seconds_num_proc_2": round(timings[2], 2),
            "speedup_num_proc_2": round(timings[1] / timings[2], 2),
            "sequences_rows": sum(with_sequences["sequences"]["rows_per_split"].values()),
            "sequences_frames": sum(len(s.views) for s in sequences),
            "sequences_extra_seconds": round(sequences_seconds, 2),
            "sequences_floor_seconds": round(sequences_floor, 2),
            "sequences_ratio_to_floor": round(sequences_seconds / sequences_floor, 2),
            "output_mb": round(size / 1e6, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "cores": os.cpu_count(),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_results(
        "build",
        result,
        "# Build benchmark\n\n"
        f"{result['pairs']} pairs from {result['images_seen']} synthetic {IMAGE_SIZE}px images, frames "
        f"{FRAME_SIZE}px, 100 rows per shard, {result['cores']} cores (shared); one run of `bench_build.py`.\n\n"
        "| pairs/s | images/s | build (s) | decode+encode floor (s) | ratio (goal ≤ 1.5) |\n|---|---|---|---|---|\n"
        f"| {result['pairs_per_s']} | {result['images_per_s']} | {result['build_seconds']} "
        f"| {result['floor_seconds']} | {result['ratio_to_floor']} |\n\n"
        f"`--num-proc 2`: {result['build_seconds_num_proc_2']} s ({result['speedup_num_proc_2']}× the 1-process "
        f"build). Output {result['output_mb']} MB; peak RSS of the benchmark process {result['peak_rss_mb']} MB.\n\n"
        f"`--sequences`: {result['sequences_rows']} rows of {result['sequences_frames']} frames in "
        f"{result['sequences_extra_seconds']} s more than the pairs-only build, {result['sequences_ratio_to_floor']}× "
        f"the floor of making those frames ({result['sequences_floor_seconds']} s).\n",
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
