"""Run every benchmark (`benchmarks/bench_*.py`, then `gpu_train.py`) and index their results.

    make bench

Each script writes `benchmarks/results/<name>.json` and `.md`; `bench_quickstart.py` (three fresh quickstart runs,
about 15 minutes) runs last, after the quick ones. The long-simple quickstart profile (~30 minutes) is not run: its
last measured report stays in `benchmarks/results/quickstart_long_simple.{json,md}`. This runner writes
`benchmarks/results/README.md`, a table of which ran, how long each took and whether it succeeded. A failing
benchmark is reported and the others still run; the exit code is non-zero if any failed.
"""

import json
import subprocess
import sys
import time
from pathlib import Path


HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def main() -> int:
    RESULTS.mkdir(exist_ok=True)
    # the quickstart bench takes longest: the others' results come first
    scripts = sorted(HERE.glob("bench_*.py"), key=lambda p: (p.name == "bench_quickstart.py", p.name))
    if (HERE / "gpu_train.py").exists():
        scripts.append(HERE / "gpu_train.py")
    only = set(sys.argv[1:])
    rows, failed = [], 0
    for script in scripts:
        name = script.stem.removeprefix("bench_")
        if only and name not in only:
            continue
        print(f"[bench] {name} ...", flush=True)
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, str(script)], cwd=HERE.parent)
        seconds = time.perf_counter() - start
        ok = proc.returncode == 0
        failed += not ok
        rows.append({"benchmark": name, "ok": ok, "seconds": round(seconds, 1)})
        print(f"[bench] {name}: {'ok' if ok else f'FAILED (exit {proc.returncode})'} in {seconds:.1f} s", flush=True)
    lines = ["# Benchmark results", "", "| benchmark | result | wall time (s) | files |", "|---|---|---|---|"]
    for row in rows:
        files = ", ".join(f"[{p.name}]({p.name})" for p in sorted(RESULTS.glob(f"{row['benchmark']}.*")))
        lines.append(f"| {row['benchmark']} | {'ok' if row['ok'] else 'FAILED'} | {row['seconds']} | {files} |")
    (RESULTS / "README.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "index.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
