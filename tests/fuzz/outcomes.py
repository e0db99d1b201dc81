"""What each fuzzed parser did with each input, counted per outcome class; the shared hypothesis settings.

``GEOLLAVA_FUZZ_REPORT=path.json`` makes the session write the counts there (``benchmarks/bench_fuzz.py`` does, and
turns them into benchmarks/results/fuzz.json and .md, the figures of the README's "Reliability" section).
"""

from collections import Counter, defaultdict

from hypothesis import HealthCheck, settings


#: parser -> outcome class -> inputs
COUNTS: dict[str, Counter] = defaultdict(Counter)
#: parser -> test name -> max_examples
TESTS: dict[str, dict[str, int]] = defaultdict(dict)


def fuzz_settings(parser: str, test: str, max_examples: int, deadline_ms: int) -> settings:
    """Reproducible, bounded settings: derandomized (the same inputs on every run), no example database."""
    TESTS[parser][test] = max_examples
    return settings(
        max_examples=max_examples,
        deadline=deadline_ms,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


def record(parser: str, outcome: str) -> None:
    """Count one input of ``parser`` as ``outcome`` (e.g. ``accepted``, ``refused: ValueError naming the file``)."""
    COUNTS[parser][outcome] += 1
