"""The Batch path at scale: split input files, the enqueued-token limit, refusals, and a kill in every state.

Every test checks the server's side: each pair answered (and billed) exactly once, whatever was killed or refused.
The 20,000-pair version of the queue test is ``benchmarks/bench_annotation_scale.py``.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dataset_builder.annotation import get_annotator
from dataset_builder.annotation.openai.batch import state_path
from tests.annotation.batch_crash import STATES
from tests.annotation.helpers import REPO_ROOT, SECRET, cache_lines, pair_requests


def run(options, reqs, **kw):
    annotator = get_annotator("openai", **{**options, "batch": True, **kw})
    try:
        results = list(annotator.annotate(reqs))
    finally:
        annotator.close()
    return annotator, results


def crash(kill_at: str, count: int, n: int, options: dict) -> None:
    """Run the Batch path on ``n`` pairs in a subprocess that SIGKILLs itself at ``kill_at``."""
    env = {**os.environ, "OPENAI_API_KEY": SECRET, "PYTHONPATH": str(REPO_ROOT)}
    args = [sys.executable, "-m", "tests.annotation.batch_crash", kill_at, str(count), str(n), json.dumps(options)]
    proc = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr


def request_tokens(options) -> int:
    """Estimated input tokens of one test pair (all test pairs have the same frame sizes)."""
    annotator = get_annotator("openai", **options)
    try:
        return annotator.plan(pair_requests(1)[0]).input_tokens
    finally:
        annotator.close()


def assert_each_pair_answered_and_billed_once(server, results, n, cache_path):
    assert len(results) == n and {r.status for r in results} == {"ok"}
    assert len({r.id for r in results}) == n
    assert server.state.total_successes() == n and set(server.state.billed.values()) == {1}
    lines = cache_lines(Path(cache_path))
    assert len(lines) == n == len({line["key"] for line in lines})  # merged once, even after a kill mid-merge
    # nothing was left behind: every batch file merged, its local files removed
    folder = Path(cache_path).with_name(f"{Path(cache_path).stem}.batches")
    assert [p.name for p in folder.iterdir()] == [".lock"]
    state = json.loads(state_path(Path(cache_path)).read_text())
    assert {e["state"] for e in state["batches"].values()} <= {"merged", "split"}


@pytest.mark.parametrize(
    ("kill_at", "count"),
    [
        ("written", 1),  # a file on disk, not uploaded
        ("upload-lost", 1),  # uploaded, the run died before it knew the file id
        ("uploaded", 1),  # uploaded and recorded, no batch yet
        ("create-lost", 1),  # the batch exists at the server, the run died before recording it
        ("submitted", 2),  # two batches running
        ("downloaded", 1),  # results on disk, not merged
        ("merging", 1),  # half of a batch's answers in the cache
    ],
)
def test_a_kill_in_each_batch_state_resumes_without_paying_twice(kill_at, count, server, fast_options, api_key):
    n, options = 8, {**fast_options, "batch_max_requests": 3}
    crash(kill_at, count, n, options)
    cache = Path(options["cache_path"])
    states = [e["state"] for e in json.loads(state_path(cache).read_text())["batches"].values()]
    # the kill happened where it was asked
    if kill_at in STATES:
        assert states.count(kill_at) >= count, states
    elif kill_at == "upload-lost":
        assert states[0] == "written" and len(server.state.files) == 1
    elif kill_at == "create-lost":
        assert states[0] == "uploaded" and len(server.state.batches) == 1
    else:
        merged = [line for line in cache_lines(cache) if line.get("batch_id")]
        assert len(merged) == 2 and "downloaded" in states
    _, results = run(options, pair_requests(n))
    assert_each_pair_answered_and_billed_once(server, results, n, cache)
    batches = [b for b in server.state.batches.values() if b["status"] == "completed"]
    assert sum(b["request_counts"]["total"] for b in batches) == n  # no request in two batches


def test_files_are_split_and_the_queue_stays_under_the_enqueued_limit_across_a_kill(server, fast_options, api_key):
    n, per_file = 40, 10
    limit = 2 * per_file * request_tokens(fast_options)  # room for two files at once
    server.state.max_enqueued_tokens = limit  # the server would refuse a third (it never has to)
    options = {**fast_options, "batch_max_requests": per_file, "batch_max_enqueued_tokens": limit}
    crash("submitted", 2, n, options)
    assert len(server.state.batches) == 2
    annotator, results = run(options, pair_requests(n))
    assert_each_pair_answered_and_billed_once(server, results, n, options["cache_path"])
    batches = list(server.state.batches.values())
    assert [b["request_counts"]["total"] for b in batches] == [per_file] * 4 and len(server.state.files) == 4 + 4
    assert {b["status"] for b in batches} == {"completed"}  # no token_limit_exceeded refusal
    assert server.state.peak_enqueued_tokens == limit  # two files at once, never a third
    report = annotator.report()
    assert report["batch_queue"]["peak_enqueued_tokens"] <= limit
    assert [(b["state"], b["requests"]) for b in report["batches"]] == [("merged", per_file)] * 4
    assert all(b["request_counts"]["completed"] == per_file for b in report["batches"])


@pytest.mark.parametrize("limit", ["requests", "bytes"])
def test_an_input_file_over_the_apis_limit_is_split_until_it_fits(limit, server, fast_options, api_key):
    n = 8
    if limit == "requests":
        server.state.batch_max_requests = 3
    else:
        annotator = get_annotator("openai", **fast_options)
        line = len(json.dumps({"body": annotator.planner.chat_body(annotator.plan(pair_requests(1)[0]))}))
        annotator.close()
        server.state.batch_max_bytes = int(2.5 * line)  # two requests fit, three do not
    annotator, results = run(fast_options, pair_requests(n))
    assert_each_pair_answered_and_billed_once(server, results, n, fast_options["cache_path"])
    refused = [b for b in annotator.report()["batches"] if b["state"] == "split"]
    assert len(refused) == 3 and all("maximum" in b["error"] for b in refused)  # 8 -> 4 + 4 -> 2 + 2 + 2 + 2
    assert sorted(b["request_counts"]["total"] for b in server.state.batches.values()) == [2, 2, 2, 2]


def test_a_request_too_large_for_any_batch_fails_clearly_and_is_asked_again_later(server, fast_options, api_key):
    server.state.batch_max_bytes = 1000  # below one request
    annotator, results = run(fast_options, pair_requests(2))
    assert [r.status for r in results] == ["failed", "failed"]
    assert all("too large for the Batch API" in r.reason and "maximum" in r.reason for r in results)
    assert not server.state.billed and cache_lines(Path(fast_options["cache_path"])) == []
    server.state.batch_max_bytes = 10**9
    _, results = run(fast_options, pair_requests(2))
    assert {r.status for r in results} == {"ok"} and set(server.state.billed.values()) == {1}


def test_a_token_limit_refusal_is_resubmitted_when_a_batch_finishes(server, fast_options, api_key):
    n, per_file = 30, 10
    one_file = per_file * request_tokens(fast_options)
    server.state.max_enqueued_tokens = one_file  # others' batches fill the rest of the queue
    options = {**fast_options, "batch_max_requests": per_file, "batch_max_enqueued_tokens": 3 * one_file}
    annotator, results = run(options, pair_requests(n))
    assert_each_pair_answered_and_billed_once(server, results, n, options["cache_path"])
    queue = annotator.report()["batch_queue"]
    assert queue["token_limit_refusals"] >= 1 and server.state.peak_enqueued_tokens <= one_file
    refused = [b for b in server.state.batches.values() if b["status"] == "failed"]
    assert refused and all(b["errors"]["data"][0]["code"] == "token_limit_exceeded" for b in refused)
    assert len(server.state.files) == 3 + 3  # one upload per file, reused after each refusal, and 3 outputs


def test_batch_calls_share_the_retry_policy_and_its_counts(server, fast_options, api_key):
    server.state.batch_faults.extend(["429", "500", "503"])  # upload, then batch creation twice
    annotator, results = run(fast_options, pair_requests(3))
    assert {r.status for r in results} == {"ok"}
    assert annotator.report()["retries_by_reason"] == {"http 429": 1, "http 500": 1, "http 503": 1}
    server.state.batch_faults.extend(["500"] * 3)
    with pytest.raises(RuntimeError, match=r"http 500: gave up after 3 attempts \(3x http 500\)"):
        run(fast_options, pair_requests(2, start=10), max_retries=2)
    # the file written before the failure is resumed by the next run, not written again
    _, results = run(fast_options, pair_requests(2, start=10))
    assert {r.status for r in results} == {"ok"} and set(server.state.billed.values()) == {1}


def test_a_batch_the_endpoint_no_longer_has_fails_its_pairs_and_a_rerun_asks_again(server, fast_options, api_key):
    options = {**fast_options, "batch_max_requests": 3}
    server.state.hold_batches = True
    crash("submitted", 1, 3, options)
    server.state.batches.clear()  # expired, or deleted on the platform
    server.state.hold_batches = False
    annotator, results = run(options, pair_requests(3))
    assert [r.status for r in results] == ["failed"] * 3 and all("not found" in r.reason for r in results)
    assert annotator.report()["batches"][0]["state"] == "failed"
    _, results = run(options, pair_requests(3))
    assert {r.status for r in results} == {"ok"} and set(server.state.billed.values()) == {1}


def test_a_batch_created_whose_reply_was_lost_is_found_not_created_twice(server, fast_options, api_key):
    server.state.batch_faults.extend(["pass", "lost"])  # the upload; the batch is created, its reply lost
    annotator, results = run(fast_options, pair_requests(3))
    assert {r.status for r in results} == {"ok"} and len(server.state.batches) == 1
    assert set(server.state.billed.values()) == {1} and len(server.state.billed) == 3
    assert annotator.report()["retries_by_reason"] == {"http 500": 1}


def test_a_state_file_of_another_format_stops_the_run_and_is_left_as_it_was(server, fast_options, api_key):
    state = state_path(Path(fast_options["cache_path"]))
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"version": 1, "uploads": {}, "batches": {}}))
    before = state.read_text()
    with pytest.raises(RuntimeError, match=r"batch state of version 1, expected 2"):
        run(fast_options, pair_requests(2))
    assert state.read_text() == before and server.state.requests == 0 and not server.state.files
    state.unlink()  # and the lock was released: the next run goes through
    _, results = run(fast_options, pair_requests(2))
    assert {r.status for r in results} == {"ok"}
