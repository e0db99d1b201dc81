"""The ``openai`` annotator: plans each request, asks through the chat or the Batch path, records every answer.

Each pair is one Chat Completions request (the paper's prompt and the two frames, earlier first); each sequence one
with its N frames and their dates. Every final answer is cached (fsync'd) before it is counted or handed on, so a
rerun after a crash only sends what is missing. See docs/annotation.md.
"""

import logging
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from dataset_builder.annotation.base import AnnotationRequest, AnnotationResult
from dataset_builder.annotation.openai.batch import BatchRunner
from dataset_builder.annotation.openai.cache import FINAL_STATUSES, AnnotationCache, cached_result
from dataset_builder.annotation.openai.client import AnnotatorParts, ChatRunner, PlannedRequest, RequestPlanner
from dataset_builder.annotation.openai.config import OpenAIAnnotatorConfig
from dataset_builder.annotation.openai.cost import (
    EXPECTED_OUTPUT_TOKENS,
    AnnotationStats,
    Budget,
    CostEstimate,
    build_report,
    estimate_totals,
    load_price_table,
    pricing_for,
    summary_line,
)
from dataset_builder.atomic import write_json
from dataset_builder.prompts import ANNOTATION_PROMPT, SEQUENCE_ANNOTATION_PROMPT


logger = logging.getLogger(__name__)


class OpenAIAnnotator:
    """Annotator that asks an OpenAI-compatible Chat Completions endpoint, never paying twice for an answer.

    Frames stored in the dataset (``frames_jpeg``) are sent as they are; fMoW images are downscaled to
    ``image_max_side`` pixels (JPEG, quality 90) when larger. The API key is read from ``OPENAI_API_KEY`` only when
    something must be sent, and never logged, reported or stored.

    Args:
        **options: The fields of :class:`~dataset_builder.annotation.openai.config.OpenAIAnnotatorConfig`.

    Raises:
        ValueError: On a bad option, or ``max_cost_usd`` with a model the price table does not list.
    """

    name = "openai"

    def __init__(self, **options):
        self.config = OpenAIAnnotatorConfig(**options)
        cfg = self.config
        self.model = cfg.model
        self.prompt = ANNOTATION_PROMPT
        self.sequence_prompt = SEQUENCE_ANNOTATION_PROMPT
        self.pricing = pricing_for(cfg.model, load_price_table(cfg.price_table))
        if cfg.max_cost_usd is not None and not self.pricing.known:
            raise ValueError(
                f"--max_cost_usd {cfg.max_cost_usd}: the price table has no price for --model {cfg.model!r}; "
                "add it with --price_table FILE"
            )
        self.planner = RequestPlanner(cfg, self.prompt, self.pricing, self.sequence_prompt)
        self.params_hash = self.planner.params_hash
        self.stats = AnnotationStats()
        self.budget = Budget(cfg.max_cost_usd, self.pricing, cfg.max_tokens, cfg.batch, self.stats)
        self._cache: AnnotationCache | None = None

    # ------------------------------------------------------------------ planning and the estimate
    @property
    def cache(self) -> AnnotationCache:
        """The answer cache (opened on first use)."""
        if self._cache is None:
            self._cache = AnnotationCache(self.config.resolved_cache_path)
        return self._cache

    def cached(self, key: str) -> dict | None:
        """The cache entry of a key, or ``None``."""
        return self.cache.get(key)

    def plan(self, request: AnnotationRequest) -> PlannedRequest:
        """Key, sizes and estimated input tokens of one request, and its cached answer if any.

        Raises:
            ValueError: If an image cannot be read (the message names the pair and the file).
        """
        planned = self.planner.plan(request)
        planned.cached = self.cached(planned.key)
        return planned

    def lookup(self, request: AnnotationRequest) -> AnnotationResult | None:
        """The cached final answer of a request, or ``None`` (nothing is sent or counted)."""
        planned = self.plan(request)
        if planned.cached is None or planned.cached.get("status") not in FINAL_STATUSES:
            return None
        return cached_result(request.id, planned.cached)

    def _needs_sending(self, planned: PlannedRequest) -> bool:
        entry = planned.cached
        if entry is None or entry.get("status") not in FINAL_STATUSES:
            return True
        return entry["status"] != "ok" and self.config.retry_failed

    def estimate(self, requests: Iterable[AnnotationRequest]) -> tuple[CostEstimate, int]:
        """The estimate of sending every request not already cached, streamed (no request is kept).

        Args:
            requests: The pairs.

        Returns:
            ``(estimate, n_cached)``.
        """
        n, tokens, cached = 0, 0, 0
        for request in requests:
            planned = self.plan(request)
            if self._needs_sending(planned):
                n, tokens = n + 1, tokens + planned.input_tokens
            else:
                cached += 1
        return self._estimate(n, tokens), cached

    def _estimate(self, n: int, tokens: int) -> CostEstimate:
        cfg = self.config
        return estimate_totals(n, tokens, self.pricing, EXPECTED_OUTPUT_TOKENS, cfg.max_tokens, cfg.batch)

    def plan_stream(self, requests: Iterable[AnnotationRequest]) -> Iterator[AnnotationResult | PlannedRequest]:
        """Plan requests one at a time: a cached answer comes out as its result, anything else as the request.

        The run's estimate (``stats.estimated_*``) grows with every request to send; nothing is kept.
        """
        s, expected = self.stats, min(EXPECTED_OUTPUT_TOKENS, self.config.max_tokens)
        n, tokens = 0, 0
        for request in requests:
            planned = self.plan(request)
            s.pairs += 1
            s.sequences += request.timestamps is not None
            if not self._needs_sending(planned):
                s.cached += 1
                yield cached_result(planned.request.id, planned.cached)
                continue
            n, tokens = n + 1, tokens + planned.input_tokens
            s.estimated_input_tokens += planned.input_tokens
            s.estimated_output_tokens += expected
            cost = self.pricing.cost_usd(planned.input_tokens, expected, self.config.batch)
            known = cost is not None and s.estimated_cost_usd is not None
            s.estimated_cost_usd = s.estimated_cost_usd + cost if known else None
            yield planned
        logger.info("%s", self._estimate(n, tokens).summary())

    def api_key(self) -> str:
        """``OPENAI_API_KEY``, asked for only once something must be sent.

        Raises:
            ValueError: If it is not set.
        """
        key = os.environ.get("OPENAI_API_KEY")
        if not key:
            raise ValueError("OPENAI_API_KEY is not set: the openai annotator needs it (any value for a local server)")
        return key

    # ------------------------------------------------------------------ the interface
    def annotate(self, requests: Iterable[AnnotationRequest]) -> Iterator[AnnotationResult]:
        """Yield one result per request: cached answers at once, the others as they arrive.

        Requests are planned one at a time and sent in a bounded window (chat) or written to batch files on disk
        (``--batch``), so memory does not grow with the number of pairs.

        Args:
            requests: The pairs (any iterable; it is read once).

        Yields:
            One :class:`AnnotationResult` per request; ``status="missing"`` for pairs not sent (dry run, budget).

        Raises:
            ValueError: If ``OPENAI_API_KEY`` is not set (and something must be sent).
            RuntimeError: If the endpoint rejects the key (401/403): nothing more can succeed.
        """
        items = self.plan_stream(requests)
        if self.config.dry_run:
            for item in items:
                if isinstance(item, AnnotationResult):
                    yield item
                else:
                    self.stats.not_sent_dry_run += 1
                    yield AnnotationResult(item.request.id, None, "missing", "dry run: not sent")
            self.write_report()
            return
        runner = (BatchRunner if self.config.batch else ChatRunner)(self._parts())
        start = time.perf_counter()
        try:
            yield from runner.run(items)
        finally:
            self.stats.send_seconds += time.perf_counter() - start
            self.write_report()
        if runner.fatal:
            raise RuntimeError(runner.fatal)

    def _parts(self) -> AnnotatorParts:
        return AnnotatorParts(
            config=self.config,
            planner=self.planner,
            budget=self.budget,
            stats=self.stats,
            cached=self.cached,
            api_key=self.api_key,
            record=self.record_many,
            fail=self.fail,
            budget_result=self.budget_result,
            write_report=self.write_report,
        )

    # ------------------------------------------------------------------ answers
    def record_many(self, answers: list[tuple], **extra) -> list[AnnotationResult]:
        """Cache final answers (one write, one fsync), then count them: the only way an answer enters the results.

        Args:
            answers: ``(planned, status, text, reason, usage)`` tuples: a final status (``ok``, ``refused``,
                ``content_filter``, ``empty``, ``malformed``), the caption for ``ok``, why for any other status,
                and the ``usage`` the server reported.
            **extra: Added to every cache entry (the Batch path adds ``batch_id``).

        Returns:
            The results, in the same order.
        """
        now = time.time()
        entries = [
            {
                "key": planned.key,
                "id": planned.request.id,
                "model": self.model,
                # the pairs' or the sequences', read from the key: a Batch answer comes back as its key only
                "params_hash": planned.key.rsplit("|", 2)[1],
                "image_hash": planned.image_hash,
                "status": status,
                "text": text,
                "reason": reason,
                "usage": usage,
                "batch": self.config.batch,
                "time": now,
                **extra,
            }
            for planned, status, text, reason, usage in answers
        ]
        self.cache.append_many(entries)
        return [self._count(*answer) for answer in answers]

    def _count(self, planned: PlannedRequest, status: str, text: str | None, reason: str, usage: dict):
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

    def budget_result(self, planned: PlannedRequest) -> AnnotationResult:
        """The result of a pair left unsent by the budget cap."""
        self.stats.not_sent_budget += 1
        return AnnotationResult(planned.request.id, None, "missing", f"--max_cost_usd {self.config.max_cost_usd}")

    def add_usage(self, usage: dict) -> None:
        """Add a reply's token counts and their price to the running totals."""
        inp, out = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        self.stats.actual_input_tokens += inp
        self.stats.actual_output_tokens += out
        self.stats.actual_cost_usd += self.pricing.cost_usd(inp, out, self.config.batch) or 0.0

    def worst_case_usd(self, planned: PlannedRequest) -> float:
        """The most one request can cost (every output token used)."""
        return self.budget.worst_case_usd(planned.input_tokens)

    # ------------------------------------------------------------------ report
    def report(self) -> dict:
        """The run's report (``annotation_report.json``): counts, tokens, cost, time; never the key."""
        endpoint = self.config.base_url or os.environ.get("OPENAI_BASE_URL")
        return build_report(self.stats, self.config, self.pricing, self.prompt, endpoint, self.sequence_prompt)

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
