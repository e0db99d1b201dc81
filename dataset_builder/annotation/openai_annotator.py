"""The ``openai`` annotator: the paper's GPT-4o-mini descriptions through any OpenAI-compatible endpoint.

Each pair is one Chat Completions request: the paper's prompt (``ANNOTATION_PROMPT``) and the two frames, earlier
first, as base64 data URLs. Frames stored in the dataset (``frames_jpeg``) are sent as they are; fMoW images are
downscaled to ``image_max_side`` pixels (JPEG, quality 90) when larger. At detail ``low`` the size does not change
the price; at ``high`` it does (see ``dataset_builder.annotation.cost``).

Never pay twice: every final answer (ok, refused, content filter, empty, malformed) is appended to an fsync'd JSONL
cache (``dataset_builder.annotation.cache``) before it is counted or handed on, so a rerun after a crash only sends
what is missing. The ``openai`` client's own retries are off; ours are bounded, counted, honour ``retry-after`` and
back off with jitter. The API key is read from ``OPENAI_API_KEY`` and never logged, reported or stored.
"""

import asyncio
import base64
import io
import json
import logging
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import openai
from PIL import Image

from dataset_builder.annotation.base import AnnotationRequest, AnnotationResult
from dataset_builder.annotation.cache import FINAL_STATUSES, AnnotationCache, cache_key, sha256_hex
from dataset_builder.annotation.cost import (
    CostEstimate,
    estimate_cost,
    load_price_table,
    pricing_for,
    request_input_tokens,
)
from dataset_builder.annotation.openai_batch import run_batch
from dataset_builder.annotation.openai_config import OpenAIAnnotatorConfig
from dataset_builder.annotation.openai_requests import PlannedRequest, classify_completion, mime_type, scaled_size
from dataset_builder.annotation.rate_limit import RateLimiter, backoff_delay, retry_after_seconds
from dataset_builder.atomic import write_json
from dataset_builder.images import ImageTooLarge, open_image
from dataset_builder.prompts import ANNOTATION_PROMPT


logger = logging.getLogger(__name__)

#: Expected answer length used by the up-front estimate (two short descriptions and the changes).
EXPECTED_OUTPUT_TOKENS = 180
_SENTINEL = object()


@dataclass
class AnnotationStats:
    """Counters of one annotator's lifetime (all ``annotate`` calls), written to ``annotation_report.json``."""

    pairs: int = 0
    cached: int = 0
    sent: int = 0
    requests: int = 0
    succeeded: int = 0
    refused: int = 0
    content_filter: int = 0
    empty: int = 0
    malformed: int = 0
    failed: int = 0
    failed_by_reason: Counter = field(default_factory=Counter)
    retries_by_reason: Counter = field(default_factory=Counter)
    not_sent_budget: int = 0
    not_sent_dry_run: int = 0
    truncated: int = 0
    estimated_input_tokens: int = 0
    estimated_output_tokens: int = 0
    estimated_input_tokens_answered: int = 0
    estimated_cost_usd: float | None = 0.0
    actual_input_tokens: int = 0
    actual_output_tokens: int = 0
    actual_cost_usd: float = 0.0
    send_seconds: float = 0.0
    budget_stopped: bool = False
    first_request_at: float | None = None
    last_request_at: float | None = None
    batches: list = field(default_factory=list)


def redact_endpoint(url: str | None) -> str:
    """An endpoint as it may be reported: scheme, host, port and path, never credentials or a query string."""
    if not url:
        return "https://api.openai.com/v1"
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def summary_line(r: dict) -> str:
    """One line for the console from an ``annotation_report.json``: the main counts, tokens, cost and rate."""
    cost = r["cost_usd"]
    fmt = lambda v: "unknown" if v is None else f"${v:,.4f}"  # noqa: E731
    return (
        f"annotation: {r['pairs']} pairs, {r['cached']} cached, {r['sent']} sent ({r['requests']} requests), "
        f"{r['succeeded']} ok, {r['refused']} refused, {r['content_filter']} filtered, {r['empty']} empty, "
        f"{r['malformed']} malformed, {r['failed']} failed {r['failed_by_reason'] or ''}, "
        f"{r['not_sent_budget']} not sent (budget); tokens in {r['tokens']['actual_input']:,} "
        f"(est. {r['tokens']['estimated_input']:,}), out {r['tokens']['actual_output']:,}; "
        f"cost {fmt(cost['actual'])} (est. {fmt(cost['estimated'])}); "
        f"{r['wall_seconds']} s, {r['requests_per_minute']} requests/min"
    )


class OpenAIAnnotator:
    """Annotator that asks an OpenAI-compatible Chat Completions endpoint (see the module docstring).

    Args:
        **options: The fields of :class:`~dataset_builder.annotation.openai_config.OpenAIAnnotatorConfig`.

    Raises:
        ValueError: On a bad option, or ``max_cost_usd`` with a model the price table does not list.
    """

    name = "openai"

    def __init__(self, **options):
        self.config = OpenAIAnnotatorConfig(**options)
        cfg = self.config
        self.model = cfg.model
        self.prompt = ANNOTATION_PROMPT
        self.pricing = pricing_for(cfg.model, load_price_table(cfg.price_table))
        if cfg.max_cost_usd is not None and not self.pricing.known:
            raise ValueError(
                f"--max_cost_usd {cfg.max_cost_usd}: the price table has no price for --model {cfg.model!r}; "
                "add it with --price_table FILE"
            )
        params = {
            "prompt": self.prompt,
            "temperature": cfg.temperature,
            "max_tokens": cfg.max_tokens,
            "image_detail": cfg.image_detail,
            "image_max_side": cfg.image_max_side,
        }
        self.params_hash = sha256_hex(json.dumps(params, sort_keys=True))
        self.stats = AnnotationStats()
        self._cache: AnnotationCache | None = None
        self._reserved_usd = 0.0
        self._stop = threading.Event()
        self._fatal: str | None = None

    # ------------------------------------------------------------------ planning and the estimate
    @property
    def cache(self) -> AnnotationCache:
        """The answer cache (opened on first use)."""
        if self._cache is None:
            self._cache = AnnotationCache(self.config.resolved_cache_path)
        return self._cache

    def _sources(self, request: AnnotationRequest) -> list[bytes]:
        if request.frames_jpeg is not None:
            return list(request.frames_jpeg)
        return [Path(p).read_bytes() for p in request.image_paths]

    def plan(self, request: AnnotationRequest) -> PlannedRequest:
        """Key, sizes and estimated input tokens of one request, and its cached answer if any.

        Args:
            request: The pair.

        Returns:
            The planned request.

        Raises:
            ValueError: If an image cannot be read (the message names the pair and the file).
        """
        sources = self._sources(request)
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
        image_hash = sha256_hex(*sources)
        key = cache_key(request.id, self.model, self.params_hash, image_hash)
        tokens = request_input_tokens(self.prompt, sizes, self.config.image_detail, self.pricing.image_rule)
        return PlannedRequest(request, key, image_hash, sizes, tokens, self.cache.get(key))

    def _needs_sending(self, planned: PlannedRequest) -> bool:
        entry = planned.cached
        if entry is None or entry.get("status") not in FINAL_STATUSES:
            return True
        return entry["status"] != "ok" and self.config.retry_failed

    def estimate(self, requests: Iterable[AnnotationRequest]) -> tuple[CostEstimate, int]:
        """The estimate of sending every request not already cached.

        Args:
            requests: The pairs.

        Returns:
            ``(estimate, n_cached)``.
        """
        tokens, cached = [], 0
        for request in requests:
            planned = self.plan(request)
            if self._needs_sending(planned):
                tokens.append(planned.input_tokens)
            else:
                cached += 1
        return self._estimate(tokens), cached

    def _estimate(self, tokens: list[int]) -> CostEstimate:
        cfg = self.config
        return estimate_cost(tokens, self.pricing, EXPECTED_OUTPUT_TOKENS, cfg.max_tokens, cfg.batch)

    # ------------------------------------------------------------------ the interface
    def annotate(self, requests: Iterable[AnnotationRequest]) -> Iterator[AnnotationResult]:
        """Yield one result per request: cached answers first, then answers as they arrive.

        Args:
            requests: The pairs.

        Yields:
            One :class:`AnnotationResult` per request; ``status="missing"`` for pairs not sent (dry run, budget).

        Raises:
            ValueError: If ``OPENAI_API_KEY`` is not set (and something must be sent).
            RuntimeError: If the endpoint rejects the key (401/403): nothing more can succeed.
        """
        cfg = self.config
        to_send: list[PlannedRequest] = []
        for request in requests:
            planned = self.plan(request)
            self.stats.pairs += 1
            if self._needs_sending(planned):
                to_send.append(planned)
            else:
                self.stats.cached += 1
                yield self._result_from_entry(planned.request.id, planned.cached)
        estimate = self._estimate([p.input_tokens for p in to_send])
        self.stats.estimated_input_tokens += estimate.input_tokens
        self.stats.estimated_output_tokens += estimate.output_tokens
        if estimate.cost_usd is None or self.stats.estimated_cost_usd is None:
            self.stats.estimated_cost_usd = None
        else:
            self.stats.estimated_cost_usd += estimate.cost_usd
        logger.info("%s", estimate.summary())
        if not to_send or cfg.dry_run:
            for planned in to_send:
                self.stats.not_sent_dry_run += 1
                yield AnnotationResult(planned.request.id, None, "missing", "dry run: not sent")
            self.write_report()
            return
        api_key = os.environ.get("OPENAI_API_KEY")
        if not api_key:
            raise ValueError("OPENAI_API_KEY is not set: the openai annotator needs it (any value for a local server)")
        start = time.perf_counter()
        try:
            if cfg.batch:
                yield from run_batch(self, to_send, api_key)
            else:
                yield from self._run_threaded(to_send, api_key)
        finally:
            self.stats.send_seconds += time.perf_counter() - start
            self.write_report()
        if self._fatal:
            raise RuntimeError(self._fatal)

    # ------------------------------------------------------------------ results, cost, report
    def _result_from_entry(self, pair_id: str, entry: dict) -> AnnotationResult:
        return AnnotationResult(pair_id, entry.get("text"), entry["status"], entry.get("reason", ""), entry["usage"])

    def record(
        self, planned: PlannedRequest, status: str, text: str | None, reason: str, usage: dict
    ) -> AnnotationResult:
        """Cache a final answer (fsync'd), then count it; the only way an answer enters the results.

        Args:
            planned: The request.
            status: A final status (``ok``, ``refused``, ``content_filter``, ``empty``, ``malformed``).
            text: The caption for ``ok``.
            reason: Why, for any other status.
            usage: The ``usage`` the server reported.

        Returns:
            The result to hand on.
        """
        entry = {
            "key": planned.key,
            "id": planned.request.id,
            "model": self.model,
            "params_hash": self.params_hash,
            "image_hash": planned.image_hash,
            "status": status,
            "text": text,
            "reason": reason,
            "usage": usage,
            "batch": self.config.batch,
            "time": time.time(),
        }
        self.cache.append(entry)
        self.add_usage(usage)
        if usage.get("prompt_tokens"):
            self.stats.estimated_input_tokens_answered += planned.input_tokens
        if status == "ok":
            self.stats.succeeded += 1
            if reason == "truncated":
                self.stats.truncated += 1
                logger.warning(
                    "pair %s: the answer reached --max_tokens %d and is cut",
                    planned.request.id,
                    self.config.max_tokens,
                )
        else:
            setattr(self.stats, status, getattr(self.stats, status) + 1)
            logger.warning("pair %s: %s (%s)", planned.request.id, status, reason)
        return AnnotationResult(planned.request.id, text, status, reason, usage)

    def fail(self, planned: PlannedRequest, reason: str) -> AnnotationResult:
        """Count a pair as failed (not cached: a rerun asks again)."""
        self.stats.failed += 1
        self.stats.failed_by_reason[reason.split(":")[0]] += 1
        logger.warning("pair %s: failed (%s)", planned.request.id, reason)
        return AnnotationResult(planned.request.id, None, "failed", reason)

    def add_usage(self, usage: dict) -> None:
        """Add a reply's token counts and their price to the running totals."""
        inp, out = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        self.stats.actual_input_tokens += inp
        self.stats.actual_output_tokens += out
        self.stats.actual_cost_usd += self.pricing.cost_usd(inp, out, self.config.batch) or 0.0

    def worst_case_usd(self, planned: PlannedRequest) -> float:
        """The most one request can cost (every output token used)."""
        return self.pricing.cost_usd(planned.input_tokens, self.config.max_tokens, self.config.batch) or 0.0

    def reserve(self, planned: PlannedRequest) -> bool:
        """Reserve a request's worst-case cost under ``--max_cost_usd``; ``False`` once the cap would be passed."""
        cap = self.config.max_cost_usd
        if cap is None:
            return True
        worst = self.worst_case_usd(planned)
        if self.stats.budget_stopped or self.stats.actual_cost_usd + self._reserved_usd + worst > cap:
            if not self.stats.budget_stopped:
                logger.warning(
                    "--max_cost_usd %.4f: stopping (spent $%.4f, $%.4f in flight, next request up to $%.4f)",
                    cap,
                    self.stats.actual_cost_usd,
                    self._reserved_usd,
                    worst,
                )
            self.stats.budget_stopped = True
            return False
        self._reserved_usd += worst
        return True

    def release(self, planned: PlannedRequest) -> None:
        """Give back a reservation once the request's real cost is counted."""
        if self.config.max_cost_usd is not None:
            self._reserved_usd = max(0.0, self._reserved_usd - self.worst_case_usd(planned))

    def budget_result(self, planned: PlannedRequest) -> AnnotationResult:
        """The result of a pair left unsent by the budget cap."""
        self.stats.not_sent_budget += 1
        return AnnotationResult(planned.request.id, None, "missing", f"--max_cost_usd {self.config.max_cost_usd}")

    def report(self) -> dict:
        """The run's report (``annotation_report.json``): counts, tokens, cost, time; never the key."""
        s, cfg = self.stats, self.config
        est_in = s.estimated_input_tokens
        sent_pairs = s.succeeded + s.refused + s.content_filter + s.empty + s.malformed
        return {
            "annotator": self.name,
            "model": self.model,
            "endpoint": redact_endpoint(cfg.base_url or os.environ.get("OPENAI_BASE_URL")),
            "prompt": self.prompt,
            "options": {k: v for k, v in asdict(cfg).items() if k not in ("cache_path", "report_path")},
            "pairs": s.pairs,
            "cached": s.cached,
            "sent": s.sent,
            "requests": s.requests,
            "succeeded": s.succeeded,
            "refused": s.refused,
            "content_filter": s.content_filter,
            "empty": s.empty,
            "malformed": s.malformed,
            "truncated": s.truncated,
            "failed": s.failed,
            "failed_by_reason": dict(s.failed_by_reason),
            "retries_by_reason": dict(s.retries_by_reason),
            "not_sent_budget": s.not_sent_budget,
            "not_sent_dry_run": s.not_sent_dry_run,
            "budget_stopped": s.budget_stopped,
            "tokens": {
                "estimated_input": est_in,
                "estimated_output": s.estimated_output_tokens,
                "actual_input": s.actual_input_tokens,
                "actual_output": s.actual_output_tokens,
                "answered_pairs": sent_pairs,
                "estimated_input_of_answered": s.estimated_input_tokens_answered,
                "input_error_pct": (
                    round(100 * (s.estimated_input_tokens_answered - s.actual_input_tokens) / s.actual_input_tokens, 3)
                    if s.actual_input_tokens
                    else None
                ),
            },
            "cost_usd": {
                "estimated": None if s.estimated_cost_usd is None else round(s.estimated_cost_usd, 6),
                "actual": round(s.actual_cost_usd, 6) if self.pricing.known else None,
                "cap": cfg.max_cost_usd,
                "prices_per_1m": {"input": self.pricing.input_per_1m, "output": self.pricing.output_per_1m},
                "batch_discount": self.pricing.batch_discount if cfg.batch else None,
            },
            "wall_seconds": round(s.send_seconds, 3),
            "requests_per_minute": self._request_rate(),
            "rpm_limit": cfg.rpm or None,
            "batches": s.batches,
        }

    def _request_rate(self) -> float | None:
        # the rate requests were started at: (n - 1) intervals between the first and the last start
        s = self.stats
        if s.requests < 2 or s.first_request_at is None or s.last_request_at == s.first_request_at:
            return None
        return round(60 * (s.requests - 1) / (s.last_request_at - s.first_request_at), 2)

    def summary_line(self) -> str:
        """One line for the console: the report's main counts."""
        return summary_line(self.report())

    def write_report(self) -> Path:
        """Write ``annotation_report.json`` atomically; returns its path."""
        return write_json(self.config.resolved_report_path, self.report(), indent=2, sort_keys=True)

    def close(self) -> None:
        """Close the cache file."""
        if self._cache is not None:
            self._cache.close()
            self._cache = None

    # ------------------------------------------------------------------ the request
    def image_urls(self, planned: PlannedRequest) -> list[str]:
        """The two frames as base64 data URLs, earlier first (fMoW images downscaled to ``image_max_side``)."""
        urls = []
        for data, size in zip(self._sources(planned.request), planned.sizes, strict=True):
            if planned.request.frames_jpeg is None:
                with open_image(data) as img:
                    if img.size != size:
                        buf = io.BytesIO()
                        img.convert("RGB").resize(size, Image.Resampling.LANCZOS).save(buf, "JPEG", quality=90)
                        data = buf.getvalue()
            urls.append(f"data:{mime_type(data)};base64,{base64.b64encode(data).decode('ascii')}")
        return urls

    def chat_body(self, planned: PlannedRequest) -> dict:
        """The Chat Completions request body of one pair (also the Batch API line's ``body``)."""
        content = [{"type": "text", "text": self.prompt}]
        content += [
            {"type": "image_url", "image_url": {"url": url, "detail": self.config.image_detail}}
            for url in self.image_urls(planned)
        ]
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": self.config.max_tokens,
            "temperature": self.config.temperature,
        }

    def _run_threaded(self, to_send: list[PlannedRequest], api_key: str) -> Iterator[AnnotationResult]:
        """Run the async workers in a thread and hand their results on as they arrive."""
        results: queue.Queue = queue.Queue()
        self._stop.clear()

        def target():
            try:
                asyncio.run(self._run_async(to_send, api_key, results))
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
            self._stop.set()
            thread.join()

    async def _run_async(self, to_send: list[PlannedRequest], api_key: str, results: queue.Queue) -> None:
        cfg = self.config
        client = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=cfg.base_url or os.environ.get("OPENAI_BASE_URL") or None,
            max_retries=0,
            timeout=cfg.timeout_s,
        )
        limiter = RateLimiter(cfg.rpm, cfg.tpm)
        pending = list(reversed(to_send))

        async def worker():
            while pending:
                planned = pending.pop()
                if self._stop.is_set() or self._fatal:
                    results.put(self.fail(planned, "not sent: the run stopped"))
                elif not self.reserve(planned):
                    results.put(self.budget_result(planned))
                else:
                    try:
                        results.put(await self._send(client, limiter, planned))
                    finally:
                        self.release(planned)

        async with client:
            await asyncio.gather(*(worker() for _ in range(min(cfg.concurrency, len(to_send)))))

    async def _send(self, client, limiter: RateLimiter, planned: PlannedRequest) -> AnnotationResult:
        cfg = self.config
        body = self.chat_body(planned)
        expected = planned.input_tokens + min(EXPECTED_OUTPUT_TOKENS, cfg.max_tokens)
        reasons: list[str] = []
        self.stats.sent += 1
        for attempt in range(cfg.max_retries + 1):
            if self._stop.is_set() or self._fatal:
                return self.fail(planned, "not sent: the run stopped")
            await limiter.acquire(expected)
            self.stats.requests += 1
            self.stats.last_request_at = time.monotonic()
            if self.stats.first_request_at is None:
                self.stats.first_request_at = self.stats.last_request_at
            wait = None
            try:
                completion = await client.chat.completions.create(**body)
            except openai.APITimeoutError:
                reason = "timeout"
            except openai.APIConnectionError as err:
                reason = f"connection error ({type(err.__cause__).__name__ if err.__cause__ else 'closed'})"
            except (openai.AuthenticationError, openai.PermissionDeniedError) as err:
                self._fatal = f"the endpoint refused the API key (HTTP {err.status_code}): check OPENAI_API_KEY"
                self._stop.set()
                return self.fail(planned, f"http {err.status_code}")
            except openai.APIStatusError as err:
                status = err.status_code
                wait = retry_after_seconds(err.response.headers)
                reason = f"http {status}"
                if status == 429:
                    limiter.pause_until(time.monotonic() + (wait if wait is not None else 0.0))
                elif status < 500 and status not in (408, 409):
                    return self.fail(planned, f"http {status}: {str(err.message)[:200]}")
            except (openai.APIResponseValidationError, ValueError, TypeError) as err:
                return self.record(planned, "malformed", None, f"unreadable reply: {str(err)[:200]}", {})
            else:
                try:
                    status, text, reason = classify_completion(completion)
                    usage = completion.usage.model_dump(exclude_none=True) if completion.usage else {}
                except (AttributeError, TypeError, ValueError) as err:
                    status, text, reason, usage = "malformed", None, f"unreadable reply: {str(err)[:200]}", {}
                return self.record(planned, status, text, reason, usage)
            reasons.append(reason)
            if attempt < cfg.max_retries:
                self.stats.retries_by_reason[reason.split(" (")[0]] += 1
                delay = wait if wait is not None else backoff_delay(attempt, cfg.backoff_s, cfg.backoff_max_s)
                await asyncio.sleep(min(delay, cfg.backoff_max_s))
        summary = ", ".join(f"{n}x {r}" for r, n in Counter(reasons).items())
        return self.fail(planned, f"{reasons[-1]}: gave up after {len(reasons)} attempts ({summary})")
