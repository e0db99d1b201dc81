"""The Batch API path of the OpenAI annotator (``--batch``): half the price, answers within 24 h, at 100K pairs.

Requests go to JSONL input files on disk as they are planned; the files are submitted one at a time under the
enqueued-token limit, polled, downloaded and merged into the answer cache. Each step is recorded in a state file
beside the cache before the next one starts, so a run killed anywhere resumes without paying twice.
See docs/annotation.md.
"""

import contextlib
import fcntl
import json
import logging
import math
import os
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import openai
from openai.types.chat import ChatCompletion

from dataset_builder.annotation.base import AnnotationRequest, AnnotationResult
from dataset_builder.annotation.openai.cache import cached_result, sha256_hex, string_hash
from dataset_builder.annotation.openai.client import (
    AnnotatorParts,
    PlannedRequest,
    RequestRejected,
    RetryPolicy,
    classify_completion,
    client_options,
)
from dataset_builder.atomic import atomic_path, write_json


logger = logging.getLogger(__name__)

#: The state file's format.
VERSION = 2
#: Batch statuses after which the API does nothing more with a batch.
TERMINAL = ("completed", "failed", "expired", "cancelled")
#: States of a batch file that are over (kept in the state file only for the report of the run that ended them).
DONE = ("merged", "failed", "split")
#: The local files of batch file ``bNNNNNN``: ``bNNNNNN.<kind>.jsonl``.
FILE_KINDS = ("input", "manifest", "output", "errors")
#: Words of the API's refusal of an input file over its request or byte limit.
TOO_LARGE = re.compile(r"larger than|more than|too large|too many requests|maximum", re.IGNORECASE)
#: Answers of a download recorded in the cache with one write and one fsync.
MERGE_CHUNK = 1000


def state_path(cache_path: Path) -> Path:
    """The batch state file that goes with a cache file."""
    return cache_path.with_name(f"{cache_path.stem}.batches.json")


@dataclass(frozen=True)
class Limits:
    """What one batch input file may hold: the Batch API's per-file limits and the enqueued-token limit."""

    requests: int
    bytes: int
    tokens: int

    def fits(self, size: int, tokens: int) -> bool:
        """Whether one request of ``size`` bytes and ``tokens`` estimated input tokens fits in a file at all."""
        return size <= self.bytes and tokens <= self.tokens


def custom_id(key: str) -> str:
    """The Batch API ``custom_id`` of a request: a hash of its cache key (unique, free of the pair's details)."""
    return sha256_hex(key)[:32]


def planned_from_key(key: str, input_tokens: int) -> PlannedRequest:
    """A stand-in planned request rebuilt from a cache key (``id|model|params|images``) to record its answer."""
    pair_id, *_, image_hash = key.split("|")
    return PlannedRequest(AnnotationRequest(pair_id, (Path(), Path())), key, image_hash, [], input_tokens)


def parse_batch_row(row: dict) -> tuple[str, str | None, str, dict]:
    """``(status, text, reason, usage)`` of one line of a Batch output or error file.

    An error line, or a response other than 200, is ``failed`` (not cached: a rerun asks again); a 200 response is
    classified as :func:`~dataset_builder.annotation.openai.client.classify_completion` does, ``malformed`` when it
    is not a chat completion.
    """
    response = row.get("response") or {}
    if row.get("error") or response.get("status_code") != 200:
        error = row.get("error") or (response.get("body") or {}).get("error") or {}
        reason = f"batch error: {error.get('code') or response.get('status_code')} {error.get('message', '')}"
        return "failed", None, reason.strip(), {}
    try:
        completion = ChatCompletion.model_validate(response["body"])
        status, text, reason = classify_completion(completion)
        usage = completion.usage.model_dump(exclude_none=True) if completion.usage else {}
    except (ValueError, TypeError, KeyError) as err:
        return "malformed", None, f"unreadable reply: {str(err)[:200]}", {}
    return status, text, reason, usage


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


def entry_summary(entry: dict) -> dict:
    """A batch file as ``annotation_report.json`` shows it (``batches``)."""
    keys = ("state", "requests", "bytes", "input_tokens", "request_counts", "token_limit_retries", "error")
    return {"id": entry["batch_id"], "file": entry["name"], "status": entry["batch_status"]} | {
        k: entry[k] for k in keys
    }


@dataclass
class BatchState:
    """Where the Batch path stands: the state file's content (``next``, ``batches``) and this run's bookkeeping.

    Attributes:
        run_id: This run's id, recorded in the entries of the files it writes.
        next: The number in the next batch file's name (``bNNNNNN``); saved with the entry that uses it.
        batches: Batch file name -> its entry, in the order written: the unfinished ones, and those this run ended.
        pending: Hashes of the cache keys that earlier runs' batch files hold, not merged yet.
        wanted: Of those, the ones this run asked for: key hash -> pair id.
        reserved: Batch files whose worst-case cost this run has reserved (``--max_cost_usd``).
        skipped: Earlier runs' batch files that the budget cap keeps from being sent.
        checked: Earlier runs' uploads already looked for in ``batches.list``.
        hold_until: No submission before this (monotonic) time, after a ``token_limit_exceeded`` refusal.
        last_poll: When the batches were last polled (monotonic).
        planning_done: Whether every request of this run is planned; earlier runs' downloads are merged only then.
        queue: The report's ``batch_queue`` counters.
    """

    run_id: str
    next: int = 1
    batches: dict[str, dict] = field(default_factory=dict)
    pending: set[int] = field(default_factory=set)
    wanted: dict[int, str] = field(default_factory=dict)
    reserved: set[str] = field(default_factory=set)
    skipped: set[str] = field(default_factory=set)
    checked: set[str] = field(default_factory=set)
    hold_until: float = 0.0
    last_poll: float = 0.0
    planning_done: bool = False
    queue: dict = field(default_factory=dict)

    def saved(self) -> dict:
        """What the state file holds."""
        return {"version": VERSION, "next": self.next, "batches": self.batches}


class InputFile:
    """One batch input file and its manifest, written under temporary names until :meth:`finish` renames them.

    The manifest holds ``[custom_id, cache key, estimated input tokens]`` per request, in the input's order.

    Args:
        name: The batch file's name (``bNNNNNN``).
        input_path: Where the input goes.
        manifest_path: Where the manifest goes.
    """

    def __init__(self, name: str, input_path: Path, manifest_path: Path):
        self.name = name
        self.requests = self.bytes = self.tokens = 0
        self._stack = ExitStack()
        tmp_input, tmp_manifest = (
            self._stack.enter_context(atomic_path(p, fsync=True)) for p in (input_path, manifest_path)
        )
        self._input = self._stack.enter_context(open(tmp_input, "wb"))  # noqa: SIM115 - closed by the stack
        self._manifest = self._stack.enter_context(open(tmp_manifest, "wb"))  # noqa: SIM115 - closed by the stack

    def has_room(self, line: bytes, tokens: int, limits: Limits) -> bool:
        """Whether one more request fits under ``limits`` (an empty file takes any request)."""
        return not self.requests or (
            self.requests + 1 <= limits.requests
            and self.bytes + len(line) <= limits.bytes
            and self.tokens + tokens <= limits.tokens
        )

    def add(self, custom_id: str, key: str, tokens: int, line: bytes) -> None:
        """Write one request line and its manifest line."""
        self._input.write(line)
        self._manifest.write(json.dumps([custom_id, key, tokens]).encode("utf-8") + b"\n")
        self.requests, self.bytes, self.tokens = self.requests + 1, self.bytes + len(line), self.tokens + tokens

    def finish(self) -> None:
        """Close both files, fsync them and rename them into place."""
        self._stack.close()

    def abandon(self) -> None:
        """Drop both files (their temporaries are removed; their requests were never recorded)."""
        with contextlib.suppress(Exception):
            self._stack.__exit__(RuntimeError, RuntimeError("abandoned"), None)


class BatchRunner:
    """Sends planned requests through the Batch API and yields their results: writes, submits, polls and merges.

    Beside the cache, ``<cache>.batches.json`` holds the state (rewritten atomically and fsync'd at every step) and
    ``<cache>.batches/`` the files of each batch file ``bNNNNNN``: its input and manifest (written before upload) and
    its downloaded output and errors, all deleted once merged. A batch file moves through ``written -> uploaded ->
    submitted -> downloaded -> merged`` (or ``failed``, or ``split`` in two when the API refuses it as too large).
    On restart, a file written is uploaded; one uploaded but not in a batch is looked for in ``batches.list`` before
    a batch is created; a batch is polled, never created again; a download is merged from disk, skipping answers
    the cache already holds from that batch. A batch failed with ``token_limit_exceeded`` is resubmitted, with the
    same upload, once one of ours finishes (or after a backoff). One run at a time holds the folder (a lock).

    Args:
        parts: What it uses of the annotator.
    """

    def __init__(self, parts: AnnotatorParts):
        self.parts = parts
        self.config = cfg = parts.config
        self.policy = RetryPolicy.from_config(cfg, parts.stats.retries_by_reason)
        self.limits = Limits(cfg.batch_max_requests, cfg.batch_max_bytes, cfg.batch_max_enqueued_tokens)
        self.fatal: str | None = None  # the chat path's field: every fatal error here raises at once
        cache_path = cfg.resolved_cache_path
        self.path = state_path(cache_path)
        self.folder = cache_path.with_name(f"{cache_path.stem}.batches")
        queue = dict.fromkeys(("peak_enqueued_tokens", "token_limit_refusals", "splits"), 0)
        queue["max_enqueued_tokens"] = cfg.batch_max_enqueued_tokens
        self.state = BatchState(run_id=uuid.uuid4().hex[:12], queue=queue)
        self._lock_fd = -1
        self._client: openai.OpenAI | None = None
        self._writing: InputFile | None = None

    @property
    def client(self) -> openai.OpenAI:
        """The ``openai`` client, made on first use (the key is asked for only then)."""
        if self._client is None:
            self._client = openai.OpenAI(**client_options(self.config, self.parts.api_key()))
        return self._client

    def run(self, items: Iterator[AnnotationResult | PlannedRequest]) -> Iterator[AnnotationResult]:
        """Write, submit, poll and merge until each planned request of ``items`` has a result (results pass on).

        Raises:
            RuntimeError: If another ``--batch`` run holds this cache, the state file is of another format, or the
                Batch API refuses a file for a reason other than its size.
        """
        self._open()
        state = self.state
        try:
            for entry in state.batches.values():
                state.pending.update(string_hash(key) for key in self._manifest_keys(entry["name"]))
            for item in items:
                if isinstance(item, AnnotationResult):
                    yield item
                    continue
                yield from self._take(item)
                if self._client is not None and time.monotonic() - state.last_poll >= self.config.batch_poll_s:
                    yield from self._pump()
            if self._writing is not None:
                state.reserved.add(self._close_file(self._writing, state.run_id)["name"])
                self._writing = None
            state.planning_done = True
            if self._client is not None or state.wanted:
                yield from self._finish()
        finally:
            if self._writing is not None:
                self._writing.abandon()
                self._writing = None
            self._checkpoint()
            self._close()

    def _take(self, planned: PlannedRequest) -> Iterator[AnnotationResult]:
        key_hash = string_hash(planned.key)
        if key_hash in self.state.pending:  # an earlier run's batch file asks for it already
            self.state.wanted[key_hash] = planned.request.id
            return
        self.client  # noqa: B018 - fail on a missing key before writing anything
        if not self.parts.budget.reserve(planned.input_tokens):
            yield self.parts.budget_result(planned)
            return
        cid = custom_id(planned.key)
        body = {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions"}
        line = (json.dumps(body | {"body": self.parts.planner.chat_body(planned)}) + "\n").encode("utf-8")
        if not self.limits.fits(len(line), planned.input_tokens):
            self.parts.budget.release(planned.input_tokens)
            yield self.parts.fail(
                planned,
                f"batch: one request of {len(line):,} bytes and {planned.input_tokens:,} tokens is over "
                f"--batch_max_bytes {self.limits.bytes:,} or --batch_max_enqueued_tokens {self.limits.tokens:,}",
            )
            return
        args = (cid, planned.key, planned.input_tokens, line)
        self._writing, closed = self._put(self._writing, self.limits, self.state.run_id, *args)
        if closed is not None:
            self.state.reserved.add(closed["name"])
            yield from self._pump()

    def _finish(self) -> Iterator[AnnotationResult]:
        state = self.state
        self._adopt()
        while True:
            yield from self._pump()
            if not self._work_left():
                break
            now = time.monotonic()
            wait = state.last_poll + self.config.batch_poll_s - now
            if now < state.hold_until < float("inf"):
                wait = min(wait, state.hold_until - now)
            time.sleep(max(wait, 0.01))
        for pair_id in state.wanted.values():  # earlier runs' files the budget cap kept back
            yield self.parts.budget_result(planned_from_key(f"{pair_id}|", 0))
        state.wanted.clear()

    def _work_left(self) -> bool:
        for name, entry in self.state.batches.items():
            if entry["state"] in ("submitted", "downloaded"):
                return True
            if entry["state"] in ("written", "uploaded") and name not in self.state.skipped:
                return True
        return False

    def _pump(self) -> Iterator[AnnotationResult]:
        """One round: submit what fits the queue, poll (at most every ``batch_poll_s``), merge what is downloaded."""
        state = self.state
        self._adopt()
        yield from self._submit_ready()
        if time.monotonic() - state.last_poll >= self.config.batch_poll_s:
            state.last_poll = time.monotonic()
            yield from self._poll()
        for entry in list(state.batches.values()):
            if entry["state"] == "downloaded" and (entry["run"] == state.run_id or state.planning_done):
                yield from self._merge(entry)

    # ------------------------------------------------------------------ the state file and the folder
    def _open(self) -> None:
        """Lock the folder, load the state file, and remove the files it does not hold (a run killed in between).

        Raises:
            RuntimeError: If another run holds the lock, or the state file is not of format :data:`VERSION`.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            self._close()
            raise RuntimeError(f"{self.folder}: another --batch run uses this cache; wait for it to end") from err
        if self.path.exists():
            saved = json.loads(self.path.read_text(encoding="utf-8"))
            if saved.get("version") != VERSION:
                self._close()
                raise RuntimeError(f"{self.path}: batch state of version {saved.get('version')!r}, expected {VERSION}")
            self.state.next = saved["next"]
            # batch files an earlier run finished belong to its report, not to this run's
            self.state.batches = {n: e for n, e in saved["batches"].items() if e["state"] not in DONE}
        keep = {f"{name}.{kind}.jsonl" for name in self.state.batches for kind in FILE_KINDS}
        for path in self.folder.iterdir():
            if path.is_file() and path.name != ".lock" and path.name not in keep:
                path.unlink(missing_ok=True)

    def _close(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
        if self._client is not None:
            self._client.close()

    def save_state(self) -> None:
        """Write the state file atomically and fsync it."""
        write_json(self.path, self.state.saved(), indent=None, fsync=True)

    def _checkpoint(self) -> None:
        """Save the state, then the report with this run's batch files and queue (it can be watched meanwhile)."""
        stats = self.parts.stats
        stats.batches = [entry_summary(e) for e in self.state.batches.values()]
        stats.batch_queue = self.state.queue | {"enqueued_tokens": self._enqueued()}
        self.save_state()
        self.parts.write_report()

    def file(self, name: str, kind: str) -> Path:
        """A batch file's path: ``kind`` is ``input``, ``manifest``, ``output`` or ``errors``."""
        return self.folder / f"{name}.{kind}.jsonl"

    def _remove_files(self, name: str) -> None:
        for kind in FILE_KINDS:
            self.file(name, kind).unlink(missing_ok=True)

    def _manifest(self, name: str) -> dict[str, tuple[str, int]]:
        """``custom_id -> (cache key, estimated input tokens)`` of one batch file (at most one file's requests)."""
        out = {}
        with open(self.file(name, "manifest"), encoding="utf-8") as fh:
            for line in fh:
                cid, key, tokens = json.loads(line)
                out[cid] = (key, tokens)
        return out

    def _manifest_keys(self, name: str) -> Iterator[str]:
        with open(self.file(name, "manifest"), encoding="utf-8") as fh:
            for line in fh:
                yield json.loads(line)[1]

    # ------------------------------------------------------------------ writing input files
    def _put(
        self, file: InputFile | None, limits: Limits, run: str, cid: str, key: str, tokens: int, line: bytes
    ) -> tuple[InputFile, dict | None]:
        """Write one request into ``file``, first closing it and opening the next when the request does not fit.

        Returns:
            The file now being written, and the entry of the file closed to make room (or ``None``).
        """
        closed = None
        if file is not None and not file.has_room(line, tokens, limits):
            closed = self._close_file(file, run)
            file = None
        if file is None:
            name = f"b{self.state.next:06d}"
            self.state.next += 1
            file = InputFile(name, self.file(name, "input"), self.file(name, "manifest"))
        file.add(cid, key, tokens, line)
        return file, closed

    def _close_file(self, file: InputFile, run: str) -> dict:
        """Rename a finished input file into place, then record it as ``written`` (saved)."""
        file.finish()
        entry = new_entry(file.name, run, file.requests, file.bytes, file.tokens)
        self.state.batches[file.name] = entry
        self.save_state()
        logger.info("batch file %s written: %d request(s), %.1f MB", file.name, file.requests, file.bytes / 1e6)
        return entry

    def _split(self, entry: dict, why: str) -> None:
        """Rewrite a batch file the API refused as too large into two halves (same run, same requests)."""
        logger.warning("batch file %s refused (%s): splitting it in two", entry["name"], why[:200])
        entry["error"] = why[:500]
        limits = Limits(math.ceil(entry["requests"] / 2), 1 << 62, 1 << 62)
        children, file = [], None
        name = entry["name"]
        with open(self.file(name, "input"), "rb") as lines, open(self.file(name, "manifest")) as manifest:
            for line, item in zip(lines, manifest, strict=True):
                cid, key, tokens = json.loads(item)
                file, closed = self._put(file, limits, entry["run"], cid, key, tokens, line)
                if closed is not None:
                    children.append(closed)
        children.append(self._close_file(file, entry["run"]))
        entry |= {
            "state": "split",
            "error": f"{entry.get('error')}; split into {', '.join(c['name'] for c in children)}",
        }
        self._remove_files(name)
        self.save_state()
        self.state.queue["splits"] += 1
        if name in self.state.reserved:
            self.state.reserved.discard(name)
            self.state.reserved.update(c["name"] for c in children)
        self._checkpoint()

    # ------------------------------------------------------------------ submitting
    def _adopt(self) -> None:
        """Uploads of earlier runs not known to be in a batch: adopt the batch if one was created before the kill."""
        state = self.state
        orphans = {
            e["file_id"]: e
            for name, e in state.batches.items()
            if e["state"] == "uploaded" and e["run"] != state.run_id and name not in state.checked
        }
        if not orphans:
            return
        oldest = min(e.get("uploaded_at") or 0 for e in orphans.values())
        for file_id, batch in self._batches_of(set(orphans), oldest).items():
            orphans[file_id] |= {"state": "submitted", "batch_id": batch.id, "batch_status": batch.status}
            logger.info("batch %s (created before a restart) adopted for %s", batch.id, orphans[file_id]["name"])
        state.checked.update(e["name"] for e in orphans.values())
        self._checkpoint()

    def _batches_of(self, file_ids: set[str], since: float) -> dict:
        """The batches (not failed) made from these uploads since ``since`` (``batches.list``, all pages)."""
        found = {}
        for batch in self.policy.call(self.client.batches.list, limit=100):  # newest first
            if batch.created_at < since - 3600 or len(found) == len(file_ids):
                break
            if batch.input_file_id in file_ids and batch.status != "failed":
                found.setdefault(batch.input_file_id, batch)
        return found

    def _enqueued(self) -> int:
        return sum(
            e["input_tokens"]
            for e in self.state.batches.values()
            if e["state"] == "submitted" and e["batch_status"] not in TERMINAL
        )

    def _submit_ready(self) -> Iterator[AnnotationResult]:
        state = self.state
        for name, entry in list(state.batches.items()):
            if entry["state"] not in ("written", "uploaded") or name in state.skipped:
                continue
            if time.monotonic() < state.hold_until:
                return
            enqueued = self._enqueued()
            if enqueued + entry["input_tokens"] > self.limits.tokens:
                if enqueued == 0 and entry["requests"] > 1:  # an earlier run's file, written under a larger limit
                    self._split(entry, f"{entry['input_tokens']:,} tokens, over --batch_max_enqueued_tokens")
                    continue
                if enqueued:
                    return  # wait for a batch to finish: files go in the order written
            if name not in state.reserved:
                if not self.parts.budget.reserve(entry["input_tokens"], entry["requests"]):
                    state.skipped.add(name)
                    continue
                state.reserved.add(name)
            yield from self._submit(entry)

    def _upload(self, entry: dict):
        with open(self.file(entry["name"], "input"), "rb") as fh:
            return self.client.files.create(file=(f"geollava_{entry['name']}.jsonl", fh), purpose="batch")

    def _submit(self, entry: dict) -> Iterator[AnnotationResult]:
        try:
            if entry["state"] == "written":
                uploaded = self.policy.call(self._upload, entry)
                entry |= {"state": "uploaded", "file_id": uploaded.id, "uploaded_at": time.time()}
                self._checkpoint()
            asked = time.time()
            batch = self.policy.call(  # a creation whose reply was lost may exist: look before creating again
                self.client.batches.create,
                before_retry=lambda: self._batches_of({entry["file_id"]}, asked).get(entry["file_id"]),
                input_file_id=entry["file_id"],
                endpoint="/v1/chat/completions",
                completion_window="24h",
                metadata={
                    "geollava": "annotation",
                    "params": self.parts.planner.params_hash[:16],
                    "file": entry["name"],
                },
            )
        except RequestRejected as err:
            if not TOO_LARGE.search(err.message):
                raise RuntimeError(f"batch file {entry['name']}: the Batch API refused it: {err.reason}") from err
            yield from self._too_large(entry, err.message)
            return
        entry |= {"state": "submitted", "batch_id": batch.id, "batch_status": batch.status}
        if not entry.get("counted"):
            entry["counted"] = True
            self.parts.stats.sent += entry["requests"]
            self.parts.stats.requests += entry["requests"]
        queue = self.state.queue
        queue["peak_enqueued_tokens"] = max(queue["peak_enqueued_tokens"], self._enqueued())
        logger.info("batch %s created for %s (%d request(s))", batch.id, entry["name"], entry["requests"])
        self._checkpoint()

    def _too_large(self, entry: dict, message: str) -> Iterator[AnnotationResult]:
        if entry["requests"] > 1 and self.file(entry["name"], "input").exists():
            self._split(entry, message)
        else:
            entry |= {"state": "failed", "error": message}
            yield from self._fail_entry(entry, f"batch: the input is too large for the Batch API: {message}")

    # ------------------------------------------------------------------ polling and downloading
    def _poll(self) -> Iterator[AnnotationResult]:
        for entry in list(self.state.batches.values()):
            if entry["state"] != "submitted":
                continue
            try:
                batch = self.policy.call(self.client.batches.retrieve, entry["batch_id"])
            except RequestRejected as err:
                yield from self._lost(entry, err)
                continue
            counts = batch.request_counts.model_dump() if batch.request_counts else None
            if (batch.status, counts) != (entry["batch_status"], entry["request_counts"]):
                logger.info("batch %s (%s): %s %s", batch.id, entry["name"], batch.status, counts)
                entry |= {"batch_status": batch.status, "request_counts": counts}
                self._checkpoint()
            if batch.status in TERMINAL:
                self.state.hold_until = 0.0  # a batch of ours ended: the queue has room again
                yield from self._ended(entry, batch)

    def _ended(self, entry: dict, batch) -> Iterator[AnnotationResult]:
        if batch.status == "failed":
            errors = batch.errors.data if batch.errors and batch.errors.data else []
            message = "; ".join(f"{e.code}: {e.message}" for e in errors) or "no reason given"
            if any(e.code == "token_limit_exceeded" for e in errors):
                self._requeue(entry, message)
            elif TOO_LARGE.search(message):
                yield from self._too_large(entry, message)
            else:
                entry |= {"state": "failed", "error": message[:500]}
                yield from self._fail_entry(entry, f"batch failed: {message[:200]}")
            return
        for file_id, kind in ((batch.output_file_id, "output"), (batch.error_file_id, "errors")):
            if file_id:
                try:
                    self.policy.call(self._download, file_id, self.file(entry["name"], kind))
                except RequestRejected as err:
                    yield from self._lost(entry, err)
                    return
        entry["state"] = "downloaded"
        self._checkpoint()

    def _lost(self, entry: dict, err: RequestRejected) -> Iterator[AnnotationResult]:
        """A batch or result file the endpoint no longer has (404): its pairs fail, and a rerun asks again."""
        if err.status != 404:
            raise RuntimeError(f"batch file {entry['name']} ({entry['batch_id']}): {err.reason}") from err
        entry |= {"state": "failed", "error": f"not found at the endpoint: {err.reason}"[:500]}
        yield from self._fail_entry(entry, f"batch {entry['batch_id']}: {entry['error']}")

    def _requeue(self, entry: dict, message: str) -> None:
        """``token_limit_exceeded``: the upload stays; a batch is created again when the queue has room."""
        entry |= {"state": "uploaded", "batch_id": None, "batch_status": None, "error": message[:500]}
        entry["token_limit_retries"] += 1
        self.state.queue["token_limit_refusals"] += 1
        active = self._enqueued() > 0
        backoff = min(self.config.batch_poll_s * 2 ** min(entry["token_limit_retries"], 10), 3600.0)
        self.state.hold_until = float("inf") if active else time.monotonic() + backoff
        logger.warning("batch file %s: %s; it is resubmitted when the queue has room", entry["name"], message[:200])
        self._checkpoint()

    def _download(self, file_id: str, path: Path) -> None:
        with (
            atomic_path(path, fsync=True) as tmp,
            self.client.files.with_streaming_response.content(file_id) as response,
            open(tmp, "wb") as fh,
        ):
            for chunk in response.iter_bytes(1 << 20):
                fh.write(chunk)

    # ------------------------------------------------------------------ merging into the cache
    def _wanted(self, entry: dict, key: str) -> bool:
        """Whether a result is handed on: every one of this run's files, only the asked ones of earlier runs'."""
        if entry["run"] == self.state.run_id:
            return True
        return self.state.wanted.pop(string_hash(key), None) is not None

    def _merge(self, entry: dict) -> Iterator[AnnotationResult]:
        """Record a downloaded batch file's answers in chunks of :data:`MERGE_CHUNK`, then mark it ``merged``."""
        manifest = self._manifest(entry["name"])
        for kind in ("output", "errors"):
            path = self.file(entry["name"], kind)
            if not path.exists():
                continue
            with open(path, encoding="utf-8") as fh:
                chunk = []
                for line in fh:
                    if line.strip():
                        chunk.append(json.loads(line))
                    if len(chunk) >= MERGE_CHUNK:
                        yield from self._merge_rows(entry, manifest, chunk)
                        chunk = []
                yield from self._merge_rows(entry, manifest, chunk)
        for key, tokens in manifest.values():
            result = self.parts.fail(planned_from_key(key, tokens), f"batch {entry['batch_status']}: no answer")
            if self._wanted(entry, key):
                yield result
        self._release(entry)
        entry["state"] = "merged"
        self._remove_files(entry["name"])
        self._checkpoint()

    def _merge_rows(self, entry: dict, manifest: dict, rows: list[dict]) -> Iterator[AnnotationResult]:
        answers, failures, again = [], [], []
        for row in rows:
            item = manifest.pop(row.get("custom_id"), None)
            if item is None:
                logger.warning("batch %s: unknown custom_id %r skipped", entry["batch_id"], row.get("custom_id"))
                continue
            planned = planned_from_key(*item)
            cached = self.parts.cached(planned.key)
            if cached is not None and cached.get("batch_id") == entry["batch_id"]:
                again.append((planned, cached))  # merged before a kill: counted then, handed on only if asked
                continue
            status, text, reason, usage = parse_batch_row(row)
            if status == "failed":
                failures.append((planned, reason))
            else:
                answers.append((planned, status, text, reason, usage))
        results = self.parts.record(answers, batch_id=entry["batch_id"])
        results += [self.parts.fail(planned, reason) for planned, reason in failures]
        results += [cached_result(p.request.id, cached) for p, cached in again]
        keys = [a[0].key for a in answers] + [p.key for p, _ in failures] + [p.key for p, _ in again]
        for key, result in zip(keys, results, strict=True):
            if self._wanted(entry, key):
                yield result

    def _fail_entry(self, entry: dict, reason: str) -> Iterator[AnnotationResult]:
        for key in list(self._manifest_keys(entry["name"])):
            result = self.parts.fail(planned_from_key(key, 0), reason)
            if self._wanted(entry, key):
                yield result
        self._release(entry)
        self._remove_files(entry["name"])
        self._checkpoint()

    def _release(self, entry: dict) -> None:
        if entry["name"] in self.state.reserved:
            self.state.reserved.discard(entry["name"])
            self.parts.budget.release(entry["input_tokens"], entry["requests"])
