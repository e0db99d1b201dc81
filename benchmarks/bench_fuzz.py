"""The fuzz campaign's figures: inputs tried per parser and what became of them, and how long the folder takes.

    .venv/bin/python benchmarks/bench_fuzz.py

Runs ``pytest tests/fuzz`` (the same derandomized examples as ``make test``) with ``GEOLLAVA_FUZZ_REPORT`` set, so
the tests count every input by outcome class; writes benchmarks/results/fuzz.json and fuzz.md (the README's
"Reliability" section quotes the table). Exits non-zero if a fuzz test failed.
"""

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results_io import write_results


ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        counts_path = Path(tmp) / "counts.json"
        env = {**os.environ, "GEOLLAVA_FUZZ_REPORT": str(counts_path)}
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "tests/fuzz", "-q", "-p", "no:cacheprovider"], cwd=ROOT, env=env
        )
        wall = time.perf_counter() - start
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        if not counts_path.exists():
            print(f"bench_fuzz: pytest exited {proc.returncode} and wrote no counts", file=sys.stderr)
            return 1
        counts = json.loads(counts_path.read_text())
    result = {
        "pytest_exit_status": proc.returncode,
        "wall_s": round(wall, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "cpus": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "parsers": counts["parsers"],
    }
    lines = [
        "# Fuzz campaign (hypothesis, derandomized)",
        "",
        f"`pytest tests/fuzz`: {result['wall_s']} s wall, {result['cpu_s']} s CPU (imports included) on "
        f"{result['cpus']} CPUs, load average {result['load_average_1min']} (a shared machine: one run).",
        "",
        "| parser | tests (max_examples) | inputs | outcomes |",
        "|---|---|---|---|",
    ]
    for parser, info in result["parsers"].items():
        tests = ", ".join(f"{name} ({n})" for name, n in info["tests"].items())
        outcomes = "; ".join(f"{outcome}: {n}" for outcome, n in info["outcomes"].items())
        lines.append(f"| {parser} | {tests} | {info['inputs']} | {outcomes} |")
    total = sum(info["inputs"] for info in result["parsers"].values())
    lines += ["", f"{total} inputs in all; no unhandled exception (pytest exit status {proc.returncode})."]
    print(write_results("fuzz", result, lines))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
