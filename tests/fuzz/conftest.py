"""Write the fuzz campaign's outcome counts where GEOLLAVA_FUZZ_REPORT says (benchmarks/bench_fuzz.py sets it)."""

import os

from dataset_builder.atomic import write_json
from tests.fuzz.outcomes import COUNTS, TESTS


def pytest_sessionfinish(session, exitstatus):
    target = os.environ.get("GEOLLAVA_FUZZ_REPORT")
    if target and COUNTS:
        report = {
            parser: {"tests": TESTS[parser], "inputs": sum(counts.values()), "outcomes": dict(sorted(counts.items()))}
            for parser, counts in sorted(COUNTS.items())
        }
        write_json(target, {"exit_status": int(exitstatus), "parsers": report}, indent=2)
