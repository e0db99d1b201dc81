"""A local OpenAI-compatible server for the tests and the benchmarks (FastAPI + uvicorn on 127.0.0.1).

    python tests/annotation/fake_openai.py --port 8011 --latency 0.2 --rpm 600

It speaks Chat Completions, Files and Batches for the official ``openai`` client, injects faults, enforces the Batch
API's limits, and counts tokens (independently of our estimator) and what it bills per pair. See docs/annotation.md.
"""

import argparse
import asyncio
import base64
import hashlib
import io
import math
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image

from tests.annotation.fake_openai_batch import add_file_and_batch_routes, refusal
from upload.loopback import free_port


FAULTS = ("429", "500", "503", "slow", "drop", "malformed", "content_filter", "refusal", "empty", "length")


@dataclass
class FakeState:
    """What the server has seen and what it is told to do.

    Faults (``faults``, one per request, or ``always``): 429 with ``retry-after``, 500/503, slow replies, dropped
    connections, malformed JSON, ``finish_reason="content_filter"``, refusals, empty and cut-off answers. Token usage
    is counted from the decoded image sizes and gpt-4o-mini's published tile numbers. ``billed`` counts, per pair,
    every answer produced (chat or batch): "nothing billed twice" is ``max(billed.values()) == 1``.
    """

    latency_s: float = 0.0
    slow_s: float = 2.0
    retry_after_s: float = 0.05
    rpm_limit: int = 0  # enforce a sliding 60 s window (429 beyond it)
    faults: deque = field(default_factory=deque)  # one fault per request, in arrival order
    always: str | None = None  # a fault for every request
    hold_after_successes: int | None = None  # then hold requests until `released`, and answer them 503
    released: bool = False
    batch_polls_to_finish: int = 2
    hold_batches: bool = False
    answer_words: int = 30
    api_key: str | None = None
    batch_max_requests: int = 50_000
    batch_max_bytes: int = 200 * 1024 * 1024
    max_enqueued_tokens: int | None = None
    batch_faults: deque = field(default_factory=deque)  # one fault per Files/Batches call, in arrival order
    record_bodies: bool = False  # keep every answered request body in `bodies` (small tests only)
    # observations
    requests: int = 0
    arrivals: list = field(default_factory=list)
    successes: Counter = field(default_factory=Counter)  # pair key -> 200 answers with a caption
    outcomes: Counter = field(default_factory=Counter)
    headers_seen: list = field(default_factory=list)
    billed: Counter = field(default_factory=Counter)  # pair key -> answers produced (each one paid)
    files: dict = field(default_factory=dict)
    batches: dict = field(default_factory=dict)
    peak_enqueued_tokens: int = 0
    bodies: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def enqueued_tokens(self) -> int:
        """Input tokens of the batches not finished yet."""
        return sum(b["_tokens"] for b in self.batches.values() if b["status"] in ("validating", "in_progress"))

    def total_successes(self) -> int:
        """Answers with a caption, over all pairs."""
        return sum(self.successes.values())


def pair_key(body: dict) -> str:
    """The identity of a pair at the server: the hash of its two images."""
    urls = [
        part["image_url"]["url"]
        for msg in body.get("messages", [])
        for part in (msg.get("content") if isinstance(msg.get("content"), list) else [])
        if part.get("type") == "image_url"
    ]
    return hashlib.sha256("\n".join(urls).encode()).hexdigest()[:16]


def count_prompt_tokens(body: dict) -> int:
    """prompt_tokens as gpt-4o-mini reports them: text at 4 chars/token, images by the published tile rule."""
    tokens = 6
    for msg in body.get("messages", []):
        content = msg.get("content")
        parts = content if isinstance(content, list) else [{"type": "text", "text": content or ""}]
        for part in parts:
            if part.get("type") == "text":
                tokens += math.ceil(len(part["text"]) / 4)
            elif part.get("type") == "image_url":
                detail = part["image_url"].get("detail", "auto")
                if detail == "low":
                    tokens += 2833
                    continue
                data = base64.b64decode(part["image_url"]["url"].split(",", 1)[1])
                w, h = Image.open(io.BytesIO(data)).size
                s = min(1.0, 2048 / max(w, h))
                w, h = w * s, h * s
                s = min(1.0, 768 / min(w, h))
                tokens += 2833 + 5667 * math.ceil(w * s / 512) * math.ceil(h * s / 512)
    return tokens


def _completion(body: dict, key: str, state: FakeState, fault: str | None) -> dict:
    words = state.answer_words + int(key[:2], 16) % 10  # answers of different lengths
    content = (
        f"The first image shows a site ({key}) with buildings and roads. The second image shows the same place. "
        + " ".join(["Between them new structures appear"] * max(1, words // 5))
    )
    finish, refusal = "stop", None
    if fault == "content_filter":
        content, finish = None, "content_filter"
    elif fault == "refusal":
        content, refusal = None, "I'm sorry, I can't help with that."
    elif fault == "empty":
        content = ""
    elif fault == "length":
        finish = "length"
    prompt_tokens = count_prompt_tokens(body)
    completion_tokens = math.ceil(len(content or refusal or "") / 4)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "gpt-4o-mini"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": refusal},
                "finish_reason": finish,
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


class _DroppedResponse(Response):
    """Promises 1000 bytes, sends a few, and the server closes the connection: the client sees it dropped."""

    async def __call__(self, scope, receive, send):
        headers = [(b"content-type", b"application/json"), (b"content-length", b"1000")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"id": "chat', "more_body": False})


def create_app(state: FakeState) -> FastAPI:
    """The FastAPI app serving ``/v1/...`` from ``state``."""
    app = FastAPI()
    _chat_routes(app, state)
    add_file_and_batch_routes(app, state, _answer, count_prompt_tokens)
    return app


def _chat_routes(app: FastAPI, state: FakeState) -> None:
    def next_fault() -> str | None:
        with state.lock:
            if state.faults:
                return state.faults.popleft()
        return state.always

    def over_rpm(now: float) -> bool:
        with state.lock:
            return sum(1 for t in state.arrivals[:-1] if now - t < 60.0) >= state.rpm_limit

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        now = time.monotonic()
        with state.lock:
            state.requests += 1
            state.arrivals.append(now)
            state.headers_seen.append(dict(request.headers))
        if state.api_key and request.headers.get("authorization") != f"Bearer {state.api_key}":
            return refusal(401, "Incorrect API key provided", "invalid_api_key")
        if state.rpm_limit and over_rpm(now):
            state.outcomes["429 rpm"] += 1
            return refusal(429, "rpm exceeded", headers={"retry-after": "1"})
        fault = next_fault()
        if state.latency_s:
            await asyncio.sleep(state.latency_s)
        if state.hold_after_successes is not None and state.total_successes() >= state.hold_after_successes:
            while not state.released:
                await asyncio.sleep(0.02)
            state.outcomes["held"] += 1
            return refusal(503, "held")
        state.outcomes[fault or "ok"] += 1
        if fault == "429":
            wait_ms = str(int(state.retry_after_s * 1000))
            return refusal(429, "Rate limit reached", headers={"retry-after-ms": wait_ms})
        if fault in ("500", "503"):
            return refusal(int(fault), "server error")
        if fault == "slow":
            await asyncio.sleep(state.slow_s)
        if fault == "drop":
            return _DroppedResponse()
        if fault == "malformed":
            return Response(b'{"id": "chatcmpl-x", "choices": [', media_type="application/json")
        return JSONResponse(_answer(body, state, fault))


def _answer(body: dict, state: FakeState, fault: str | None) -> dict:
    """A completion for ``body``, counted as billed (and as a success when it holds a caption)."""
    key = pair_key(body)
    reply = _completion(body, key, state, fault)
    with state.lock:
        state.billed[key] += 1
        if state.record_bodies:
            state.bodies.append(body)
        if reply["choices"][0]["message"]["content"]:
            state.successes[key] += 1
    return reply


class FakeOpenAIServer:
    """The app served by uvicorn in a background thread; ``base_url`` ends in ``/v1``."""

    def __init__(self, state: FakeState | None = None):
        self.state = state or FakeState()
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        config = uvicorn.Config(create_app(self.state), host="127.0.0.1", port=self.port, log_level="critical")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> "FakeOpenAIServer":
        self._thread.start()
        deadline = time.time() + 20
        while not self._server.started:
            if time.time() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fake OpenAI server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.state.released = True
        self._server.should_exit = True
        self._thread.join(timeout=10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--rpm", type=int, default=0)
    args = parser.parse_args()
    uvicorn.run(create_app(FakeState(latency_s=args.latency, rpm_limit=args.rpm)), host="127.0.0.1", port=args.port)
