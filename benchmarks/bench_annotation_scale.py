"""Annotation at scale: peak RSS of ``geollava-annotate`` at 2,000 and 20,000 pairs, and the Batch path killed midway.

    .venv/bin/python benchmarks/bench_annotation_scale.py            # 2,000 and 20,000 pairs (~10 min on 2 cores)
    .venv/bin/python benchmarks/bench_annotation_scale.py 500 5000   # other sizes
    .venv/bin/python benchmarks/bench_annotation_scale.py --kill-only 20000   # redo only the kill-and-resume run

``geollava-annotate`` runs as a child process (``--dry_run``, async, ``--batch``) on synthetic folders against the
tests' fake OpenAI server; then a ``--batch`` run is SIGKILLed with two batches running and resumed. Writes
benchmarks/results/annotation_scale.{json,md}. See docs/annotation.md.
"""

import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from results_io import RESULTS, write_results  # noqa: E402

from dataset_builder.annotation.openai.cost import load_price_table, pricing_for, request_input_tokens  # noqa: E402
from dataset_builder.atomic import write_parquet, write_text  # noqa: E402
from dataset_builder.prompts import ANNOTATION_PROMPT  # noqa: E402
from dataset_builder.rows import features  # noqa: E402
from tests.annotation.fake_openai import FakeOpenAIServer, FakeState  # noqa: E402


SIZES = (2_000, 20_000)
PAPER_PAIRS = 106_042
FRAME = 64
SHARD_ROWS = 1_000
PER_FILE = 5_000
SAMPLE = 10_000


def _jpeg(rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (FRAME, FRAME, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _row(feats, split: str, i: int, rng: np.random.Generator) -> dict:
    pair_id = f"barn_{i}_1-barn_{i}_0"
    return feats.encode_example(
        {
            "id": pair_id,
            "split": split,
            "category": "barn",
            "location_id": f"barn_{i}",
            "image1": f"barn_{i}_1",
            "image2": f"barn_{i}_0",
            "timestamp1": "2012-01-01T00:00:00Z",
            "timestamp2": "2015-01-01T00:00:00Z",
            "gap_days": 1096,
            "frames": [{"bytes": _jpeg(rng), "path": None}, {"bytes": _jpeg(rng), "path": None}],
            "conversations": [
                {"from": "human", "value": "Describe the changes.\n<video>"},
                {"from": "gpt", "value": ""},
            ],
            "prompt_template_id": 0,
            "gsd": 0.5,
            "country_code": "USA",
            "cloud_cover": 0,
        }
    )


def write_dataset(root: Path, pairs: int, seed: int = 0) -> Path:
    """A Hub-layout folder like geollava-build's (no clips, no card), written straight to Parquet.

    The builder's own schema (``dataset_builder.rows.features``): 1,000-row shards, 5 % test, a ``sample_10k``
    config, two 64 px JPEG frames a pair, empty answers.
    """
    feats, rng = features(with_videos=False, with_changes=False), np.random.default_rng(seed)
    n_test = round(pairs * 0.05)
    splits = {"train": range(pairs - n_test), "test": range(pairs - n_test, pairs)}
    data = root / "data"
    for split, ids in splits.items():
        n_shards = -(-len(ids) // SHARD_ROWS)
        for k in range(n_shards):
            rows = [_row(feats, split, i, rng) for i in ids[k * SHARD_ROWS : (k + 1) * SHARD_ROWS]]
            table = pa.Table.from_pylist(rows, schema=feats.arrow_schema)
            write_parquet(table, data / f"{split}-{k:05d}-of-{n_shards:05d}.parquet")
    chosen = set(np.random.default_rng(seed).choice(len(splits["train"]), min(SAMPLE, len(splits["train"])), False))
    sample = [
        row
        for path in sorted(data.glob("train-*.parquet"))
        for row in pq.read_table(path).to_pylist()
        if int(row["location_id"].split("_")[1]) in chosen
    ]
    for k in range(-(-len(sample) // SHARD_ROWS)):
        table = pa.Table.from_pylist(sample[k * SHARD_ROWS : (k + 1) * SHARD_ROWS], schema=feats.arrow_schema)
        write_parquet(table, data / "sample_10k" / f"train-{k:05d}-of-{-(-len(sample) // SHARD_ROWS):05d}.parquet")
    write_text(
        root / "README.md",
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*\n"
        "  - split: test\n    path: data/test-*\n- config_name: sample_10k\n  data_files:\n  - split: train\n"
        "    path: data/sample_10k/train-*\n---\n# synthetic annotation benchmark\n",
    )
    return root


def annotate(folder: Path, args: list[str], log: Path, kill_when=None) -> dict:
    """Run geollava-annotate under ``/usr/bin/time``: the child's peak RSS, wall time and exit status.

    The child is started by ``time`` (a small process), not by this one: Linux carries the high-water RSS of the
    process that forks (this one holds the fake server's files) into the child's ``ru_maxrss``. With ``kill_when``,
    the child is SIGKILLed as soon as ``kill_when()`` is true.
    """
    env = {**os.environ, "OPENAI_API_KEY": "sk-bench-not-a-real-key", "PYTHONPATH": str(ROOT)}
    rss = log.with_suffix(".rss")
    cmd = ["/usr/bin/time", "-f", "%M", "-o", str(rss), sys.executable, "-m", "dataset_builder.annotation.cli"]
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen([*cmd, str(folder), *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        while kill_when is not None and proc.poll() is None and not kill_when():
            time.sleep(0.05)
        if kill_when is not None and proc.poll() is None:
            for child in psutil.Process(proc.pid).children():
                child.send_signal(signal.SIGKILL)
        proc.wait()
    return {
        "exit": proc.returncode if proc.returncode < 128 else -(proc.returncode - 128),
        "peak_rss_mb": round(int(rss.read_text().split()[-1]) / 1024, 1),
        "wall_s": round(time.perf_counter() - start, 1),
    }


def answered(folder: Path) -> tuple[int, int]:
    """(rows with an answer, rows) over every shard."""
    done = total = 0
    for path in (folder / "data").rglob("*.parquet"):
        for conv in pq.read_table(path, columns=["conversations"]).column(0).to_pylist():
            total += 1
            done += bool(conv[-1]["value"])
    return done, total


def server_check(state: FakeState, pairs: int) -> dict:
    """What the server saw: every pair answered once, nothing billed twice, the batches and the queue."""
    batches = [b for b in state.batches.values() if b["status"] == "completed"]
    return {
        "answered_pairs": len(state.successes),
        "max_answers_per_pair": max(state.successes.values(), default=0),
        "max_billed_per_pair": max(state.billed.values(), default=0),
        "every_pair_once": len(state.billed) == pairs and set(state.billed.values()) == {1},
        "batches": [b["request_counts"]["total"] for b in batches],
        "peak_enqueued_tokens": state.peak_enqueued_tokens,
    }


def limit_tokens(per_file: int) -> int:
    """--batch_max_enqueued_tokens of the runs: two full batch files at once."""
    rule = pricing_for("gpt-4o-mini", load_price_table()).image_rule
    return 2 * per_file * request_input_tokens(ANNOTATION_PROMPT, [(FRAME, FRAME)] * 2, "low", rule)


def batch_args(cache: Path, base_url: str, per_file: int) -> list[str]:
    """The --batch runs' options: ``per_file`` requests a file, two files' tokens in the queue at once."""
    args = ["--overwrite", "--batch", "--batch_max_requests", str(per_file), "--batch_poll_s", "0.2"]
    args += ["--batch_max_enqueued_tokens", str(limit_tokens(per_file))]
    return [*args, "--cache_path", str(cache), "--base_url", base_url]


def run_size(pairs: int, tmp: Path) -> tuple[dict, Path]:
    """Write the dataset, then --dry_run, async and --batch runs, each a fresh cache and a fresh fake server."""
    start = time.perf_counter()
    folder = write_dataset(tmp / f"ds{pairs}", pairs)
    out = {"pairs": pairs, "rows": answered(folder)[1], "write_dataset_s": round(time.perf_counter() - start, 1)}
    log = tmp / f"log{pairs}.txt"
    out["dry_run"] = annotate(folder, ["--dry_run", "--cache_path", str(tmp / f"dry{pairs}.jsonl")], log)
    with FakeOpenAIServer(FakeState()) as server:
        args = ["--base_url", server.base_url, "--concurrency", "16", "--rpm", "0", "--tpm", "0"]
        out["async"] = annotate(folder, [*args, "--cache_path", str(tmp / f"async{pairs}.jsonl")], log)
        out["async"] |= {"rows_answered": answered(folder)[0]} | server_check(server.state, pairs)
    with FakeOpenAIServer(FakeState(max_enqueued_tokens=limit_tokens(PER_FILE))) as server:
        out["batch"] = annotate(folder, batch_args(tmp / f"batch{pairs}.jsonl", server.base_url, PER_FILE), log)
        out["batch"] |= {"rows_answered": answered(folder)[0]} | server_check(server.state, pairs)
    print(json.dumps(out), flush=True)
    return out, folder


def run_kill(folder: Path, pairs: int, tmp: Path) -> dict:
    """--batch killed (SIGKILL) once two batches run, then resumed: the server's view of what was paid.

    A quarter of the pairs a file (5,000 at 20,000 pairs): the server must have answered, and billed, every pair
    once, in 4 batch files, with the enqueued tokens never over ``--batch_max_enqueued_tokens``.
    """
    cache = tmp / "kill.jsonl"
    state_file = cache.with_name("kill.batches.json")

    def two_running() -> bool:
        try:
            entries = json.loads(state_file.read_text())["batches"].values()
        except (OSError, ValueError):
            return False
        return sum(1 for e in entries if e["batch_id"]) >= 2

    per_file = -(-pairs // 4)
    # batches last ~150 polls (at 0.2 s, two running: ~15 s), longer than writing a file: the queue fills up
    fake = FakeState(max_enqueued_tokens=limit_tokens(per_file), batch_polls_to_finish=150)
    with FakeOpenAIServer(fake) as server:
        args, log = batch_args(cache, server.base_url, per_file), tmp / "kill.txt"
        killed = annotate(folder, args, log, kill_when=two_running)
        resumed = annotate(folder, args, log)
        check = server_check(server.state, pairs)
        inputs = sum(f["purpose"] == "batch" for f in server.state.files.values())
    report = json.loads((folder / "annotation_report.json").read_text())
    out = {"pairs": pairs, "killed": killed, "resumed": resumed, "rows_answered": answered(folder)[0]}
    out |= check | {"input_files_uploaded": inputs, "per_file": per_file}
    out["max_enqueued_tokens"] = limit_tokens(per_file)
    out["report_batches"] = [
        {k: b[k] for k in ("file", "state", "requests", "request_counts")} for b in report["batches"]
    ]
    print(json.dumps(out), flush=True)
    return out


def extrapolate(small: dict, large: dict) -> dict:
    """Per mode: the larger run's peak RSS over the smaller's, and a straight line through both runs (RSS and wall
    time against pairs, the slope clamped at 0) read at the paper's 106,042 pairs."""
    n_s, n_l, out = small["pairs"], large["pairs"], {}
    for mode in ("dry_run", "async", "batch"):
        (r_s, t_s), (r_l, t_l) = ((run[mode]["peak_rss_mb"], run[mode]["wall_s"]) for run in (small, large))
        rss_slope, time_slope = max(0.0, (r_l - r_s) / (n_l - n_s)), max(0.0, (t_l - t_s) / (n_l - n_s))
        out[mode] = {
            "ratio_large_to_small": round(r_l / r_s, 3),
            "kb_per_pair": round(rss_slope * 1024, 3),
            "peak_rss_mb_at_106k": round(r_l + rss_slope * (PAPER_PAIRS - n_l), 1),
            "wall_s_at_106k": round(t_l + time_slope * (PAPER_PAIRS - n_l)),
        }
    build = json.loads((RESULTS / "build.json").read_text())
    out["build"] = {
        "measured_pairs": build["pairs"],
        "pairs_per_s": build["pairs_per_s"],
        "peak_rss_mb": build["peak_rss_mb"],
        "wall_s_at_106k": round(PAPER_PAIRS / build["pairs_per_s"]),
    }
    return out


def markdown(result: dict) -> str:
    """The results page."""
    runs, ext, kill = result["runs"], result["extrapolation"], result.get("kill_and_resume")
    small, large = runs[0]["pairs"], runs[-1]["pairs"]
    lines = [
        "# Annotation at scale: peak memory of geollava-annotate",
        "",
        f"Synthetic folders ({FRAME} px frames, {SHARD_ROWS:,}-row shards, `sample_10k`), the tests' fake OpenAI "
        "server on loopback; peak RSS of the `geollava-annotate` process (`/usr/bin/time -f %M`). One run each "
        "on a shared 2-core machine: times are noisy.",
        "",
        "| mode | " + " | ".join(f"{r['pairs']:,} pairs: RSS MB / s" for r in runs) + " | ratio | KB a pair |",
        "|---|" + "---|" * (len(runs) + 2),
    ]
    for mode in ("dry_run", "async", "batch"):
        cells = " | ".join(f"{r[mode]['peak_rss_mb']} / {r[mode]['wall_s']}" for r in runs)
        lines.append(f"| `{mode}` | {cells} | {ext[mode]['ratio_large_to_small']} | {ext[mode]['kb_per_pair']} |")
    b = ext["build"]
    lines += [
        "",
        f"Goal: the {large:,}-pair run within 1.2x of the {small:,}-pair run (memory flat in the number of pairs). "
        f"Memory is held per shard and per read batch, so compare sizes that both fill whole {SHARD_ROWS:,}-row "
        "shards (the default 2,000 and 20,000 do): below that, the shard's size, not the number of pairs, moves the "
        "RSS.",
        "",
        f"## Extrapolated to the paper's {PAPER_PAIRS:,} pairs",
        "",
        "| stage | peak RSS (MB) | time (s) |",
        "|---|---|---|",
        f"| geollava-build (benchmarks/results/build.json: {b['pairs_per_s']} pairs/s; RSS measured at "
        f"{b['measured_pairs']} pairs) | {b['peak_rss_mb']} | {b['wall_s_at_106k']:,} |",
    ]
    for mode in ("dry_run", "async", "batch"):
        lines.append(
            f"| geollava-annotate `{mode}` | {ext[mode]['peak_rss_mb_at_106k']} | {ext[mode]['wall_s_at_106k']:,} |"
        )
    lines += [
        "",
        "Annotation times are the client's own work against a server that answers at once; against OpenAI the "
        "sync path is bound by the account's RPM/TPM (106K pairs at 5,000 RPM: 21 min at best) and the Batch path "
        "by the batch queue limit and the 24 h window.",
    ]
    if kill:
        lines += [
            "",
            f"## `--batch` on {kill['pairs']:,} pairs, SIGKILLed with two batches running, then resumed",
            "",
            f"- batch files: {kill['input_files_uploaded']} uploaded, batches of {kill['batches']} requests",
            f"- peak enqueued tokens at the server: {kill['peak_enqueued_tokens']:,} "
            f"(limit {kill['max_enqueued_tokens']:,})",
            f"- pairs answered: {kill['answered_pairs']:,}; most answers for one pair: "
            f"{kill['max_answers_per_pair']}; most billed for one pair: {kill['max_billed_per_pair']}; "
            f"every pair once: {kill['every_pair_once']}; rows answered: {kill['rows_answered']:,}",
            f"- killed run: {kill['killed']['peak_rss_mb']} MB, {kill['killed']['wall_s']} s; resumed run: "
            f"{kill['resumed']['peak_rss_mb']} MB, {kill['resumed']['wall_s']} s",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run every size, the kill at the largest, and write the results (``--kill-only N``: redo only the kill)."""
    kill_only = sys.argv[1:2] == ["--kill-only"]
    sizes = [int(a) for a in sys.argv[1 + kill_only :]] or list(SIZES)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if kill_only:
            result = json.loads((RESULTS / "annotation_scale.json").read_text())
            folder = write_dataset(tmp / "ds", sizes[-1])
        else:
            runs, folder = [], None
            for pairs in sizes:
                run, folder = run_size(pairs, tmp)
                runs.append(run)
            result = {"runs": runs, "extrapolation": extrapolate(runs[0], runs[-1]), "frame_px": FRAME}
        result["kill_and_resume"] = run_kill(folder, sizes[-1], tmp)
    result["machine"] = {"cores": os.cpu_count(), "note": "shared machine; one run each"}
    print(write_results("annotation_scale", result, markdown(result)))


if __name__ == "__main__":
    main()
