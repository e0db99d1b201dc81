"""Client-side limits for OpenAI requests: requests/min, tokens/min, ``retry-after`` pauses, backoff with jitter.

Requests are spaced evenly (``60 / rpm`` seconds apart, no bursts), so the server's per-minute window is never
exceeded however its window is aligned; tokens come from a bucket holding one second of ``tpm``. A 429 with
``retry-after`` pauses every worker until then, not only the one that saw it.
"""

import asyncio
import random
import time
from collections.abc import Callable, Mapping


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
