import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
from datasets import load_dataset

from dataset_builder.annotation.cli import main, with_answer
from tests.annotation.helpers import REPO_ROOT, SECRET, cache_lines, make_dataset, read_answers


def cli_args(folder, fast_options, *extra):
    args = [str(folder)]
    for key, value in fast_options.items():
        args += [f"--{key}", str(value)]
    return [*args, *extra]


def all_ids(answers):
    return {pid for shard in answers.values() for pid in shard}


def test_fills_every_empty_answer_in_place_and_keeps_the_features(tmp_path, server, fast_options, api_key, capsys):
    folder = make_dataset(tmp_path / "ds", answered=2)
    features = {c: load_dataset(str(folder), c, split="train").features for c in ("default", "sample_10k")}
    readme = (folder / "README.md").read_bytes()
    assert main(cli_args(folder, fast_options)) == 0
    out = capsys.readouterr().out
    assert "7 pair(s) to annotate" in out and "$" in out  # 9 rows, 2 already answered; estimate printed first
    answers = read_answers(folder)
    for shard in answers.values():
        assert all(text for text in shard.values()), shard
    # rows answered before are left alone; sample_10k rows got the same answers as the default config's
    assert answers["data/train-00000-of-00002.parquet"]["barn_0_1-barn_0_0"] == "old answer 0"
    default = {**answers["data/train-00000-of-00002.parquet"], **answers["data/train-00001-of-00002.parquet"]}
    assert all(default[pid] == text for pid, text in answers["data/sample_10k/train-00000-of-00001.parquet"].items())
    assert server.state.total_successes() == 7 and max(server.state.successes.values()) == 1
    for config, feats in features.items():
        ds = load_dataset(str(folder), config, split="train")
        assert ds.features == feats and ds[0]["frames"][0].size == (48, 40)
    assert (folder / "README.md").read_bytes() == readme  # no build_report.json: the card is not ours to render
    report = json.loads((folder / "annotation_report.json").read_text())
    assert (report["pairs"], report["succeeded"], report["cached"]) == (7, 7, 0)
    assert not list(folder.rglob(".*.tmp"))
    for path in folder.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_overwrite_refreshes_and_dry_run_changes_nothing(tmp_path, server, fast_options, api_key, capsys):
    folder = make_dataset(tmp_path / "ds", answered=6)
    before = {p: p.read_bytes() for p in folder.rglob("*.parquet")}
    assert main(cli_args(folder, fast_options, "--overwrite", "--dry_run")) == 0
    assert "9 pair(s) to annotate" in capsys.readouterr().out
    assert server.state.requests == 0
    assert {p: p.read_bytes() for p in folder.rglob("*.parquet")} == before
    assert main(cli_args(folder, fast_options, "--overwrite")) == 0
    answers = read_answers(folder)
    assert not any(text.startswith("old answer") for shard in answers.values() for text in shard.values())


def test_refusals_are_reported_and_failures_exit_nonzero(tmp_path, server, fast_options, api_key, capsys):
    folder = make_dataset(tmp_path / "ds", n_train=4, n_test=0, sample=0)
    server.state.faults.extend(["refusal"])
    assert main(cli_args(folder, {**fast_options, "concurrency": 1})) == 0
    report = json.loads((folder / "annotation_report.json").read_text())
    assert report["refused"] == 1 and report["succeeded"] == 3
    assert sum(not text for shard in read_answers(folder).values() for text in shard.values()) == 1
    server.state.always = "503"  # the refused pair is final; the others are done: nothing is asked
    assert main(cli_args(folder, {**fast_options, "max_retries": 1})) == 0
    assert main(cli_args(folder, {**fast_options, "max_retries": 1}, "--retry_failed")) == 1
    assert "not annotated yet" in capsys.readouterr().err


def test_a_folder_that_is_not_a_dataset_is_refused(tmp_path, capsys):
    assert main([str(tmp_path)]) == 1
    assert "no data/*.parquet shards (not a built dataset)" in capsys.readouterr().err


def test_with_answer_appends_a_missing_gpt_turn():
    human = {"from": "human", "value": "q"}
    assert with_answer([human], "a") == [human, {"from": "gpt", "value": "a"}]
    assert with_answer([human, {"from": "gpt", "value": ""}], "b")[-1] == {"from": "gpt", "value": "b"}


def _subprocess(folder, fast_options, *extra, log=None):
    env = {**os.environ, "OPENAI_API_KEY": SECRET, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "dataset_builder.annotation.cli", *cli_args(folder, fast_options, *extra)],
        cwd=REPO_ROOT,
        env=env,
        stdout=log or subprocess.PIPE,  # a run that will be killed logs to a file: a full pipe would block it
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait(predicate, proc, timeout=60):
    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early with status {proc.returncode}")
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


def test_sigkill_midway_then_rerun_annotates_every_pair_exactly_once(tmp_path, server, fast_options, api_key):
    folder = make_dataset(tmp_path / "ds", n_train=10, n_test=4, sample=4)
    cache = Path(fast_options["cache_path"])
    before = read_answers(folder)
    k = 5
    server.state.hold_after_successes = k  # requests after the k-th answer hang until the kill
    proc = _subprocess(folder, fast_options, log=open(tmp_path / "run1.log", "w"))  # noqa: SIM115
    _wait(lambda: len(cache_lines(cache)) >= k, proc)
    time.sleep(0.2)  # the other workers are now waiting on held requests
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    assert len(cache_lines(cache)) == k == server.state.total_successes()
    # every shard still reads; each holds either its old rows or whole answers that are in the cache
    cached = {line["id"]: line["text"] for line in cache_lines(cache)}
    for shard, rows in read_answers(folder).items():
        assert all(text == "" or cached[pid] == text for pid, text in rows.items()), shard
    written = {pid for rows in read_answers(folder).values() for pid, text in rows.items() if text}
    server.state.released = True
    server.state.hold_after_successes = None
    rerun = _subprocess(folder, fast_options)
    output, _ = rerun.communicate(timeout=90)
    assert rerun.returncode == 0, output
    # answers already in a shard are not asked for; the others answered before the kill come from the cache
    assert f"{14 - len(written)} pair(s) to annotate, {k - len(written)} already cached" in output
    answers = read_answers(folder)
    assert all(text for shard in answers.values() for text in shard.values())
    # at the server: every pair answered, none answered twice
    assert server.state.total_successes() == 14 and set(server.state.successes.values()) == {1}
    assert len(cache_lines(cache)) == 14 and len({line["key"] for line in cache_lines(cache)}) == 14
    assert all_ids(answers) == all_ids(before)


def test_batch_end_to_end_with_a_restart_while_in_progress(tmp_path, server, fast_options, api_key):
    folder = make_dataset(tmp_path / "ds", n_train=6, n_test=2, sample=2)
    cache = Path(fast_options["cache_path"])
    state_file = cache.with_name("answers.batches.json")
    server.state.hold_batches = True
    server.state.faults.extend(["ok", "refusal"])
    log = open(tmp_path / "run1.log", "w")  # noqa: SIM115
    proc = _subprocess(folder, fast_options, "--batch", "--batch_max_requests", "5", log=log)
    _wait(
        lambda: (
            state_file.exists()
            and sum(1 for b in json.loads(state_file.read_text())["batches"].values() if b["batch_id"]) == 2
            and any(b["status"] == "in_progress" for b in server.state.batches.values())
        ),
        proc,
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    # the first run died with its two batches (5 + 3 requests) running; the restart resumes them, sends nothing new
    uploads_before = len(server.state.files)
    server.state.hold_batches = False
    rerun = _subprocess(folder, fast_options, "--batch", "--batch_max_requests", "5")
    output, _ = rerun.communicate(timeout=90)
    assert rerun.returncode == 0, output
    batches = list(server.state.batches.values())
    assert len(batches) == 2 and {b["request_counts"]["total"] for b in batches} == {5, 3}
    assert len(server.state.files) - uploads_before == 2  # the two output files, no new input
    assert set(server.state.successes.values()) == {1} and server.state.total_successes() == 7
    report = json.loads((folder / "annotation_report.json").read_text())
    assert (report["succeeded"], report["refused"]) == (7, 1)
    assert report["cost_usd"]["batch_discount"] == 0.5
    answers = read_answers(folder)
    assert sum(not text for shard in answers.values() for text in shard.values()) == 1  # the refusal (no sample row)
    # a third run sends nothing: every answer is in the cache
    n_batches = len(server.state.batches)
    assert main(cli_args(folder, fast_options, "--batch")) == 0
    assert len(server.state.batches) == n_batches
    assert pq.read_table(folder / "data" / "test-00000-of-00001.parquet").num_rows == 2
