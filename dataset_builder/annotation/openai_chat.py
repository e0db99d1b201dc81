"""The Chat Completions path of the OpenAI annotator: ``--concurrency`` async workers under the rate limits.

The workers run on their own event loop in a background thread; their results reach the caller's thread through a
queue as they arrive, so ``annotate`` stays a plain generator. Each request goes through the one
:class:`~dataset_builder.annotation.transport.RetryPolicy`; a 429 also pauses every worker until its ``retry-after``.
"""

import asyncio
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

    Args:
        annotator: The ``OpenAIAnnotator`` whose ``config``, ``planner``, ``budget``, ``stats``, ``record``, ``fail``
            and ``budget_result`` are used (duck-typed: this module does not import it).
        api_key: The API key.
    """

    def __init__(self, annotator, api_key: str):
        self.annotator = annotator
        self.config = annotator.config
        self.api_key = api_key
        self.policy = RetryPolicy.from_config(self.config, annotator.stats.retries_by_reason)
        self.stop = threading.Event()
        self.fatal: str | None = None

    def run(self, to_send: list[PlannedRequest]) -> Iterator[AnnotationResult]:
        """Run the async workers in a thread and hand their results on as they arrive."""
        results: queue.Queue = queue.Queue()
        self.stop.clear()

        def target():
            try:
                asyncio.run(self._run_async(to_send, results))
            except BaseException as err:  # noqa: BLE001 - handed to the consumer's thread
                results.put(err)
            finally:
                results.put(_SENTINEL)

        thread = threading.Thread(target=target, name="openai-annotator", daemon=True)
        thread.start()
        try:
            while (item := results.get()) is not _SENTINEL:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.stop.set()
            thread.join()

    def _stopped(self) -> bool:
        return self.stop.is_set() or self.fatal is not None

    async def _run_async(self, to_send: list[PlannedRequest], results: queue.Queue) -> None:
        ann = self.annotator
        client = openai.AsyncOpenAI(**client_options(self.config, self.api_key))
        limiter = RateLimiter(self.config.rpm, self.config.tpm)
        pending = list(reversed(to_send))

        async def worker():
            while pending:
                planned = pending.pop()
                if self._stopped():
                    results.put(ann.fail(planned, "not sent: the run stopped"))
                elif not ann.budget.reserve(planned.input_tokens):
                    results.put(ann.budget_result(planned))
                else:
                    try:
                        results.put(await self._send(client, limiter, planned))
                    finally:
                        ann.budget.release(planned.input_tokens)

        async with client:
            await asyncio.gather(*(worker() for _ in range(min(self.config.concurrency, len(to_send)))))

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
