"""What an OpenAI annotation run costs: token and price estimates, the ``--max_cost_usd`` cap, and the report.

Estimates follow OpenAI's published image-token rules with the prices of ``openai_prices.yaml``; the cap reserves
each request's worst case before it is sent; ``annotation_report.json`` holds the counters, never the key.
See docs/annotation.md.
"""

import logging
import math
import threading
from collections import Counter
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from dataset_builder.annotation.openai.config import OpenAIAnnotatorConfig


logger = logging.getLogger(__name__)

#: Chat format overhead: ~3 tokens per message plus 3 priming the reply (OpenAI cookbook, "counting tokens").
MESSAGE_OVERHEAD_TOKENS = 3
REPLY_PRIMING_TOKENS = 3
CHARS_PER_TOKEN = 4
#: Expected answer length used by the up-front estimate (two short descriptions and the changes).
EXPECTED_OUTPUT_TOKENS = 180


@dataclass(frozen=True)
class ModelPricing:
    """What one model costs and how it counts image tokens.

    Attributes:
        model: The model name.
        input_per_1m: USD per 1M input tokens (``None`` when unknown).
        output_per_1m: USD per 1M output tokens (``None`` when unknown).
        batch_discount: Factor applied to both prices on the Batch API.
        image_rule: ``{"scheme": "tile", "base", "tile"}`` or ``{"scheme": "patch", "multiplier", "max_patches"}``.
    """

    model: str
    input_per_1m: float | None
    output_per_1m: float | None
    batch_discount: float
    image_rule: dict

    @property
    def known(self) -> bool:
        """Whether the price table lists this model."""
        return self.input_per_1m is not None and self.output_per_1m is not None

    def cost_usd(self, input_tokens: int, output_tokens: int, batch: bool = False) -> float | None:
        """The price of that many tokens (``None`` when the model's price is unknown)."""
        if not self.known:
            return None
        factor = self.batch_discount if batch else 1.0
        return factor * (input_tokens * self.input_per_1m + output_tokens * self.output_per_1m) / 1e6


def load_price_table(override: str | Path | None = None) -> dict:
    """The shipped price table, with an override file's ``models`` (and other keys) merged over it.

    Args:
        override: A YAML file in the shipped table's format, or ``None``.

    Returns:
        ``{"batch_discount": float, "models": {name: {...}}, "default": {...}}``.

    Raises:
        ValueError: If the override is not a mapping or a model entry lacks ``input``/``output``.
    """
    table = yaml.safe_load(
        resources.files("dataset_builder.annotation.openai").joinpath("openai_prices.yaml").read_text()
    )
    if override is not None:
        extra = yaml.safe_load(Path(override).read_text(encoding="utf-8")) or {}
        if not isinstance(extra, dict):
            raise ValueError(f"{override}: a price table must be a YAML mapping, got {type(extra).__name__}")
        for name, entry in (extra.get("models") or {}).items():
            if not isinstance(entry, dict) or not {"input", "output"} <= entry.keys():
                raise ValueError(f"{override}: models.{name} needs 'input' and 'output' (USD per 1M tokens)")
            table["models"][name] = {**table["models"].get(name, {}), **entry}
        for key in ("batch_discount", "default"):
            if key in extra:
                table[key] = extra[key]
    return table


def pricing_for(model: str, table: dict) -> ModelPricing:
    """The pricing of ``model`` from a price table (unknown models get ``default``'s image rule and no price)."""
    entry = table["models"].get(model)
    if entry is None:
        return ModelPricing(model, None, None, table["batch_discount"], table["default"]["image_tokens"])
    rule = entry.get("image_tokens", table["default"]["image_tokens"])
    return ModelPricing(model, float(entry["input"]), float(entry["output"]), table["batch_discount"], rule)


def image_tokens(width: int, height: int, detail: str, rule: dict) -> int:
    """Input tokens one image costs, by OpenAI's published rule (the vision guide's "Calculating costs").

    ``tile`` models (gpt-4o, gpt-4o-mini): detail ``low`` costs ``base`` whatever the size; ``high`` fits the image
    in 2048x2048, then its shortest side in 768 (never enlarged) and costs ``base + tile`` per 512-px tile.
    ``patch`` models (gpt-4.1-mini/nano): 32-px patches, at most ``max_patches``, times ``multiplier``.

    Args:
        width: Image width in pixels, as sent.
        height: Image height in pixels, as sent.
        detail: ``"low"``, ``"high"`` or ``"auto"`` (estimated as ``"high"``).
        rule: The model's ``image_tokens`` entry of the price table.

    Returns:
        The number of tokens.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size {width}x{height}: both sides must be >= 1 pixel")
    if rule["scheme"] == "patch":
        return _patch_tokens(width, height, rule)
    if detail == "low":
        return int(rule["base"])
    w, h = float(width), float(height)
    scale = min(1.0, 2048 / max(w, h))
    w, h = w * scale, h * scale
    scale = min(1.0, 768 / min(w, h))
    w, h = w * scale, h * scale
    tiles = math.ceil(w / 512) * math.ceil(h / 512)
    return int(rule["base"] + rule["tile"] * tiles)


def _patch_tokens(width: int, height: int, rule: dict) -> int:
    max_patches = int(rule.get("max_patches", 1536))
    patches = math.ceil(width / 32) * math.ceil(height / 32)
    if patches > max_patches:
        r = math.sqrt(32 * 32 * max_patches / (width * height))
        r *= min(math.floor(width * r / 32) / (width * r / 32), math.floor(height * r / 32) / (height * r / 32))
        patches = math.ceil(width * r / 32) * math.ceil(height * r / 32)
    return math.ceil(patches * float(rule["multiplier"]))


def text_tokens(text: str) -> int:
    """Estimated tokens of English text: 4 characters a token, OpenAI's rule of thumb (no tokenizer offline)."""
    return math.ceil(len(text) / CHARS_PER_TOKEN) if text else 0


def request_input_tokens(prompt: str, image_sizes: list[tuple[int, int]], detail: str, rule: dict) -> int:
    """Estimated input tokens of one chat request: one user message with the prompt and the images.

    Args:
        prompt: The instruction text.
        image_sizes: ``(width, height)`` of each image as sent.
        detail: The image detail.
        rule: The model's image-token rule.

    Returns:
        The estimated ``prompt_tokens`` the API will report.
    """
    images = sum(image_tokens(w, h, detail, rule) for w, h in image_sizes)
    return MESSAGE_OVERHEAD_TOKENS + REPLY_PRIMING_TOKENS + text_tokens(prompt) + images


@dataclass
class CostEstimate:
    """The estimate of a run, printed and recorded before anything is sent.

    Attributes:
        model: The model.
        pairs: Pairs to send.
        input_tokens: Estimated input tokens of all of them.
        output_tokens: Estimated output tokens (``pairs * expected_output_tokens``).
        max_output_tokens: Output tokens if every answer used ``max_tokens``.
        cost_usd: Estimated price (``None`` when the model's price is unknown).
        max_cost_usd: Price if every answer used ``max_tokens``.
        batch: Whether Batch API prices were used.
    """

    model: str
    pairs: int
    input_tokens: int
    output_tokens: int
    max_output_tokens: int
    cost_usd: float | None
    max_cost_usd: float | None
    batch: bool

    def summary(self) -> str:
        """One line for the console and the log."""
        price = "price unknown (model not in the price table)" if self.cost_usd is None else f"${self.cost_usd:,.2f}"
        upper = "" if self.max_cost_usd is None else f" (at most ${self.max_cost_usd:,.2f} if every answer is long)"
        return (
            f"estimate for {self.pairs:,} pair(s) on {self.model}{' (Batch API)' if self.batch else ''}: "
            f"{self.input_tokens:,} input + {self.output_tokens:,} output tokens, {price}{upper}"
        )


def estimate_cost(
    tokens: list[int], pricing: ModelPricing, expected_output_tokens: int, max_tokens: int, batch: bool = False
) -> CostEstimate:
    """:func:`estimate_totals` of a list of per-request input token counts."""
    return estimate_totals(len(tokens), sum(tokens), pricing, expected_output_tokens, max_tokens, batch)


def estimate_totals(
    requests: int,
    input_tokens: int,
    pricing: ModelPricing,
    expected_output_tokens: int,
    max_tokens: int,
    batch: bool = False,
) -> CostEstimate:
    """The estimate of ``requests`` requests holding ``input_tokens`` input tokens in all (a streamed sum).

    Args:
        requests: How many requests.
        input_tokens: Their estimated input tokens, added up.
        pricing: The model's pricing.
        expected_output_tokens: Expected answer length in tokens.
        max_tokens: The answer length cap.
        batch: Price at Batch API rates.

    Returns:
        The estimate.
    """
    out = requests * min(expected_output_tokens, max_tokens)
    return CostEstimate(
        model=pricing.model,
        pairs=requests,
        input_tokens=input_tokens,
        output_tokens=out,
        max_output_tokens=requests * max_tokens,
        cost_usd=pricing.cost_usd(input_tokens, out, batch),
        max_cost_usd=pricing.cost_usd(input_tokens, requests * max_tokens, batch),
        batch=batch,
    )


@dataclass
class AnnotationStats:
    """Counters of one annotator's lifetime (all ``annotate`` calls), written to ``annotation_report.json``."""

    pairs: int = 0
    sequences: int = 0
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


class Budget:
    """``--max_cost_usd``: what is spent (``stats.actual_cost_usd``) plus what is reserved stays under the cap.

    Each request's worst case (input + ``max_tokens``) is reserved before it is sent, so the cap holds with requests
    in flight.

    Args:
        cap: The cap in USD, or ``None`` for no cap (every reservation then succeeds).
        pricing: The model's prices.
        max_tokens: The answer length cap (the worst case of a request uses it all).
        batch: Price at Batch API rates.
        stats: The run's counters (read: the actual cost; written: ``budget_stopped``).
    """

    def __init__(self, cap: float | None, pricing: ModelPricing, max_tokens: int, batch: bool, stats: AnnotationStats):
        self.cap = cap
        self.pricing = pricing
        self.max_tokens = max_tokens
        self.batch = batch
        self.stats = stats
        self.reserved_usd = 0.0
        self._lock = threading.Lock()

    def worst_case_usd(self, input_tokens: int, requests: int = 1) -> float:
        """The most ``requests`` requests holding ``input_tokens`` input tokens in all can cost (all output used)."""
        return self.pricing.cost_usd(input_tokens, requests * self.max_tokens, self.batch) or 0.0

    def reserve(self, input_tokens: int, requests: int = 1) -> bool:
        """Reserve the worst case of a request (or a batch file of ``requests``); ``False`` once the cap would pass.

        Once one reservation is refused, every later one is too: the run stops sending rather than squeezing smaller
        requests under the cap in a different order.
        """
        if self.cap is None:
            return True
        worst = self.worst_case_usd(input_tokens, requests)
        with self._lock:
            if self.stats.budget_stopped or self.stats.actual_cost_usd + self.reserved_usd + worst > self.cap:
                if not self.stats.budget_stopped:
                    logger.warning(
                        "--max_cost_usd %.4f: stopping (spent $%.4f, $%.4f in flight, next request up to $%.4f)",
                        self.cap,
                        self.stats.actual_cost_usd,
                        self.reserved_usd,
                        worst,
                    )
                self.stats.budget_stopped = True
                return False
            self.reserved_usd += worst
            return True

    def release(self, input_tokens: int, requests: int = 1) -> None:
        """Give back a reservation once the request's real cost is counted."""
        if self.cap is not None:
            with self._lock:
                self.reserved_usd = max(0.0, self.reserved_usd - self.worst_case_usd(input_tokens, requests))


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
    stats: AnnotationStats,
    config: OpenAIAnnotatorConfig,
    pricing: ModelPricing,
    prompt: str,
    endpoint: str | None,
    sequence_prompt: str | None = None,
) -> dict:
    """The run's report (``annotation_report.json``): counts, tokens, cost, time, batches; never the key.

    ``pairs`` counts every request; when some were sequences, ``sequences`` says how many and ``sequence_prompt``
    what they were asked.

    Args:
        stats: The counters.
        config: The annotator's options.
        pricing: The model's prices.
        prompt: The instruction sent with every pair.
        endpoint: The endpoint URL (redacted here).
        sequence_prompt: The instruction sent with every sequence.

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
    if s.sequences:
        report |= {"sequence_prompt": sequence_prompt, "sequences": s.sequences}
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
