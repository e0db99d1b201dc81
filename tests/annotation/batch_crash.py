"""Run the Batch path on ``n`` test pairs and SIGKILL this process at a chosen point (the kill tests' subprocess).

    python -m tests.annotation.batch_crash KILL_AT COUNT N_PAIRS OPTIONS_JSON

The kill is a real ``SIGKILL``: no ``finally`` runs, nothing is flushed (``KILL_AT``: see :func:`install`).
"""

import json
import os
import signal
import sys

import openai.resources.batches
import openai.resources.files

from dataset_builder.annotation import get_annotator
from dataset_builder.annotation.openai import batch
from dataset_builder.annotation.openai.batch import BatchRunner
from dataset_builder.annotation.openai.cache import AnnotationCache
from tests.annotation.helpers import pair_requests


STATES = ("written", "uploaded", "submitted", "downloaded")
KILL_POINTS = (*STATES, "upload-lost", "create-lost", "merging")


def die() -> None:
    """SIGKILL this process."""
    os.kill(os.getpid(), signal.SIGKILL)


def _after(owner, name: str, should_die) -> None:
    original = getattr(owner, name)

    def wrapped(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        if should_die(self, args, kwargs):
            die()
        return result

    setattr(owner, name, wrapped)


def install(kill_at: str, count: int) -> None:
    """Patch the point where this run is to die.

    Args:
        kill_at: A batch file state (``written``, ``uploaded``, ``submitted``, ``downloaded``): die right after the
            state file records the ``count``-th batch file in it; ``upload-lost`` / ``create-lost``: die after the
            server stored an upload / created a batch but before the run learnt of it; ``merging``: die after the
            first chunk of a batch's answers reached the cache (chunks of 2).
        count: See ``kill_at``.
    """
    if kill_at in STATES:
        reached = lambda runner, *_: sum(e["state"] == kill_at for e in runner.state.batches.values()) >= count  # noqa: E731
        _after(BatchRunner, "save_state", reached)
    elif kill_at == "upload-lost":
        _after(openai.resources.files.Files, "create", lambda *_: True)
    elif kill_at == "create-lost":
        _after(openai.resources.batches.Batches, "create", lambda *_: True)
    elif kill_at == "merging":
        batch.MERGE_CHUNK = 2
        _after(AnnotationCache, "append_many", lambda _, args, __: any("batch_id" in e for e in args[0]))
    else:
        raise SystemExit(f"KILL_AT {kill_at!r}: expected one of {', '.join(KILL_POINTS)}")


def main() -> None:
    """Parse the arguments, arm the kill, annotate."""
    kill_at, count, n, options = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
    install(kill_at, count)
    annotator = get_annotator("openai", **{**options, "batch": True})
    for _ in annotator.annotate(pair_requests(n)):
        pass
    raise SystemExit(f"the run ended without reaching {kill_at} #{count}")


if __name__ == "__main__":
    main()
