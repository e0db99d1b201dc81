"""What an OpenAI annotation run did: its counters, ``annotation_report.json`` and the one-line console summary.

The report never holds the API key: the endpoint is reduced to scheme, host, port and path, and the options exclude
nothing secret because the key is never an option (``OPENAI_API_KEY`` only).
"""

from collections import Counter
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

from dataset_builder.annotation.cost import ModelPricing
from dataset_builder.annotation.openai_config import OpenAIAnnotatorConfig


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
    batch_queue: dict = field(default_factory=dict)

    def request_started(self, now: float) -> None:
        """Count one HTTP request started at ``now`` (monotonic seconds)."""
        self.requests += 1
        self.last_request_at = now
        if self.first_request_at is None:
            self.first_request_at = now

    def request_rate(self) -> float | None:
        """Requests started per minute: (n - 1) intervals between the first and the last start."""
        if self.requests < 2 or self.first_request_at is None or self.last_request_at == self.first_request_at:
            return None
        return round(60 * (self.requests - 1) / (self.last_request_at - self.first_request_at), 2)


def redact_endpoint(url: str | None) -> str:
    """An endpoint as it may be reported: scheme, host, port and path, never credentials or a query string."""
    if not url:
        return "https://api.openai.com/v1"
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _tokens(s: AnnotationStats) -> dict:
    error = None
    if s.actual_input_tokens:
        error = round(100 * (s.estimated_input_tokens_answered - s.actual_input_tokens) / s.actual_input_tokens, 3)
    return {
        "estimated_input": s.estimated_input_tokens,
        "estimated_output": s.estimated_output_tokens,
        "actual_input": s.actual_input_tokens,
        "actual_output": s.actual_output_tokens,
        "answered_pairs": s.succeeded + s.refused + s.content_filter + s.empty + s.malformed,
        "estimated_input_of_answered": s.estimated_input_tokens_answered,
        "input_error_pct": error,
    }


def build_report(
    stats: AnnotationStats, config: OpenAIAnnotatorConfig, pricing: ModelPricing, prompt: str, endpoint: str | None
) -> dict:
    """The run's report (``annotation_report.json``): counts, tokens, cost, time, batches; never the key.

    Args:
        stats: The counters.
        config: The annotator's options.
        pricing: The model's prices.
        prompt: The instruction sent with every pair.
        endpoint: The endpoint URL (redacted here).

    Returns:
        The report, JSON-serialisable.
    """
    s, cfg = stats, config
    report = {
        "annotator": "openai",
        "model": cfg.model,
        "endpoint": redact_endpoint(endpoint),
        "prompt": prompt,
        "options": {k: v for k, v in asdict(cfg).items() if k not in ("cache_path", "report_path")},
    }
    for name in ("pairs", "cached", "sent", "requests", "succeeded", "refused", "content_filter", "empty"):
        report[name] = getattr(s, name)
    report |= {
        "malformed": s.malformed,
        "truncated": s.truncated,
        "failed": s.failed,
        "failed_by_reason": dict(s.failed_by_reason),
        "retries_by_reason": dict(s.retries_by_reason),
        "not_sent_budget": s.not_sent_budget,
        "not_sent_dry_run": s.not_sent_dry_run,
        "budget_stopped": s.budget_stopped,
        "tokens": _tokens(s),
        "cost_usd": {
            "estimated": None if s.estimated_cost_usd is None else round(s.estimated_cost_usd, 6),
            "actual": round(s.actual_cost_usd, 6) if pricing.known else None,
            "cap": cfg.max_cost_usd,
            "prices_per_1m": {"input": pricing.input_per_1m, "output": pricing.output_per_1m},
            "batch_discount": pricing.batch_discount if cfg.batch else None,
        },
        "wall_seconds": round(s.send_seconds, 3),
        "requests_per_minute": s.request_rate(),
        "rpm_limit": cfg.rpm or None,
        "batches": s.batches,
    }
    if s.batch_queue:
        report["batch_queue"] = s.batch_queue
    return report


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
