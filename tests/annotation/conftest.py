"""Fixtures of the annotation tests: the fake OpenAI server, a key, fast options."""

import pytest

from tests.annotation.fake_openai import FakeOpenAIServer, FakeState
from tests.annotation.helpers import SECRET


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    return SECRET


@pytest.fixture
def server():
    with FakeOpenAIServer(FakeState()) as srv:
        yield srv


@pytest.fixture
def fast_options(tmp_path, server):
    """Annotator options for the tests: the fake server, tight timeouts and backoff, a private cache."""
    return {
        "base_url": server.base_url,
        "cache_path": str(tmp_path / "cache" / "answers.jsonl"),
        "backoff_s": 0.01,
        "backoff_max_s": 0.05,
        "timeout_s": 2.0,
        "rpm": 0,
        "tpm": 0,
        "concurrency": 4,
        "batch_poll_s": 0.05,
    }
