import asyncio
import json
import logging
import math
import time
from pathlib import Path

import pytest
from PIL import Image

from dataset_builder.annotation import AnnotationRequest
from dataset_builder.annotation.openai.annotator import OpenAIAnnotator
from dataset_builder.annotation.openai.cache import AnnotationCache
from dataset_builder.annotation.openai.client import RateLimiter, backoff_delay, retry_after_seconds
from dataset_builder.annotation.openai.config import OpenAIAnnotatorConfig
from dataset_builder.prompts import ANNOTATION_PROMPT
from tests.annotation.helpers import SECRET, cache_lines, run_openai
from tests.annotation.helpers import pair_requests as requests


def test_every_fault_is_survived_or_recorded_and_reruns_send_nothing(server, fast_options, api_key):
    server.state.slow_s = 3.0  # past the 2 s timeout
    faults = ["429", "500", "503", "drop", "slow", "malformed", "content_filter", "refusal", "empty"]
    server.state.faults.extend(faults)
    reqs = requests(8)
    annotator, results = run_openai({**fast_options, "concurrency": 1}, reqs)
    statuses = sorted(r.status for r in results.values())
    # 429/500/503/drop/slow were retried into answers; the four bad replies are recorded as what they are
    assert statuses == sorted(["ok"] * 4 + ["malformed", "content_filter", "refused", "empty"])
    report = annotator.report()
    assert report["requests"] == 8 + 5 and report["sent"] == 8
    assert report["retries_by_reason"] == {
        "http 429": 1,
        "http 500": 1,
        "http 503": 1,
        "connection error": 1,
        "timeout": 1,
    }
    assert all(r.text is None for r in results.values() if r.status != "ok")
    assert all(ANNOTATION_PROMPT not in (r.text or "") and r.text for r in results.values() if r.status == "ok")
    lines = cache_lines(Path(fast_options["cache_path"]))
    assert sorted(line["status"] for line in lines) == statuses  # final answers only, each once
    # a rerun asks for nothing: answers and final refusals come from the cache
    before = server.state.requests
    annotator, again = run_openai(fast_options, reqs)
    assert server.state.requests == before
    assert {k: (r.status, r.text) for k, r in again.items()} == {k: (r.status, r.text) for k, r in results.items()}
    assert annotator.report()["cached"] == 8
    # --retry_failed asks again for the four recorded non-answers, only them
    annotator, third = run_openai(fast_options, reqs, retry_failed=True)
    assert server.state.requests == before + 4
    assert all(r.status == "ok" for r in third.values())


def test_retries_stop_at_the_bound_and_the_pair_is_failed_not_cached(server, fast_options, api_key):
    server.state.always = "500"
    annotator, results = run_openai(fast_options, requests(2), max_retries=2)
    assert server.state.requests == 2 * 3
    assert {r.status for r in results.values()} == {"failed"}
    assert all("gave up after 3 attempts" in r.reason and "http 500" in r.reason for r in results.values())
    assert annotator.report()["failed_by_reason"] == {"http 500": 2}
    assert annotator.report()["retries_by_reason"] == {"http 500": 4}
    assert cache_lines(Path(fast_options["cache_path"])) == []
    server.state.always = None  # a rerun asks again and succeeds
    _, results = run_openai(fast_options, requests(2))
    assert {r.status for r in results.values()} == {"ok"}


def test_retry_after_is_honoured(server, fast_options, api_key):
    server.state.retry_after_s = 0.4
    server.state.faults.extend(["429"])
    start = time.monotonic()
    _, results = run_openai({**fast_options, "concurrency": 1, "backoff_s": 0.001}, requests(1))
    assert time.monotonic() - start >= 0.4
    assert [r.status for r in results.values()] == ["ok"]
    gap = server.state.arrivals[1] - server.state.arrivals[0]
    assert gap >= 0.4


def test_the_rpm_limit_is_respected(server, fast_options, api_key):
    annotator, results = run_openai({**fast_options, "rpm": 600, "concurrency": 4}, requests(12))
    assert {r.status for r in results.values()} == {"ok"}
    arrivals = server.state.arrivals
    # 600/min = one every 0.1 s: any 6 consecutive arrivals span >= 0.5 s, less 0.1 s of scheduling jitter
    assert min(b - a for a, b in zip(arrivals, arrivals[5:])) >= 0.4
    assert arrivals[-1] - arrivals[0] >= 11 * 0.1 - 0.1
    assert annotator.report()["requests_per_minute"] <= 600 * 1.05


def test_the_budget_cap_stops_cleanly_with_the_cache_intact(server, fast_options, api_key):
    cfg = OpenAIAnnotatorConfig(**fast_options)
    probe = OpenAIAnnotator(**fast_options)
    worst = probe.worst_case_usd(probe.plan(requests(1)[0]))
    probe.close()
    cap = worst * 3.5  # room for three requests at their worst case
    annotator, results = run_openai({**fast_options, "concurrency": 2}, requests(8), max_cost_usd=cap)
    report = annotator.report()
    ok = [r for r in results.values() if r.status == "ok"]
    assert report["budget_stopped"] and 1 <= len(ok) <= 3
    assert report["not_sent_budget"] == 8 - len(ok) and server.state.requests == len(ok)
    assert report["cost_usd"]["actual"] <= cap
    assert server.state.total_successes() == len(ok)
    assert {line["id"] for line in cache_lines(cfg.resolved_cache_path)} == {r.id for r in ok}
    # a rerun with room for all finishes the rest, never asking again for what was answered
    _, results = run_openai(fast_options, requests(8), max_cost_usd=worst * 20)
    assert {r.status for r in results.values()} == {"ok"}
    assert max(server.state.successes.values()) == 1 and server.state.total_successes() == 8


def test_estimate_matches_the_tokens_the_server_counts(server, fast_options, api_key, tmp_path):
    # fMoW images (no stored frames): larger than image_max_side, downscaled before sending, detail high
    reqs = []
    for i in range(3):
        paths = []
        for j, size in enumerate([(1200, 800), (900, 1300)]):
            path = tmp_path / f"img_{i}_{j}.jpg"
            Image.new("RGB", size, (i * 40, j * 90, 7)).save(path, "JPEG")
            paths.append(path)
        reqs.append(AnnotationRequest(f"p{i}", tuple(paths)))
    annotator, results = run_openai(fast_options, reqs, image_detail="high", image_max_side=1000)
    assert {r.status for r in results.values()} == {"ok"}
    tokens = annotator.report()["tokens"]
    assert tokens["actual_input"] == tokens["estimated_input"] == tokens["estimated_input_of_answered"]
    assert tokens["input_error_pct"] == 0
    # 1000x667 -> 2x2 tiles; 692x1000 -> 2x2 tiles: 2 x (2833 + 4 x 5667) per pair, plus the text
    assert tokens["actual_input"] > 3 * 2 * (2833 + 4 * 5667)


def test_dry_run_sends_nothing_and_records_the_estimate(server, fast_options, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # a dry run needs no key
    annotator, results = run_openai(fast_options, requests(4), dry_run=True)
    assert server.state.requests == 0
    assert {r.status for r in results.values()} == {"missing"}
    report = json.loads(Path(fast_options["cache_path"]).with_name("annotation_report.json").read_text())
    assert report["tokens"]["estimated_input"] == 4 * (6 + math.ceil(len(ANNOTATION_PROMPT) / 4) + 2 * 2833)
    assert report["cost_usd"]["estimated"] > 0 and report["not_sent_dry_run"] == 4


def test_a_missing_or_rejected_key_is_a_clear_error(server, fast_options, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValueError, match="OPENAI_API_KEY is not set"):
        run_openai(fast_options, requests(1))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong")
    server.state.api_key = SECRET
    with pytest.raises(RuntimeError, match="refused the API key"):
        run_openai(fast_options, requests(3))
    assert cache_lines(Path(fast_options["cache_path"])) == []


def test_the_key_never_reaches_logs_reports_or_the_cache(server, fast_options, api_key, caplog):
    caplog.set_level(logging.DEBUG)
    server.state.faults.extend(["429", "500", "refusal"])
    annotator, _ = run_openai(fast_options, requests(3))
    annotator.write_report()
    assert server.state.headers_seen[0]["authorization"] == f"Bearer {SECRET}"  # it was used
    assert SECRET not in caplog.text
    folder = Path(fast_options["cache_path"]).parent
    for path in folder.iterdir():
        assert SECRET not in path.read_text(), path
    assert SECRET not in annotator.summary_line()


def test_cache_survives_a_torn_last_line(tmp_path):
    path = tmp_path / "c.jsonl"
    with AnnotationCache(path) as cache:
        cache.append({"key": "a", "id": "a", "status": "ok", "text": "A"})
    with open(path, "a") as fh:
        fh.write('{"key": "b", "id": "b", "sta')  # cut by kill -9
    with AnnotationCache(path) as cache:
        assert cache.skipped_lines == 1 and "a" in cache and "b" not in cache
        cache.append({"key": "c", "id": "c", "status": "ok", "text": "C"})
    with AnnotationCache(path) as cache:
        assert {k for k in ("a", "b", "c") if k in cache} == {"a", "c"} and len(cache) == 2


def test_retry_after_and_backoff_helpers():
    assert retry_after_seconds({"retry-after-ms": "250"}) == 0.25
    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) is None
    assert retry_after_seconds({}) is None
    delays = [backoff_delay(a, 1.0, 8.0) for a in range(6) for _ in range(20)]
    assert min(delays) >= 0.5 and max(delays) <= 8.0
    assert all(2 <= backoff_delay(2, 1.0, 60.0) <= 4 for _ in range(20))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("image_detail", "medium", "--image_detail 'medium'"),
        ("concurrency", 0, "--concurrency 0"),
        ("max_cost_usd", -1.0, "--max_cost_usd -1.0"),
        ("base_url", "localhost:8000", "--base_url 'localhost:8000'"),
        ("temperature", 3.0, "--temperature 3.0"),
        ("price_table", "/nonexistent.yaml", "--price_table '/nonexistent.yaml'"),
        ("batch_max_bytes", 300 * 1024 * 1024, "--batch_max_bytes 314572800: the Batch API takes at most"),
        ("batch_max_enqueued_tokens", 0, "--batch_max_enqueued_tokens 0: must be >= 1"),
    ],
)
def test_bad_options_name_the_field_and_value(field, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        OpenAIAnnotatorConfig(**{field: value})


def test_a_cap_needs_a_known_price():
    with pytest.raises(ValueError, match="no price for --model 'my-local-vlm'"):
        OpenAIAnnotator(model="my-local-vlm", max_cost_usd=1.0)


def test_the_tpm_bucket_spaces_large_requests():
    async def go():
        limiter = RateLimiter(rpm=0, tpm=600_000)  # 10,000 tokens/s, a bucket of one second
        stamps = []
        for _ in range(6):
            await limiter.acquire(2_500)
            stamps.append(time.monotonic())
        return stamps

    stamps = asyncio.run(go())
    # the first four fit the full bucket; the next two wait 0.25 s each for their tokens
    assert stamps[3] - stamps[0] < 0.1
    assert stamps[5] - stamps[3] >= 0.45
