"""Push benchmark: peak RSS and wall time of `geollava-push dataset` at two dataset sizes, extrapolated to 106K pairs.

    .venv/bin/python benchmarks/bench_push.py [--pairs 2000 20000] [--modes parts one]

Each size and mode pushed to the loopback Hub by a child process, its peak RSS from ``wait4``; writes
benchmarks/results/push.{json,md}. See docs/release.md "Pushes".
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from results_io import write_results  # noqa: E402

from dataset_builder.atomic import write_parquet  # noqa: E402
from dataset_builder.rows import features  # noqa: E402
from upload.loopback import serve_hub  # noqa: E402


RESULTS = Path(__file__).parent / "results"
PAPER_PAIRS = 106_042
SHARD_ROWS = 1000
CLIP_BYTES = 2500  # a 2-frame 336 px clip of the real build is a few KB
GOAL_KB_PER_PAIR = 5.0
MODES = {"parts": [], "one": ["--large-folder-files", str(10**9), "--large-folder-bytes", str(10**15)]}
CARD = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*
---
# Push benchmark dataset
"""


def make_dataset(folder: Path, pairs: int) -> None:
    """A Hub-layout dataset folder of ``pairs`` rows, written without decoding or encoding any image."""
    schema = features(with_videos=True, with_changes=False).arrow_schema
    shards = (pairs + SHARD_ROWS - 1) // SHARD_ROWS
    (folder / "videos" / "train").mkdir(parents=True)
    for s in range(shards):
        rows = []
        for i in range(s * SHARD_ROWS, min(pairs, (s + 1) * SHARD_ROWS)):
            pair_id = f"site_{i // 4}_{i % 4}-site_{i // 4}_{i % 4 + 1}"
            video = f"videos/train/{pair_id}.mp4"
            (folder / video).write_bytes(os.urandom(CLIP_BYTES))
            rows.append(
                {
                    "id": pair_id,
                    "split": "train",
                    "category": "airport",
                    "location_id": f"site_{i // 4}",
                    "image1": f"{pair_id}_a",
                    "image2": f"{pair_id}_b",
                    "timestamp1": "2015-01-01T00:00:00Z",
                    "timestamp2": "2017-01-01T00:00:00Z",
                    "gap_days": 731,
                    "frames": [{"bytes": os.urandom(600), "path": None} for _ in range(2)],
                    "video": video,
                    "conversations": [
                        {"from": "human", "value": "<video>\nWhat changed between the two images?"},
                        {"from": "gpt", "value": "A new terminal was built beside the runway. " * 3},
                    ],
                    "prompt_template_id": 0,
                    "gsd": 0.5,
                    "country_code": "USA",
                    "cloud_cover": 0,
                }
            )
        write_parquet(
            pa.Table.from_pylist(rows, schema=schema), folder / "data" / f"train-{s:05d}-of-{shards:05d}.parquet"
        )
    (folder / "README.md").write_text(CARD)


def run_push(folder: Path, url: str, repo_id: str, flags: list[str], hf_home: Path) -> dict:
    """Run `geollava-push dataset` as a child; its wall time and peak RSS (from ``wait4``)."""
    env = {
        **os.environ,
        "HF_ENDPOINT": url,
        "HF_HUB_DISABLE_XET": "1",
        "HF_TOKEN": "hf_bench_local_token",
        "HF_HOME": str(hf_home),
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    command = [sys.executable, "-m", "upload.push", "dataset", str(folder), "--repo-id", repo_id, *flags]
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"geollava-push failed:\n{stderr.decode(errors='replace')[-3000:]}")
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def extrapolate(small: dict, large: dict) -> dict:
    """Per-pair slopes between the two sizes and the linear extrapolation to the paper's pair count."""
    dpairs = large["pairs"] - small["pairs"]
    kb = (large["peak_rss_mb"] - small["peak_rss_mb"]) * 1024 / dpairs
    spp = (large["seconds"] - small["seconds"]) / dpairs
    return {
        "rss_growth_kb_per_pair": round(kb, 2),
        "seconds_per_1000_pairs": round(spp * 1000, 1),
        "peak_rss_mb_at_paper_scale": round(large["peak_rss_mb"] + kb * (PAPER_PAIRS - large["pairs"]) / 1024, 1),
        "hours_at_paper_scale": round((large["seconds"] + spp * (PAPER_PAIRS - large["pairs"])) / 3600, 2),
        "within_goal": kb <= GOAL_KB_PER_PAIR,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, nargs=2, default=[2000, 20000])
    parser.add_argument("--modes", nargs="+", choices=sorted(MODES), default=["parts", "one"])
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-push-") as tmp:
        work = Path(tmp)
        for pairs in args.pairs:
            folder = work / f"dataset-{pairs}"
            start = time.perf_counter()
            make_dataset(folder, pairs)
            files = sum(1 for p in folder.rglob("*") if p.is_file())
            print(f"[push] {pairs} pairs: {files} files written in {time.perf_counter() - start:.1f} s", flush=True)
            for mode in args.modes:
                with serve_hub(work / f"hub-{pairs}-{mode}", log_path=work / f"hub-{pairs}-{mode}.log") as url:
                    measured = run_push(folder, url, f"geo-org/bench-{pairs}", MODES[mode], work / "hf_home")
                runs.append({"mode": mode, "pairs": pairs, "files": files, **measured})
                print(f"[push] {runs[-1]}", flush=True)
    result = {"paper_pairs": PAPER_PAIRS, "goal_kb_per_pair": GOAL_KB_PER_PAIR, "cores": os.cpu_count(), "runs": runs}
    for mode in args.modes:
        small, large = (r for r in runs if r["mode"] == mode)
        result[mode] = extrapolate(small, large)
    build = RESULTS / "build.json"
    if build.exists():
        pairs_per_s = json.loads(build.read_text())["pairs_per_s"]
        result["build_hours_at_paper_scale"] = round(PAPER_PAIRS / pairs_per_s / 3600, 2)
    write_results("push", result, render(result))
    print(json.dumps(result))


def render(result: dict) -> str:
    """The markdown report."""
    lines = [
        "# Push benchmark",
        "",
        f"`geollava-push dataset` to the loopback Hub, as a child process; {result['cores']} cores (shared machine, "
        "one run: the lead reruns it when the machine is quiet). One mp4 (2.5 KB) a pair, Parquet shards of 1,000 "
        "rows. `parts`: resumable commits of 100 files (the default above 1,000 files); `one`: the same push forced "
        "into one commit (`create_commit`).",
        "",
        "| mode | pairs | files | wall (s) | peak RSS (MB) |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['mode']} | {r['pairs']:,} | {r['files']:,} | {r['seconds']} | {r['peak_rss_mb']} |"
        for r in result["runs"]
    ]
    lines += [
        "",
        f"| mode | RSS growth (KB/pair, goal ≤ {result['goal_kb_per_pair']}) | s per 1,000 pairs | "
        f"at {result['paper_pairs']:,} pairs: peak RSS (MB) | at {result['paper_pairs']:,} pairs: hours |",
        "|---|---|---|---|---|",
    ]
    for mode in MODES:
        if mode in result:
            e = result[mode]
            lines.append(
                f"| {mode} | {e['rss_growth_kb_per_pair']} ({'ok' if e['within_goal'] else 'over'}) "
                f"| {e['seconds_per_1000_pairs']} | {e['peak_rss_mb_at_paper_scale']} | {e['hours_at_paper_scale']} |"
            )
    if "build_hours_at_paper_scale" in result:
        lines += [
            "",
            f"Beside the build: `geollava-build` at its benchmarked pairs/s (build.json) takes "
            f"{result['build_hours_at_paper_scale']} h for {result['paper_pairs']:,} pairs on this machine.",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
