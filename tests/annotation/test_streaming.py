"""Bounded memory by construction: requests read only as answers come back, and a 16-byte-an-answer cache index."""

from pathlib import Path

import pytest

from dataset_builder.annotation import get_annotator, hash_index
from dataset_builder.annotation.batch_ledger import state_path
from dataset_builder.annotation.cache import AnnotationCache
from dataset_builder.annotation.hash_index import HashIndex
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
    # planning everything first, as before, would show a gap of n - 1
    assert max(gaps) <= 2 * 2 * concurrency + 1, gaps
    assert server.state.total_successes() == n


def test_the_hash_index_maps_replaces_and_stays_small():
    index = HashIndex(merge_every=100)
    for i in range(20_000):
        index.add(f"key-{i}", i)
    for i in range(0, 20_000, 7):
        index.add(f"key-{i}", -i)  # a later value replaces the earlier one
    assert all(index.get(f"key-{i}") == (-i if i % 7 == 0 else i) for i in range(20_000))
    assert index.get("key-20000") is None and "key-3" in index
    assert len(index) == 20_000 and index.nbytes() == 16 * 20_000


def test_the_cache_reads_entries_back_and_never_returns_another_keys_answer(tmp_path, monkeypatch):
    path = tmp_path / "c.jsonl"
    with AnnotationCache(path) as cache:
        cache.append_many([{"key": k, "id": k, "status": "ok", "text": k.upper()} for k in ("a", "b")])
        assert cache.get("a")["text"] == "A" and cache.get("b")["text"] == "B" and cache.get("c") is None
    with AnnotationCache(path) as cache:  # reopened: the index is rebuilt from the file
        assert cache.get("b")["text"] == "B" and len(cache) == 2
    monkeypatch.setattr(hash_index, "string_hash", lambda text: 42)  # every key collides
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
