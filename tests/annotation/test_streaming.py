"""Bounded memory by construction: requests read only as answers come back, and a cache index of key hashes."""

from pathlib import Path

import pytest

from dataset_builder.annotation import get_annotator
from dataset_builder.annotation.openai import cache as cache_module
from dataset_builder.annotation.openai.batch import state_path
from dataset_builder.annotation.openai.cache import AnnotationCache
from tests.annotation.helpers import pair_requests


def test_requests_are_read_only_as_fast_as_answers_come_back(server, fast_options, api_key):
    server.state.latency_s = 0.05
    concurrency, n = 2, 40
    pulled, gaps = [0], []

    def requests():
        for request in pair_requests(n):
            pulled[0] += 1
            yield request

    annotator = get_annotator("openai", **{**fast_options, "concurrency": concurrency})
    results = []
    for result in annotator.annotate(requests()):
        results.append(result)
        gaps.append(pulled[0] - len(results))
    annotator.close()
    assert len(results) == n and {r.status for r in results} == {"ok"}
    # at most the window (2 x concurrency) in flight, as many answered but not yet handed on, and one in hand;
    # planning everything before sending would show a gap of n - 1
    assert max(gaps) <= 2 * 2 * concurrency + 1, gaps
    assert server.state.total_successes() == n


def test_a_later_answer_for_the_same_key_replaces_the_earlier_one_across_a_reopen(tmp_path):
    path = tmp_path / "c.jsonl"
    with AnnotationCache(path) as cache:
        cache.append_many([{"key": f"k{i}", "id": f"k{i}", "status": "refused", "text": None} for i in range(2000)])
        cache.append({"key": "k7", "id": "k7", "status": "ok", "text": "asked again"})  # --retry_failed
        assert cache.get("k7")["text"] == "asked again" and cache.get("k8")["status"] == "refused"
    with AnnotationCache(path) as cache:
        assert len(cache) == 2000 and cache.get("k7")["text"] == "asked again"
        assert all(cache.get(f"k{i}")["status"] == "refused" for i in range(2000) if i != 7)


def test_the_cache_reads_entries_back_and_never_returns_another_keys_answer(tmp_path, monkeypatch):
    path = tmp_path / "c.jsonl"
    with AnnotationCache(path) as cache:
        cache.append_many([{"key": k, "id": k, "status": "ok", "text": k.upper()} for k in ("a", "b")])
        assert cache.get("a")["text"] == "A" and cache.get("b")["text"] == "B" and cache.get("c") is None
    with AnnotationCache(path) as cache:  # reopened: the index is rebuilt from the file
        assert cache.get("b")["text"] == "B" and len(cache) == 2
    monkeypatch.setattr(cache_module, "string_hash", lambda text: 42)  # every key collides
    with AnnotationCache(path) as cache:
        assert cache.get("a") is None  # the index points at b's line, whose key is not a's
        assert cache.get("b")["text"] == "B" and cache.get("zzz") is None


@pytest.mark.parametrize("batch", [False, True])
def test_a_dry_run_estimates_every_pair_and_sends_or_writes_nothing(batch, server, fast_options, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    annotator = get_annotator("openai", **{**fast_options, "dry_run": True, "batch": batch})
    results = list(annotator.annotate(pair_requests(5)))
    annotator.close()
    assert [r.status for r in results] == ["missing"] * 5 and server.state.requests == 0
    one = annotator.planner.plan(pair_requests(1)[0]).input_tokens
    assert annotator.report()["tokens"]["estimated_input"] == 5 * one
    assert not state_path(Path(fast_options["cache_path"])).exists()  # no batch file written either
