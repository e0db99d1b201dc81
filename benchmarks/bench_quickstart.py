"""The quickstart's main job (after install), several fresh runs: the median against the 240 s target.

    .venv/bin/python benchmarks/bench_quickstart.py                 # 3 fresh runs of the default profile
    QUICKSTART_BENCH_RUNS=1 QUICKSTART_BENCH_PROFILE=default,multi-date .venv/bin/python benchmarks/bench_quickstart.py
    QUICKSTART_BENCH_RUNS=1 QUICKSTART_BENCH_PROFILE=ci .venv/bin/python benchmarks/bench_quickstart.py   # a check

Each run is `scripts/quickstart.py --fresh` into its own folder; several profiles (comma-separated) run in turns, so
they are measured side by side on the same host. Each profile writes benchmarks/results/quickstart.{json,md} (the
default) or quickstart_<profile>.{json,md}, with the host and its load average around each run. The long profiles are
not run by `make bench`: their last measured reports are kept in benchmarks/results/. See docs/training.md.
"""

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

from results_io import write_results


ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RUNS = int(os.environ.get("QUICKSTART_BENCH_RUNS", "3"))
PROFILES = [p.strip() for p in os.environ.get("QUICKSTART_BENCH_PROFILE", "default").split(",") if p.strip()]
TARGET_S = 240.0
HEADLINE = ("rougeL", "grounding_f1")


def host() -> dict:
    """What the figures were measured on: the CPU, its cores, the machine."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    return {"cpu": cpu, "cores": os.cpu_count(), "machine": platform.machine(), "system": platform.system()}


def run_once(profile: str, index: int) -> dict:
    """One fresh quickstart run; its report.json, with the host's 1-minute load average before and after."""
    out = ROOT / "outputs" / "bench-quickstart" / f"{profile}-{index}"
    command = [sys.executable, str(ROOT / "scripts" / "quickstart.py"), "--fresh", "--profile", profile]
    load_before = os.getloadavg()[0]
    proc = subprocess.run([*command, "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"quickstart run {index} ({profile}) failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    report = json.loads((out / "report.json").read_text())
    report["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    print(f"[bench quickstart] {profile} run {index + 1}/{RUNS}: main job {report['main_job_seconds']} s", flush=True)
    return report


def summarize(profile: str, reports: list[dict], measured_on: dict) -> dict:
    """The median main job and stage times over the runs, each run's numbers, and the metrics of the last."""
    seconds = [r["main_job_seconds"] for r in reports]
    stages = {
        name: statistics.median(r["stage_seconds"][name] for r in reports) for name in reports[0]["stage_seconds"]
    }
    metrics = reports[-1]["metrics"]
    return {
        "benchmark": f"quickstart main job after install ({profile} profile), fresh runs",
        "measured": datetime.date.today().isoformat(),
        "profile": profile,
        "cpu_count": os.cpu_count(),
        "host": measured_on,
        "measured_with": [p for p in PROFILES if p != profile],
        "runs": len(reports),
        "main_job_seconds": seconds,
        "load_average_before_after": [r["load_average"] for r in reports],
        "median_main_job_seconds": statistics.median(seconds),
        "target_seconds": TARGET_S,
        "target_met": statistics.median(seconds) <= TARGET_S,
        "median_stage_seconds": stages,
        "rows": reports[-1].get("rows"),
        "metrics": {which: {k: metrics[which].get(k) for k in HEADLINE} for which in ("base", "trained", "majority")},
        "bars": reports[-1].get("bars", []),
    }


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.3f}"


def markdown(result: dict) -> str:
    """benchmarks/results/quickstart.md."""
    runs = "fresh run" if result["runs"] == 1 else "fresh runs"
    loads = ", ".join(f"{a} → {b}" for a, b in result["load_average_before_after"])
    beside = result["measured_with"]
    lines = [
        f"# Quickstart main job ({result['profile']} profile)",
        "",
        f"{result['runs']} {runs} of `scripts/quickstart.py --fresh --profile {result['profile']}` on "
        f"{result['host']['cpu']} ({result['cpu_count']} cores, {result['host']['machine']}), measured "
        f"{result['measured']}"
        + (f", in turns with the {', '.join(beside)} profile" if beside else "")
        + f": main job {', '.join(f'{s} s' for s in result['main_job_seconds'])}; median "
        f"**{result['median_main_job_seconds']} s** (target <= {TARGET_S:.0f} s: "
        f"{'met' if result['target_met'] else 'NOT met'}). The host is shared: its 1-minute load average before → "
        f"after each run was {loads}, so the seconds follow its load; the metrics do not.",
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
        lines += ["", "| bar | trained | target | met |", "|---|---|---|---|"]
        lines += [
            f"| {b['bar']} | {_fmt(b['value'])} | {_fmt(b['target'])} | {'yes' if b['met'] else 'no'} |"
            for b in result["bars"]
        ]
    return "\n".join(lines) + "\n"


def main() -> int:
    measured_on = host()
    reports: dict[str, list[dict]] = {profile: [] for profile in PROFILES}
    for index in range(RUNS):
        for profile in PROFILES:  # in turns: every profile sees the same stretch of the host's load
            reports[profile].append(run_once(profile, index))
    for profile in PROFILES:
        # the default profile's are the quickstart's numbers; another profile gets its own files
        name = "quickstart" if profile == "default" else f"quickstart_{profile.replace('-', '_')}"
        result = summarize(profile, reports[profile], measured_on)
        print(write_results(name, result, markdown(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
