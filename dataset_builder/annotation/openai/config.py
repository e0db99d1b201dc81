"""Options of the OpenAI annotator, shared by ``geollava-build --annotator openai`` and ``geollava-annotate``.

It imports no client, so the builder parses these options without loading ``openai``. The API key is never an
option (``OPENAI_API_KEY`` only), so it cannot reach a saved config, a report or a card.
See docs/annotation.md.
"""

import os
from dataclasses import dataclass, field
from pathlib import Path


IMAGE_DETAILS = ("low", "high", "auto")
#: The Batch API's limit on one input file (200 MB).
MAX_BATCH_FILE_BYTES = 200 * 1024 * 1024


def default_cache_path() -> Path:
    """Where answers are cached when ``--cache_path`` is not given: one file per user, shared by every run.

    The cache key holds the pair id, the model, the prompt and parameters and the image bytes, so one shared file
    is safe and is what makes "never pay twice" hold across builds and ``geollava-annotate`` runs.
    """
    root = os.environ.get("GEOLLAVA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "geollava"
    )
    return Path(root) / "openai_annotations.jsonl"


@dataclass
class OpenAIAnnotatorConfig:
    """How the OpenAI annotator asks, how fast, at what price, and where it keeps its answers."""

    model: str = field(default="gpt-4o-mini", metadata={"help": "Chat Completions model (the paper: gpt-4o-mini)."})
    base_url: str | None = field(
        default=None,
        metadata={
            "help": "OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (default: OPENAI_BASE_URL "
            "or api.openai.com). The key is read from OPENAI_API_KEY only."
        },
    )
    temperature: float = field(default=0.2, metadata={"help": "Sampling temperature (0-2)."})
    max_tokens: int = field(default=300, metadata={"help": "Most output tokens per answer."})
    image_detail: str = field(
        default="low",
        metadata={
            "help": "Image detail sent with each frame: low (85 tokens a frame) | high (tiled, more tokens) | auto."
        },
    )
    image_max_side: int = field(
        default=512,
        metadata={
            "help": "Longest side, in pixels, of an fMoW image sent when the pair has no stored frames "
            "(larger images are downscaled; 512 = one tile at detail high)."
        },
    )
    concurrency: int = field(default=8, metadata={"help": "Requests in flight at once."})
    rpm: int = field(
        default=5000, metadata={"help": "Requests per minute limit (0: no limit); set your account tier's."}
    )
    tpm: int = field(
        default=2_000_000,
        metadata={"help": "Tokens per minute limit, input + output (0: no limit); set your account tier's."},
    )
    max_retries: int = field(
        default=5, metadata={"help": "Retries of one pair after 429/5xx/timeouts/dropped connections (then failed)."}
    )
    backoff_s: float = field(
        default=1.0, metadata={"help": "First backoff delay in seconds (doubles per retry, with jitter)."}
    )
    backoff_max_s: float = field(default=60.0, metadata={"help": "Longest backoff delay in seconds."})
    timeout_s: float = field(default=60.0, metadata={"help": "Timeout of one request, in seconds."})
    max_cost_usd: float | None = field(
        default=None,
        metadata={"help": "Stop cleanly before the running cost (actual + in flight) would pass this many USD."},
    )
    dry_run: bool = field(default=False, metadata={"help": "Only estimate tokens and cost; send nothing."})
    batch: bool = field(
        default=False, metadata={"help": "Use the OpenAI Batch API (half price, results within 24 h)."}
    )
    batch_poll_s: float = field(default=30.0, metadata={"help": "Seconds between polls of a running batch."})
    batch_max_requests: int = field(
        default=50_000, metadata={"help": "Requests per batch file (the API allows at most 50,000)."}
    )
    batch_max_bytes: int = field(
        default=200_000_000,
        metadata={"help": "Bytes per batch input file (the API allows at most 200 MB = 209,715,200 bytes)."},
    )
    batch_max_enqueued_tokens: int = field(
        default=2_000_000,
        metadata={
            "help": "Estimated input tokens this run keeps enqueued in unfinished batches at once: your "
            "organisation's batch queue limit for the model (platform.openai.com/settings/organization/limits; "
            "2,000,000 = gpt-4o-mini at usage tier 1). New batches are submitted as earlier ones finish."
        },
    )
    cache_path: str | None = field(
        default=None,
        metadata={
            "help": "Append-only JSONL cache of answers (default: $GEOLLAVA_CACHE or "
            "~/.cache/geollava/openai_annotations.jsonl)."
        },
    )
    price_table: str | None = field(
        default=None,
        metadata={"help": "YAML price table overriding the shipped one (USD per 1M tokens per model)."},
    )
    retry_failed: bool = field(
        default=False,
        metadata={"help": "Ask again for pairs cached as refused/content_filter/empty/malformed."},
    )
    report_path: str | None = field(
        default=None,
        metadata={"help": "Where to write annotation_report.json (default: beside the cache)."},
    )

    def __post_init__(self):
        if not self.model.strip():
            raise ValueError(f"--model {self.model!r}: must name a model")
        if self.image_detail not in IMAGE_DETAILS:
            raise ValueError(f"--image_detail {self.image_detail!r}: expected one of {', '.join(IMAGE_DETAILS)}")
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError(f"--temperature {self.temperature}: must be in 0..2")
        for name in (
            "max_tokens",
            "concurrency",
            "image_max_side",
            "batch_max_requests",
            "batch_max_bytes",
            "batch_max_enqueued_tokens",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} {getattr(self, name)}: must be >= 1")
        if self.batch_max_requests > 50_000:
            raise ValueError(f"--batch_max_requests {self.batch_max_requests}: the Batch API takes at most 50000")
        if self.batch_max_bytes > MAX_BATCH_FILE_BYTES:
            raise ValueError(
                f"--batch_max_bytes {self.batch_max_bytes}: the Batch API takes at most {MAX_BATCH_FILE_BYTES} bytes"
            )
        for name in ("rpm", "tpm", "max_retries"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} {getattr(self, name)}: must be >= 0")
        for name in ("backoff_s", "backoff_max_s", "timeout_s", "batch_poll_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name} {getattr(self, name)}: must be > 0 seconds")
        if self.max_cost_usd is not None and self.max_cost_usd <= 0:
            raise ValueError(f"--max_cost_usd {self.max_cost_usd}: must be > 0 (leave it unset for no cap)")
        if self.base_url is not None and not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"--base_url {self.base_url!r}: must start with http:// or https://")
        if self.price_table is not None and not Path(self.price_table).is_file():
            raise ValueError(f"--price_table {self.price_table!r}: no such file")

    @property
    def resolved_cache_path(self) -> Path:
        """The cache file this run uses."""
        return Path(self.cache_path) if self.cache_path else default_cache_path()

    @property
    def resolved_report_path(self) -> Path:
        """The ``annotation_report.json`` this run writes."""
        return (
            Path(self.report_path)
            if self.report_path
            else self.resolved_cache_path.with_name("annotation_report.json")
        )
