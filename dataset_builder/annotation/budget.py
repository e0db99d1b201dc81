"""``--max_cost_usd``: reserve each request's worst case before sending, so the cap holds with requests in flight."""

import logging
import threading

from dataset_builder.annotation.cost import ModelPricing
from dataset_builder.annotation.report import AnnotationStats


logger = logging.getLogger(__name__)


class Budget:
    """The spending cap of a run: what is spent (``stats.actual_cost_usd``) plus what is reserved stays under it.

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
