"""Talking to the endpoint: the ``openai`` clients and the one retry policy of the chat and the Batch paths.

The clients' own retries are off (``max_retries=0``): every retry goes through :class:`RetryPolicy`, so each one is
bounded by ``--max_retries``, counted by reason in the report (``retries_by_reason``), waits what the server asked
(``retry-after-ms`` / ``retry-after``) or backs off with jitter, and gives up with the list of what went wrong.

- 429, 5xx, 408, 409, timeouts and dropped connections are retried;
- 401/403 are fatal (:class:`EndpointRefusedKey`): no request can succeed;
- any other 4xx is final for that call (:class:`RequestRejected`).
"""

import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import openai

from dataset_builder.annotation.openai_config import OpenAIAnnotatorConfig
from dataset_builder.annotation.rate_limit import backoff_delay, retry_after_seconds


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
