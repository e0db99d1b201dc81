"""The Chat Completions path of the OpenAI annotator: ``--concurrency`` async workers under the rate limits.

The workers run on their own event loop in a background thread, fed from the caller's thread through a bounded
window; their results come back through a queue as they arrive, so ``annotate`` stays a plain generator. Each
request goes through the one :class:`~dataset_builder.annotation.transport.RetryPolicy`; a 429 also pauses every
worker until its ``retry-after``.
"""

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Iterator

import openai

from dataset_builder.annotation.base import AnnotationResult
from dataset_builder.annotation.openai_requests import PlannedRequest, classify_completion
from dataset_builder.annotation.rate_limit import RateLimiter
from dataset_builder.annotation.transport import (
    EndpointRefusedKey,
    GaveUp,
    RequestRejected,
    RetryPolicy,
    client_options,
)


_SENTINEL = object()


class ChatRunner:
    """Sends planned requests with async workers and hands results on as they arrive.

    At most ``2 * concurrency`` requests are handed to the workers and not finished at any time: the caller's
    stream of planned requests is read only as fast as answers come back, so memory stays bounded.

    Args:
        annotator: The ``OpenAIAnnotator`` whose ``config``, ``planner``, ``budget``, ``stats``, ``api_key``,
            ``record``, ``fail`` and ``budget_result`` are used (duck-typed: this module does not import it).
    """

    def __init__(self, annotator):
        self.annotator = annotator
        self.config = annotator.config
        self.policy = RetryPolicy.from_config(self.config, annotator.stats.retries_by_reason)
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
                    self._start(self.annotator.api_key())
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
        ann = self.annotator
        client = openai.AsyncOpenAI(**client_options(self.config, api_key))
        limiter = RateLimiter(self.config.rpm, self.config.tpm)

        async def worker():
            while (planned := await self._inbox.get()) is not _SENTINEL:
                try:
                    if self._stopped():
                        result = ann.fail(planned, "not sent: the run stopped")
                    elif not ann.budget.reserve(planned.input_tokens):
                        result = ann.budget_result(planned)
                    else:
                        try:
                            result = await self._send(client, limiter, planned)
                        finally:
                            ann.budget.release(planned.input_tokens)
                finally:
                    self.window.release()  # before the result is seen, so the caller finds the slot free
                self._results.put(result)
            self._inbox.put_nowait(_SENTINEL)  # for the next worker

        async with client:
            await asyncio.gather(*(worker() for _ in range(self.config.concurrency)))

    async def _send(self, client, limiter: RateLimiter, planned: PlannedRequest) -> AnnotationResult:
        ann = self.annotator
        body = ann.planner.chat_body(planned)
        ann.stats.sent += 1
        tries = self.policy.attempts()
        for _ in tries:
            if self._stopped():
                return ann.fail(planned, "not sent: the run stopped")
            await limiter.acquire(ann.planner.expected_tokens(planned))
            ann.stats.request_started(time.monotonic())
            try:
                completion = await client.chat.completions.create(**body)
            except openai.APIResponseValidationError as err:
                return ann.record(planned, "malformed", None, f"unreadable reply: {str(err)[:200]}", {})
            except openai.APIError as err:
                try:
                    retry = tries.failed(err)
                except EndpointRefusedKey as refused:
                    self.fatal = str(refused)
                    self.stop.set()
                    return ann.fail(planned, refused.reason)
                except (RequestRejected, GaveUp) as final:
                    return ann.fail(planned, final.reason)
                if retry.rate_limited:
                    limiter.pause_until(time.monotonic() + (retry.retry_after_s or 0.0))
                await asyncio.sleep(retry.delay_s)
                continue
            except (ValueError, TypeError) as err:
                return ann.record(planned, "malformed", None, f"unreadable reply: {str(err)[:200]}", {})
            try:
                status, text, reason = classify_completion(completion)
                usage = completion.usage.model_dump(exclude_none=True) if completion.usage else {}
            except (AttributeError, TypeError, ValueError) as err:
                status, text, reason, usage = "malformed", None, f"unreadable reply: {str(err)[:200]}", {}
            return ann.record(planned, status, text, reason, usage)
        raise AssertionError("unreachable: the last failed attempt raises GaveUp")
