"""The Batch path's files on disk: the state file, the input files with their manifests, and the downloads.

Everything lives beside the answer cache: ``<cache>.batches.json`` (the state, rewritten atomically and fsync'd at
every step) and the folder ``<cache>.batches/`` holding, per batch file ``bNNNNNN``:

- ``bNNNNNN.input.jsonl``: the Batch API input (one request a line, base64 frames), deleted once merged;
- ``bNNNNNN.manifest.jsonl``: ``[custom_id, cache key, estimated input tokens]`` per line, in the input's order;
- ``bNNNNNN.output.jsonl`` / ``bNNNNNN.errors.jsonl``: the downloaded results, deleted once merged.

A batch file moves through ``written -> uploaded -> submitted -> downloaded -> merged`` (or ``failed``, or ``split``
into two smaller files when the API refuses it as too large). Each state is recorded before the next step starts, so
a run killed anywhere knows, on restart, what exists locally, what exists at OpenAI, and what was merged.
"""

import contextlib
import fcntl
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from dataset_builder.atomic import atomic_path, write_json


logger = logging.getLogger(__name__)

VERSION = 2
#: States of a batch file that are over (kept in the state file only for the report of the run that ended them).
DONE = ("merged", "failed", "split")


def state_path(cache_path: Path) -> Path:
    """The batch state file that goes with a cache file."""
    return cache_path.with_name(f"{cache_path.stem}.batches.json")


@dataclass(frozen=True)
class Limits:
    """What one batch input file may hold: the Batch API's per-file limits and the enqueued-token limit."""

    requests: int
    bytes: int
    tokens: int


class BatchLedger:
    """The state file and folder of the Batch path, held by one run at a time (an exclusive lock).

    Args:
        cache_path: The answer cache; the state sits beside it.
    """

    def __init__(self, cache_path: Path):
        self.path = state_path(cache_path)
        self.folder = cache_path.with_name(f"{cache_path.stem}.batches")
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            os.close(self._lock_fd)
            raise RuntimeError(f"{self.folder}: another --batch run uses this cache; wait for it to end") from err
        self.state = self._load()
        self._tidy()

    # ------------------------------------------------------------------ the state file
    def _load(self) -> dict:
        if not self.path.exists():
            return {"version": VERSION, "next": 1, "batches": {}}
        state = json.loads(self.path.read_text(encoding="utf-8"))
        if state.get("version") != VERSION:
            state = self._migrate(state)
        # batch files an earlier run finished belong to its report, not to this run's
        state["batches"] = {n: e for n, e in state["batches"].items() if e["state"] not in DONE}
        return state

    def _migrate(self, old: dict) -> dict:
        """Version 1 (requests inside the state file) -> version 2, keeping every upload and unmerged batch."""
        state = {"version": VERSION, "next": 1, "batches": {}}
        rows = [(None, fid, e, "uploaded") for fid, e in old.get("uploads", {}).items()]
        rows += [(bid, e["input_file_id"], e, "submitted") for bid, e in old.get("batches", {}).items()]
        for batch_id, file_id, entry, status in rows:
            if entry.get("merged"):
                continue
            name = self.new_name(state)
            lines = [[cid, item["key"], item["input_tokens"]] for cid, item in entry["requests"].items()]
            with atomic_path(self.folder / f"{name}.manifest.jsonl", fsync=True) as tmp:
                tmp.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
            state["batches"][name] = new_entry(name, "", len(lines), 0, sum(t for *_, t in lines))
            state["batches"][name] |= {"state": status, "file_id": file_id, "batch_id": batch_id}
        logger.info("%s: version-1 batch state converted (%d batch file(s))", self.path, len(state["batches"]))
        return state

    def _tidy(self) -> None:
        """Remove files of batch files the state does not hold (a run killed between writing and recording)."""
        keep = {f"{name}.{kind}.jsonl" for name in self.state["batches"] for kind in FILE_KINDS}
        for path in self.folder.iterdir():
            if path.is_file() and path.name != ".lock" and path.name not in keep:
                path.unlink(missing_ok=True)

    def save(self) -> None:
        """Write the state atomically and fsync it."""
        write_json(self.path, self.state, indent=None, fsync=True)

    @staticmethod
    def new_name(state: dict) -> str:
        """The next batch file's name (the counter is saved with the entry that uses it)."""
        name = f"b{state['next']:06d}"
        state["next"] += 1
        return name

    @property
    def entries(self) -> dict[str, dict]:
        """Batch file name -> its entry, in the order written."""
        return self.state["batches"]

    def file(self, name: str, kind: str) -> Path:
        """A batch file's path: ``kind`` is ``input``, ``manifest``, ``output`` or ``errors``."""
        return self.folder / f"{name}.{kind}.jsonl"

    def remove_files(self, name: str) -> None:
        """Delete a finished batch file's local files (the cache holds its answers)."""
        for kind in FILE_KINDS:
            self.file(name, kind).unlink(missing_ok=True)

    def manifest(self, name: str) -> dict[str, tuple[str, int]]:
        """``custom_id -> (cache key, estimated input tokens)`` of one batch file (at most one file's requests)."""
        out = {}
        with open(self.file(name, "manifest"), encoding="utf-8") as fh:
            for line in fh:
                cid, key, tokens = json.loads(line)
                out[cid] = (key, tokens)
        return out

    def manifest_keys(self, name: str) -> Iterator[str]:
        """The cache keys of one batch file, streamed."""
        with open(self.file(name, "manifest"), encoding="utf-8") as fh:
            for line in fh:
                yield json.loads(line)[1]

    def close(self) -> None:
        """Release the lock."""
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


FILE_KINDS = ("input", "manifest", "output", "errors")


def entry_summary(entry: dict) -> dict:
    """A batch file as ``annotation_report.json`` shows it (``batches``)."""
    keys = ("state", "requests", "bytes", "input_tokens", "request_counts", "token_limit_retries", "error")
    return {"id": entry["batch_id"], "file": entry["name"], "status": entry["batch_status"]} | {
        k: entry[k] for k in keys
    }


def new_entry(name: str, run: str, requests: int, size: int, tokens: int) -> dict:
    """The state entry of a batch file just written."""
    return {
        "name": name,
        "run": run,
        "state": "written",
        "requests": requests,
        "bytes": size,
        "input_tokens": tokens,
        "file_id": None,
        "batch_id": None,
        "batch_status": None,
        "request_counts": None,
        "token_limit_retries": 0,
        "error": None,
        "written_at": time.time(),
    }


class InputFileWriter:
    """Writes requests into batch input files, starting a new file before a limit would be passed.

    Each file and its manifest are written under temporary names and renamed (fsync'd) when the file is closed;
    only then is the entry added to the ledger (state ``written``) and saved.

    Args:
        ledger: The ledger (for names and registration).
        limits: Requests, bytes and estimated input tokens a file may hold.
        run: The run's id, recorded in each entry.
    """

    def __init__(self, ledger: BatchLedger, limits: Limits, run: str):
        self.ledger = ledger
        self.limits = limits
        self.run = run
        self._stack: ExitStack | None = None
        self._name = ""
        self._fh = self._manifest = None
        self._n = self._bytes = self._tokens = 0

    def fits(self, line: bytes, tokens: int) -> bool:
        """Whether one request can go in a batch file at all."""
        return len(line) <= self.limits.bytes and tokens <= self.limits.tokens

    def add(self, custom_id: str, key: str, tokens: int, line: bytes) -> dict | None:
        """Write one request line; returns the entry of the file it closed to make room, if any."""
        closed = None
        lim = self.limits
        if self._n and (
            self._n + 1 > lim.requests or self._bytes + len(line) > lim.bytes or self._tokens + tokens > lim.tokens
        ):
            closed = self.close()
        if self._stack is None:
            self._open()
        self._fh.write(line)
        self._manifest.write(json.dumps([custom_id, key, tokens]).encode("utf-8") + b"\n")
        self._n, self._bytes, self._tokens = self._n + 1, self._bytes + len(line), self._tokens + tokens
        return closed

    def _open(self) -> None:
        self._name = self.ledger.new_name(self.ledger.state)
        self._stack = ExitStack()
        paths = [self._stack.enter_context(atomic_path(self.ledger.file(self._name, k), fsync=True)) for k in KINDS_W]
        self._fh = self._stack.enter_context(open(paths[0], "wb"))  # noqa: SIM115 - closed by the stack
        self._manifest = self._stack.enter_context(open(paths[1], "wb"))  # noqa: SIM115 - closed by the stack
        self._n = self._bytes = self._tokens = 0

    def close(self) -> dict | None:
        """Finish the open file (rename it into place) and record it as ``written``; ``None`` when none is open."""
        if self._stack is None:
            return None
        self._stack.close()  # closes both files, then fsyncs and renames them
        self._stack = None
        entry = new_entry(self._name, self.run, self._n, self._bytes, self._tokens)
        self.ledger.entries[self._name] = entry
        self.ledger.save()
        logger.info("batch file %s written: %d request(s), %.1f MB", self._name, self._n, self._bytes / 1e6)
        return entry

    def abandon(self) -> None:
        """Drop the open file (its temporaries are removed; its requests were never recorded)."""
        if self._stack is not None:
            with contextlib.suppress(Exception):
                self._stack.__exit__(RuntimeError, RuntimeError("abandoned"), None)
            self._stack = None


KINDS_W = ("input", "manifest")


def split_entry(ledger: BatchLedger, entry: dict) -> list[dict]:
    """Rewrite a batch file that the API refused as too large into two halves (same run, same requests).

    Returns:
        The two new entries (state ``written``); the old one is marked ``split`` and its files removed.
    """
    half = math.ceil(entry["requests"] / 2)
    writer = InputFileWriter(ledger, Limits(half, 1 << 62, 1 << 62), entry["run"])
    children = []
    with open(ledger.file(entry["name"], "input"), "rb") as lines, open(ledger.file(entry["name"], "manifest")) as ms:
        for line, item in zip(lines, ms, strict=True):
            cid, key, tokens = json.loads(item)
            if (closed := writer.add(cid, key, tokens, line)) is not None:
                children.append(closed)
    children.append(writer.close())
    entry |= {"state": "split", "error": f"{entry.get('error')}; split into {', '.join(c['name'] for c in children)}"}
    ledger.remove_files(entry["name"])
    ledger.save()
    return children
