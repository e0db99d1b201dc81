"""Asking an OpenAI-compatible Chat Completions endpoint: one request, its retries, its rate, the async path.

A planned request holds its cache key, sizes and token estimate; its body is built only when it is sent. Every call
goes through one bounded, counted retry policy (the clients' own retries are off); ``--rpm``/``--tpm`` space the
requests; :class:`ChatRunner` sends with ``--concurrency`` async workers.
See docs/annotation.md.
"""

import asyncio
import base64
import contextlib
import io
import json
import os
import queue
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import openai
from PIL import Image

from dataset_builder.annotation.base import AnnotationRequest, AnnotationResult
from dataset_builder.annotation.openai.cache import cache_key, sha256_hex
from dataset_builder.annotation.openai.config import OpenAIAnnotatorConfig
from dataset_builder.annotation.openai.cost import (
    EXPECTED_OUTPUT_TOKENS,
    AnnotationStats,
    Budget,
    ModelPricing,
    request_input_tokens,
    text_tokens,
)
from dataset_builder.images import ImageTooLarge, open_image
from dataset_builder.prompts import date_of, image_label


# ---------------------------------------------------------------------- one request
@dataclass
class PlannedRequest:
    """One request, ready to send: its cache key, the sizes sent and the estimated tokens.

    Planning reads the images once (sizes for the estimate, sha256 for the key) and keeps no bytes: the body is
    built from the request's ``frames_jpeg`` or files when it is sent or written to a batch file.
    """

    request: AnnotationRequest
    key: str
    image_hash: str
    sizes: list[tuple[int, int]]
    input_tokens: int
    cached: dict | None = None


def scaled_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The size an image is sent at: unchanged when it fits ``max_side``, else scaled down keeping its aspect."""
    longest = max(width, height)
    if longest <= max_side:
        return width, height
    scale = max_side / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def mime_type(data: bytes) -> str:
    """The MIME type of an image from its first bytes (PNG, WebP, else JPEG)."""
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "image/jpeg"


class RequestPlanner:
    """Plans requests (cache key, sizes, estimated tokens) and builds their Chat Completions bodies.

    A pair is sent as the prompt then its two images; a sequence (a request with ``timestamps``) as the sequence
    prompt then each image after its label, ``"Image 3 (2017-08-02):"``. A sequence's key covers every image and
    every date shown (its image hash is taken over both).

    Args:
        config: The annotator's options.
        prompt: The instruction sent with every pair.
        pricing: The model's pricing (its image-token rule).
        sequence_prompt: The instruction sent with every sequence.
    """

    def __init__(
        self, config: OpenAIAnnotatorConfig, prompt: str, pricing: ModelPricing, sequence_prompt: str | None = None
    ):
        self.config = config
        self.prompt = prompt
        self.sequence_prompt = sequence_prompt
        self.pricing = pricing
        params = {
            "prompt": prompt,
            "temperature": config.temperature,
            "max_tokens": config.max_tokens,
            "image_detail": config.image_detail,
            "image_max_side": config.image_max_side,
        }
        self.params_hash = sha256_hex(json.dumps(params, sort_keys=True))
        self.sequence_params_hash = sha256_hex(json.dumps(params | {"prompt": sequence_prompt}, sort_keys=True))

    def params_hash_of(self, request: AnnotationRequest) -> str:
        """The hash of the prompt and parameters a request is sent with (the pairs' or the sequences')."""
        return self.params_hash if request.timestamps is None else self.sequence_params_hash

    def prompt_of(self, request: AnnotationRequest) -> str:
        """The instruction a request is sent with.

        Raises:
            ValueError: For a sequence when no sequence prompt was given.
        """
        if request.timestamps is None:
            return self.prompt
        if self.sequence_prompt is None:
            raise ValueError(f"sequence {request.id}: this planner has no sequence prompt")
        return self.sequence_prompt

    @staticmethod
    def labels(request: AnnotationRequest) -> list[str] | None:
        """The text before each image of a sequence (``None`` for a pair: its images follow the prompt bare)."""
        if request.timestamps is None:
            return None
        return [image_label(i, ts) for i, ts in enumerate(request.timestamps, 1)]

    @staticmethod
    def sources(request: AnnotationRequest) -> list[bytes]:
        """The images' bytes: the stored frames, else the fMoW files."""
        if request.frames_jpeg is not None:
            return list(request.frames_jpeg)
        return [Path(p).read_bytes() for p in request.image_paths]

    def plan(self, request: AnnotationRequest) -> PlannedRequest:
        """Key, sizes and estimated input tokens of one request (``cached`` is left for the caller).

        Raises:
            ValueError: If an image cannot be read (the message names the pair and the file).
        """
        sources = self.sources(request)
        labels = self.labels(request)
        if labels is not None and len(labels) != len(sources):
            raise ValueError(f"sequence {request.id}: {len(sources)} images but {len(labels)} timestamps")
        sizes = []
        for i, data in enumerate(sources):
            where = "frames_jpeg" if request.frames_jpeg is not None else str(request.image_paths[i])
            try:
                # header only, refused over the pixel/byte limit of dataset_builder.images before any decoding
                with open_image(data, name=f"pair {request.id}: image {i} ({where})") as img:
                    w, h = img.size
            except ImageTooLarge:
                raise
            except (OSError, ValueError) as err:
                raise ValueError(f"pair {request.id}: image {i} ({where}) cannot be read: {err}") from err
            sizes.append((w, h) if request.frames_jpeg is not None else scaled_size(w, h, self.config.image_max_side))
        if labels is None:
            image_hash = sha256_hex(*sources)
        else:  # the dates shown belong to what is asked as much as the images
            image_hash = sha256_hex(*sources, *(date_of(ts) for ts in request.timestamps))
        key = cache_key(request.id, self.config.model, self.params_hash_of(request), image_hash)
        prompt = self.prompt_of(request)
        tokens = request_input_tokens(prompt, sizes, self.config.image_detail, self.pricing.image_rule)
        tokens += sum(text_tokens(label) for label in labels or [])
        return PlannedRequest(request, key, image_hash, sizes, tokens)

    def image_urls(self, planned: PlannedRequest) -> list[str]:
        """The frames as base64 data URLs, earliest first (fMoW images downscaled to ``image_max_side``)."""
        urls = []
        for data, size in zip(self.sources(planned.request), planned.sizes, strict=True):
            if planned.request.frames_jpeg is None:
                with open_image(data) as img:
                    if img.size != size:
                        buf = io.BytesIO()
                        img.convert("RGB").resize(size, Image.Resampling.LANCZOS).save(buf, "JPEG", quality=90)
                        data = buf.getvalue()
            urls.append(f"data:{mime_type(data)};base64,{base64.b64encode(data).decode('ascii')}")
        return urls

    def chat_body(self, planned: PlannedRequest) -> dict:
        """The Chat Completions request body of one pair or sequence (also the Batch API line's ``body``)."""
        request = planned.request
        content = [{"type": "text", "text": self.prompt_of(request)}]
        labels = self.labels(request)
        for i, url in enumerate(self.image_urls(planned)):
            if labels is not None:
                content.append({"type": "text", "text": labels[i]})
            content.append({"type": "image_url", "image_url": {"url": url, "detail": self.config.image_detail}})
        return {
            "model": self.config.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": self.config.max_tokens,
            "temperature": self.config.temperature,
        }

    def expected_tokens(self, planned: PlannedRequest) -> int:
        """Input plus expected output tokens of one request (what the tokens-per-minute bucket is charged)."""
        return planned.input_tokens + min(EXPECTED_OUTPUT_TOKENS, self.config.max_tokens)


def classify_completion(completion) -> tuple[str, str | None, str]:
    """Turn a chat completion into ``(status, text, reason)``.

    Args:
        completion: An ``openai`` ``ChatCompletion``.

    Returns:
        ``("ok", caption, "")``, or a status among ``refused``, ``content_filter``, ``empty``, ``malformed`` with
        ``text=None`` and a reason; a caption cut at ``max_tokens`` is ``ok`` with reason ``"truncated"``.
    """
    choices = getattr(completion, "choices", None)
    if not choices:
        return "malformed", None, "the reply has no choices"
    choice = choices[0]
    message = getattr(choice, "message", None)
    if choice.finish_reason == "content_filter":
        return "content_filter", None, "finish_reason=content_filter"
    if message is None:
        return "malformed", None, "the reply's choice has no message"
    refusal = getattr(message, "refusal", None)
    if refusal:
        return "refused", None, f"refusal: {refusal[:200]}"
    content = message.content if isinstance(message.content, str) else None
    if content is None or not content.strip():
        return "empty", None, f"empty answer (finish_reason={choice.finish_reason})"
    return "ok", content.strip(), "truncated" if choice.finish_reason == "length" else ""


# ---------------------------------------------------------------------- retries
class EndpointRefusedKey(RuntimeError):
    """The endpoint answered 401/403: the key is wrong or lacks access; stop everything."""

    def __init__(self, status: int):
        super().__init__(f"the endpoint refused the API key (HTTP {status}): check OPENAI_API_KEY")
        self.reason = f"http {status}"


class RequestRejected(RuntimeError):
    """A 4xx other than 401/403/408/409/429: asking again would get the same answer."""

    def __init__(self, status: int, message: str):
        self.status = status
        self.message = message
        self.reason = f"http {status}: {message[:200]}"
        super().__init__(self.reason)


class GaveUp(RuntimeError):
    """Every attempt failed with a retryable error; ``reason`` names the last and counts them all."""

    def __init__(self, reasons: list[str]):
        summary = ", ".join(f"{n}x {r}" for r, n in Counter(reasons).items())
        self.reason = f"{reasons[-1]}: gave up after {len(reasons)} attempts ({summary})"
        super().__init__(self.reason)


@dataclass(frozen=True)
class Retry:
    """A retryable failure: its reason, how long to wait, and whether the server asked to slow down (429)."""

    reason: str
    delay_s: float
    rate_limited: bool
    retry_after_s: float | None


def error_reason(err: openai.APIError) -> tuple[str, float | None]:
    """``(reason, retry_after_s)`` of a retryable ``openai`` error; raises for 401/403 and the other 4xx.

    429, 5xx, 408, 409, timeouts and dropped connections are retryable; 401/403 stop everything (no request can
    succeed); any other 4xx is final for that call.

    Raises:
        EndpointRefusedKey: On 401/403.
        RequestRejected: On a 4xx that asking again cannot fix.
    """
    if isinstance(err, openai.APITimeoutError):
        return "timeout", None
    if isinstance(err, openai.APIConnectionError):
        return f"connection error ({type(err.__cause__).__name__ if err.__cause__ else 'closed'})", None
    if isinstance(err, (openai.AuthenticationError, openai.PermissionDeniedError)):
        raise EndpointRefusedKey(err.status_code) from err
    if isinstance(err, openai.APIStatusError):
        status = err.status_code
        if status == 429 or status >= 500 or status in (408, 409):
            return f"http {status}", retry_after_seconds(err.response.headers)
        raise RequestRejected(status, str(err.message)) from err
    raise err


@dataclass
class RetryPolicy:
    """Bounded retries with ``retry-after`` and jittered exponential backoff, counted by reason.

    The one policy of every call, chat requests and the Batch path's uploads, creations, polls and downloads alike:
    the ``openai`` clients are made with ``max_retries=0`` (:func:`client_options`).

    Args:
        max_retries: Retries after the first attempt.
        backoff_s: First backoff delay.
        backoff_max_s: Longest delay (also caps a server's ``retry-after``).
        counts: Where retries are counted (the report's ``retries_by_reason``), keyed by the reason's head
            (``"http 429"``, ``"connection error"``, ``"timeout"``).
    """

    max_retries: int
    backoff_s: float
    backoff_max_s: float
    counts: Counter = field(default_factory=Counter)

    @classmethod
    def from_config(cls, config: OpenAIAnnotatorConfig, counts: Counter) -> "RetryPolicy":
        """The policy of an annotator's options, counting into ``counts``."""
        return cls(config.max_retries, config.backoff_s, config.backoff_max_s, counts)

    def attempts(self) -> "Attempts":
        """A fresh attempt counter for one call."""
        return Attempts(self)

    def call(self, fn: Callable, *args, before_retry: Callable | None = None, **kwargs):
        """Call ``fn(*args, **kwargs)`` under the policy (the Batch path's file and batch calls).

        Args:
            fn: The call.
            *args: Its arguments.
            before_retry: Called after the wait, before each retry; a result other than ``None`` is returned
                instead of calling again (a call that may have succeeded at the server although its reply was
                lost, such as creating a batch, looks for what it made).
            **kwargs: Its keyword arguments.

        Raises:
            GaveUp: After ``max_retries`` retries.
            EndpointRefusedKey, RequestRejected: As :func:`error_reason`.
        """
        tries = self.attempts()
        for attempt in tries:
            if attempt and before_retry is not None and (found := before_retry()) is not None:
                return found
            try:
                return fn(*args, **kwargs)
            except openai.APIResponseValidationError:
                raise
            except openai.APIError as err:
                retry = tries.failed(err)
            time.sleep(retry.delay_s)
        raise AssertionError("unreachable: Attempts raises GaveUp after the last attempt")


class Attempts:
    """The attempts of one call: iterate for attempt numbers, report each failure with :meth:`failed`."""

    def __init__(self, policy: RetryPolicy):
        self.policy = policy
        self.reasons: list[str] = []

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.policy.max_retries + 1))

    def failed(self, err: openai.APIError) -> Retry:
        """Record a failed attempt; return how to retry, or raise when this call is over.

        Raises:
            GaveUp: When it was the last attempt.
            EndpointRefusedKey, RequestRejected: As :func:`error_reason`.
        """
        reason, retry_after = error_reason(err)
        self.reasons.append(reason)
        attempt = len(self.reasons) - 1
        if attempt >= self.policy.max_retries:
            raise GaveUp(self.reasons) from err
        self.policy.counts[reason.split(" (")[0]] += 1
        p = self.policy
        delay = retry_after if retry_after is not None else backoff_delay(attempt, p.backoff_s, p.backoff_max_s)
        return Retry(reason, min(delay, p.backoff_max_s), reason == "http 429", retry_after)


def client_options(config: OpenAIAnnotatorConfig, api_key: str) -> dict:
    """Keyword arguments of ``openai.OpenAI``/``AsyncOpenAI``: the endpoint, the timeout, no client-side retries."""
    return {
        "api_key": api_key,
        "base_url": config.base_url or os.environ.get("OPENAI_BASE_URL") or None,
        "max_retries": 0,
        "timeout": config.timeout_s,
    }


# ---------------------------------------------------------------------- rate limits
def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """The wait a server asked for, from ``retry-after-ms`` or ``retry-after`` (seconds); ``None`` when absent.

    HTTP-date values are not honoured (OpenAI sends seconds); they count as absent.
    """
    if not headers:
        return None
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            continue
        if seconds >= 0:
            return seconds
    return None


def backoff_delay(attempt: int, base_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform in ``[d/2, d]`` with ``d = min(max_s, base_s * 2**attempt)``.

    Args:
        attempt: 0 for the first retry.
        base_s: First delay.
        max_s: Longest delay.
        rng: Random source (tests pass a seeded one).

    Returns:
        Seconds to wait.
    """
    d = min(max_s, base_s * (2**attempt))
    return (rng or random).uniform(d / 2, d)


class RateLimiter:
    """Async limiter for requests per minute and tokens per minute (0 disables either).

    Requests are spaced evenly, ``60 / rpm`` seconds apart (no bursts), so the server's per-minute window is never
    exceeded however it is aligned; tokens come from a bucket holding one second of ``tpm``. :meth:`pause_until`
    holds every request (a 429's ``retry-after`` pauses every worker, not only the one that saw it).

    Args:
        rpm: Requests per minute.
        tpm: Tokens per minute.
        clock: Monotonic clock (seconds).
    """

    def __init__(self, rpm: int, tpm: int, clock: Callable[[], float] = time.monotonic):
        self.rpm = rpm
        self.tpm = tpm
        self._clock = clock
        self._lock = asyncio.Lock()
        self._next_slot = 0.0
        self._paused_until = 0.0
        self._tokens = float(tpm) / 60 if tpm else 0.0
        self._tokens_at = clock()

    def pause_until(self, when: float) -> None:
        """Hold every request until the clock reaches ``when`` (a server's ``retry-after``)."""
        self._paused_until = max(self._paused_until, when)

    async def acquire(self, tokens: int = 0) -> None:
        """Wait until one request of ``tokens`` tokens may be sent.

        Args:
            tokens: The request's estimated tokens (input + expected output).
        """
        async with self._lock:  # one waiter at a time: slots are handed out in order
            while True:
                now = self._clock()
                wait = max(self._paused_until - now, self._next_slot - now, self._token_wait(tokens, now))
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
            if self.rpm:
                self._next_slot = max(self._next_slot, now) + 60.0 / self.rpm
            if self.tpm:
                self._tokens -= min(tokens, self._capacity(tokens))

    def _capacity(self, tokens: int) -> float:
        # One second of tpm, but never less than one request: a big request must not wait forever.
        return max(self.tpm / 60.0, float(tokens))

    def _token_wait(self, tokens: int, now: float) -> float:
        if not self.tpm:
            return 0.0
        rate = self.tpm / 60.0
        self._tokens = min(self._capacity(tokens), self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        need = min(tokens, self._capacity(tokens)) - self._tokens
        return need / rate if need > 0 else 0.0


# ---------------------------------------------------------------------- the Chat Completions path
@dataclass(frozen=True)
class AnnotatorParts:
    """What a sending path (:class:`ChatRunner`, ``batch.BatchRunner``) uses of the annotator, handed over as such.

    Attributes:
        config: The options.
        planner: Builds each request's body.
        budget: ``--max_cost_usd`` reservations.
        stats: The run's counters (retries, requests sent, the Batch path's files and queue).
        cached: Returns the cache entry of a key, or ``None`` (the Batch path looks for what a merge cut short by a
            kill already recorded).
        api_key: Returns ``OPENAI_API_KEY``; called only once something must be sent.
        record: Caches then counts final answers, ``(planned, status, text, reason, usage)`` tuples, with one fsync;
            keyword arguments are added to every cache entry. Returns their results, in order.
        fail: Counts a pair as failed (not cached) and returns its result.
        budget_result: The result of a pair left unsent by the budget cap.
        write_report: Rewrites ``annotation_report.json``.
    """

    config: OpenAIAnnotatorConfig
    planner: RequestPlanner
    budget: Budget
    stats: AnnotationStats
    cached: Callable[[str], dict | None]
    api_key: Callable[[], str]
    record: Callable[..., list[AnnotationResult]]
    fail: Callable[[PlannedRequest, str], AnnotationResult]
    budget_result: Callable[[PlannedRequest], AnnotationResult]
    write_report: Callable[[], object]


_SENTINEL = object()


class ChatRunner:
    """Sends planned requests with ``--concurrency`` async workers and hands results on as they arrive.

    The workers run on their own event loop in a background thread, fed from the caller's thread through a bounded
    window: at most ``2 * concurrency`` requests are handed to them and not finished at any time, so the caller's
    stream of planned requests is read only as fast as answers come back and memory stays bounded. Results come
    back through a queue, so ``annotate`` stays a plain generator.

    Args:
        parts: What it uses of the annotator.
    """

    def __init__(self, parts: AnnotatorParts):
        self.parts = parts
        self.config = parts.config
        self.policy = RetryPolicy.from_config(self.config, parts.stats.retries_by_reason)
        self.stop = threading.Event()
        self.fatal: str | None = None
        self.window = threading.Semaphore(2 * self.config.concurrency)
        self._results: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inbox: asyncio.Queue | None = None

    def run(self, items: Iterator[AnnotationResult | PlannedRequest]) -> Iterator[AnnotationResult]:
        """Send every planned request of ``items`` (results pass through) and yield every result.

        Raises:
            ValueError: If something must be sent and ``OPENAI_API_KEY`` is not set.
        """
        try:
            for item in items:
                if isinstance(item, AnnotationResult):
                    yield item
                    continue
                if self._thread is None:
                    self._start(self.parts.api_key())
                if self._stopped():
                    break  # the key was refused: annotate raises once what is in flight is back
                while not self.window.acquire(blocking=False):
                    yield from self._take(timeout=0.05)
                self._feed(item)
                yield from self._take(timeout=0)
            if self._thread is not None:
                self._feed(_SENTINEL)
                while self._thread.is_alive() or not self._results.empty():
                    yield from self._take(timeout=0.05)
        finally:
            if self._thread is not None:
                self.stop.set()
                self._feed(_SENTINEL)
                self._thread.join()

    def _stopped(self) -> bool:
        return self.stop.is_set() or self.fatal is not None

    def _start(self, api_key: str) -> None:
        ready = threading.Event()

        async def serve():
            self._loop, self._inbox = asyncio.get_running_loop(), asyncio.Queue()
            ready.set()
            await self._serve(api_key)

        def target():
            try:
                asyncio.run(serve())
            except BaseException as err:  # noqa: BLE001 - handed to the consumer's thread
                self._results.put(err)
            finally:
                ready.set()

        self._thread = threading.Thread(target=target, name="openai-annotator", daemon=True)
        self._thread.start()
        ready.wait()

    def _feed(self, item) -> None:
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nothing is left to stop
                self._loop.call_soon_threadsafe(self._inbox.put_nowait, item)

    def _take(self, timeout: float) -> Iterator[AnnotationResult]:
        try:
            item = self._results.get(timeout=timeout) if timeout else self._results.get_nowait()
        except queue.Empty:
            return
        while True:
            if isinstance(item, BaseException):
                raise item
            yield item
            try:
                item = self._results.get_nowait()
            except queue.Empty:
                return

    async def _serve(self, api_key: str) -> None:
        parts = self.parts
        client = openai.AsyncOpenAI(**client_options(self.config, api_key))
        limiter = RateLimiter(self.config.rpm, self.config.tpm)

        async def worker():
            while (planned := await self._inbox.get()) is not _SENTINEL:
                try:
                    if self._stopped():
                        result = parts.fail(planned, "not sent: the run stopped")
                    elif not parts.budget.reserve(planned.input_tokens):
                        result = parts.budget_result(planned)
                    else:
                        try:
                            result = await self._send(client, limiter, planned)
                        finally:
                            parts.budget.release(planned.input_tokens)
                finally:
                    self.window.release()  # before the result is seen, so the caller finds the slot free
                self._results.put(result)
            self._inbox.put_nowait(_SENTINEL)  # for the next worker

        async with client:
            await asyncio.gather(*(worker() for _ in range(self.config.concurrency)))

    async def _send(self, client, limiter: RateLimiter, planned: PlannedRequest) -> AnnotationResult:
        parts = self.parts
        body = parts.planner.chat_body(planned)
        parts.stats.sent += 1
        tries = self.policy.attempts()
        for _ in tries:
            if self._stopped():
                return parts.fail(planned, "not sent: the run stopped")
            await limiter.acquire(parts.planner.expected_tokens(planned))
            parts.stats.request_started(time.monotonic())
            try:
                completion = await client.chat.completions.create(**body)
            except openai.APIResponseValidationError as err:
                return self._record(planned, "malformed", None, f"unreadable reply: {str(err)[:200]}", {})
            except openai.APIError as err:
                try:
                    retry = tries.failed(err)
                except EndpointRefusedKey as refused:
                    self.fatal = str(refused)
                    self.stop.set()
                    return parts.fail(planned, refused.reason)
                except (RequestRejected, GaveUp) as final:
                    return parts.fail(planned, final.reason)
                if retry.rate_limited:
                    limiter.pause_until(time.monotonic() + (retry.retry_after_s or 0.0))
                await asyncio.sleep(retry.delay_s)
                continue
            except (ValueError, TypeError) as err:
                return self._record(planned, "malformed", None, f"unreadable reply: {str(err)[:200]}", {})
            try:
                status, text, reason = classify_completion(completion)
                usage = completion.usage.model_dump(exclude_none=True) if completion.usage else {}
            except (AttributeError, TypeError, ValueError) as err:
                status, text, reason, usage = "malformed", None, f"unreadable reply: {str(err)[:200]}", {}
            return self._record(planned, status, text, reason, usage)
        raise AssertionError("unreachable: the last failed attempt raises GaveUp")

    def _record(self, planned: PlannedRequest, status: str, text: str | None, reason: str, usage: dict):
        return self.parts.record([(planned, status, text, reason, usage)])[0]
