"""``geollava-lmms-tasks``: print the folder of the benchmark's lmms-eval task definitions, for ``--include_path``.

    lmms-eval --include_path "$(geollava-lmms-tasks)" --tasks geollava --model openai --model_args ...

See docs/evaluation.md "In lmms-eval".
"""

import argparse
import sys
from pathlib import Path


#: The folder of the task YAMLs (``geollava``, ``geollava_levircc``, ``geollava_sequences``) and their ``hooks``.
TASKS_DIR = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``geollava-lmms-tasks``: prints :data:`TASKS_DIR`."""
    parser = argparse.ArgumentParser(
        prog="geollava-lmms-tasks",
        description="Print the folder of the benchmark's lmms-eval tasks, for --include_path.",
    )
    parser.parse_args(argv)
    print(TASKS_DIR)
    return 0


if __name__ == "__main__":
    sys.exit(main())
