"""A ``TrainerCallback`` that adds samples/s, tokens/s and peak memory to the trainer's logs."""

import logging
import resource
import sys
import time

import torch
from transformers import TrainerCallback


logger = logging.getLogger(__name__)


def peak_memory_mb() -> float:
    """Peak memory of this process in MB: CUDA allocated memory on a GPU, else the peak resident set size."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


class ThroughputCallback(TrainerCallback):
    """Log ``samples_per_second``, ``tokens_per_second`` (non-padding input tokens) and ``peak_memory_mb``.

    Rates are over the optimizer steps since the previous log. Samples are steps x the global batch (per-device
    batch x accumulation x processes); tokens come from the trainer's ``num_input_tokens_seen`` (set
    ``include_num_input_tokens_seen``), gathered over processes. The whole-run figures are in :attr:`totals`.

    Attributes:
        totals: ``samples``, ``tokens``, ``seconds``, ``samples_per_second``, ``tokens_per_second``,
            ``peak_memory_mb`` after training ends.
    """

    def __init__(self):
        """Create the callback."""
        self.totals: dict[str, float] = {}
        self._start = self._last_time = 0.0
        self._start_step = self._last_step = 0
        self._start_tokens = self._last_tokens = 0

    @staticmethod
    def _global_batch(args) -> int:
        return args.per_device_train_batch_size * args.gradient_accumulation_steps * max(args.world_size, 1)

    def on_train_begin(self, args, state, control, **kwargs):
        """Start the clocks (after a resume, from the resumed step)."""
        self._start = self._last_time = time.perf_counter()
        self._start_step = self._last_step = state.global_step
        self._start_tokens = self._last_tokens = state.num_input_tokens_seen
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        """Add the rates since the previous log to the log entry just written."""
        if not logs or "loss" not in logs:
            return control
        now = time.perf_counter()
        seconds = max(now - self._last_time, 1e-9)
        steps = state.global_step - self._last_step
        tokens = state.num_input_tokens_seen - self._last_tokens
        extra = {
            "samples_per_second": round(steps * self._global_batch(args) / seconds, 3),
            "tokens_per_second": round(tokens / seconds, 1),
            "peak_memory_mb": round(peak_memory_mb(), 1),
        }
        logs.update(extra)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(extra)
        self._last_time, self._last_step, self._last_tokens = now, state.global_step, state.num_input_tokens_seen
        return control

    def on_train_end(self, args, state, control, **kwargs):
        """Record the whole-run figures."""
        seconds = max(time.perf_counter() - self._start, 1e-9)
        samples = (state.global_step - self._start_step) * self._global_batch(args)
        tokens = state.num_input_tokens_seen - self._start_tokens
        self.totals = {
            "samples": samples,
            "tokens": tokens,
            "seconds": round(seconds, 3),
            "samples_per_second": round(samples / seconds, 3),
            "tokens_per_second": round(tokens / seconds, 1),
            "peak_memory_mb": round(peak_memory_mb(), 1),
        }
        logger.info(
            "throughput: %.2f samples/s, %.0f tokens/s, peak memory %.0f MB",
            self.totals["samples_per_second"],
            self.totals["tokens_per_second"],
            self.totals["peak_memory_mb"],
        )
        return control
