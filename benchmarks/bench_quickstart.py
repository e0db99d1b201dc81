"""The quickstart's main job (after install), several fresh runs: the median against the 240 s target.

    .venv/bin/python benchmarks/bench_quickstart.py                 # 3 fresh runs of the default profile
    QUICKSTART_BENCH_RUNS=1 QUICKSTART_BENCH_PROFILE=ci .venv/bin/python benchmarks/bench_quickstart.py   # a check

Each run is `scripts/quickstart.py --fresh` into its own folder; writes benchmarks/results/quickstart.{json,md}
(another profile: quickstart_<profile>.{json,md}). The long-simple profile is not run by `make bench`: its last
measured report is kept in benchmarks/results/quickstart_long_simple.{json,md}. See docs/training.md.
"""

import datetime
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from results_io import write_results


ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RUNS = int(os.environ.get("QUICKSTART_BENCH_RUNS", "3"))
PROFILE = os.environ.get("QUICKSTART_BENCH_PROFILE", "default")
TARGET_S = 240.0
HEADLINE = ("rougeL", "grounding_f1")


def run_once(index: int) -> dict:
    """One fresh quickstart run; its report.json."""
    out = ROOT / "outputs" / "bench-quickstart" / f"{PROFILE}-{index}"
    command = [sys.executable, str(ROOT / "scripts" / "quickstart.py"), "--fresh", "--profile", PROFILE]
    proc = subprocess.run([*command, "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"quickstart run {index} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    report = json.loads((out / "report.json").read_text())
    print(f"[bench quickstart] run {index + 1}/{RUNS}: main job {report['main_job_seconds']} s", flush=True)
    return report


def summarize(reports: list[dict]) -> dict:
    """The median main job and stage times over the runs, each run's numbers, and the metrics of the last."""
    seconds = [r["main_job_seconds"] for r in reports]
    stages = {
        name: statistics.median(r["stage_seconds"][name] for r in reports) for name in reports[0]["stage_seconds"]
    }
    metrics = reports[-1]["metrics"]
    return {
        "benchmark": f"quickstart main job after install ({PROFILE} profile), fresh runs",
        "measured": datetime.date.today().isoformat(),
        "profile": PROFILE,
        "cpu_count": os.cpu_count(),
        "runs": len(reports),
        "main_job_seconds": seconds,
        "median_main_job_seconds": statistics.median(seconds),
        "target_seconds": TARGET_S,
        "target_met": statistics.median(seconds) <= TARGET_S,
        "median_stage_seconds": stages,
        "metrics": {which: {k: metrics[which].get(k) for k in HEADLINE} for which in ("base", "trained", "majority")},
        "bars": reports[-1].get("bars", []),
    }


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.3f}"


def markdown(result: dict) -> str:
    """benchmarks/results/quickstart.md."""
    lines = [
        f"# Quickstart main job ({result['profile']} profile)",
        "",
        f"{result['runs']} fresh runs of `scripts/quickstart.py --fresh --profile {result['profile']}` on "
        f"{result['cpu_count']} cores, measured {result['measured']}: main job "
        f"{', '.join(f'{s} s' for s in result['main_job_seconds'])}; median **{result['median_main_job_seconds']} s** "
        f"(target <= {TARGET_S:.0f} s: {'met' if result['target_met'] else 'NOT met'}).",
        "",
        "| stage | median seconds |",
        "|---|---|",
        *(f"| {name} | {seconds} |" for name, seconds in result["median_stage_seconds"].items()),
        "",
        "| metric (last run) | base | trained | majority |",
        "|---|---|---|---|",
    ]
    for key in HEADLINE:
        cells = [result["metrics"][which].get(key) for which in ("base", "trained", "majority")]
        lines.append(f"| {key} | " + " | ".join(_fmt(c) for c in cells) + " |")
    if result["bars"]:
        lines += ["", "| bar | trained | met |", "|---|---|---|"]
        lines += [f"| {b['bar']} | {_fmt(b['value'])} | {'yes' if b['met'] else 'no'} |" for b in result["bars"]]
    return "\n".join(lines) + "\n"


def main() -> int:
    reports = [run_once(i) for i in range(RUNS)]
    result = summarize(reports)
    # the default profile's are the quickstart's numbers; a check with another profile gets its own files
    name = "quickstart" if PROFILE == "default" else f"quickstart_{PROFILE.replace('-', '_')}"
    print(write_results(name, result, markdown(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
