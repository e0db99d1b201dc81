"""The Batch API path of the OpenAI annotator (``--batch``): half the price, answers within 24 h, at 100K pairs.

Planned requests are written to JSONL input files on disk as they come (``batch_ledger.InputFileWriter``), each file
closed before it would pass ``--batch_max_requests``, ``--batch_max_bytes`` or ``--batch_max_enqueued_tokens``.
Files are uploaded and made into batches one at a time, only while the estimated input tokens of this run's
unfinished batches stay under ``--batch_max_enqueued_tokens`` (the organisation's "batch queue limit"); a new batch
is submitted as earlier ones finish. Finished batches are downloaded to disk, then merged into the answer cache.

Every step is recorded in the state file before the next one starts, so a kill at any point resumes without paying
twice: a file written but not uploaded is uploaded; one uploaded but not in a batch is matched against
``batches.list`` (its batch may exist) before a batch is created; a batch is polled, never created again; a
download is merged from disk, skipping answers the cache already holds from that batch. An input the API calls too
large is split in two; a batch failed with ``token_limit_exceeded`` is resubmitted, with the same upload, once one
of ours finishes (or after a backoff).
"""

import json
import logging
import re
import time
import uuid
from collections.abc import Iterator

import openai

from dataset_builder.annotation.base import AnnotationResult
from dataset_builder.annotation.batch_ledger import BatchLedger, InputFileWriter, Limits, entry_summary, split_entry
from dataset_builder.annotation.batch_merge import BatchMerging
from dataset_builder.annotation.hash_index import HashIndex, string_hash
from dataset_builder.annotation.openai_requests import PlannedRequest, custom_id, planned_from_key
from dataset_builder.annotation.transport import RequestRejected, RetryPolicy, client_options
from dataset_builder.atomic import atomic_path


logger = logging.getLogger(__name__)

TERMINAL = ("completed", "failed", "expired", "cancelled")
#: Words of the API's refusal of an input file over its request or byte limit.
TOO_LARGE = re.compile(r"larger than|more than|too large|too many requests|maximum", re.IGNORECASE)


class BatchRunner(BatchMerging):
    """Sends planned requests through the Batch API and yields their results (see the module docstring).

    Args:
        annotator: The ``OpenAIAnnotator`` whose ``config``, ``planner``, ``budget``, ``stats``, ``cache``,
            ``api_key``, ``record_many``, ``fail``, ``budget_result``, ``result_from_entry`` and ``write_report`` are
            used (duck-typed: this module does not import it).
    """

    def __init__(self, annotator):
        self.ann = annotator
        self.config = cfg = annotator.config
        self.policy = RetryPolicy.from_config(cfg, annotator.stats.retries_by_reason)
        self.limits = Limits(cfg.batch_max_requests, cfg.batch_max_bytes, cfg.batch_max_enqueued_tokens)
        self.fatal: str | None = None
        self.run_id = uuid.uuid4().hex[:12]
        self.ledger: BatchLedger | None = None
        self._client: openai.OpenAI | None = None
        self.pending = HashIndex()  # cache keys held by batch files of earlier runs, not merged yet
        self.wanted: dict[int, str] = {}  # of those, the ones this run asked for: key hash -> pair id
        self.reserved: set[str] = set()  # batch files whose worst-case cost this run has reserved
        self.skipped: set[str] = set()  # earlier runs' batch files the budget cap keeps from being sent
        self.checked: set[str] = set()  # earlier runs' uploads looked for in batches.list
        self.hold_until = 0.0  # no submission before (after a token_limit_exceeded refusal)
        self.last_poll = 0.0
        self.planning_done = False
        self.queue = dict.fromkeys(("peak_enqueued_tokens", "token_limit_refusals", "splits"), 0)
        self.queue["max_enqueued_tokens"] = cfg.batch_max_enqueued_tokens

    @property
    def client(self) -> openai.OpenAI:
        """The ``openai`` client, made on first use (the key is asked for only then)."""
        if self._client is None:
            self._client = openai.OpenAI(**client_options(self.config, self.ann.api_key()))
        return self._client

    def run(self, items: Iterator[AnnotationResult | PlannedRequest]) -> Iterator[AnnotationResult]:
        """Write, submit, poll and merge until each planned request of ``items`` has a result (results pass on)."""
        self.ledger = BatchLedger(self.config.resolved_cache_path)
        writer = InputFileWriter(self.ledger, self.limits, self.run_id)
        try:
            for entry in self.ledger.entries.values():
                for key in self.ledger.manifest_keys(entry["name"]):
                    self.pending.add(key)
            for item in items:
                if isinstance(item, AnnotationResult):
                    yield item
                    continue
                yield from self._take(item, writer)
                if self._client is not None and time.monotonic() - self.last_poll >= self.config.batch_poll_s:
                    yield from self._pump()
            if (entry := writer.close()) is not None:
                self.reserved.add(entry["name"])
            self.planning_done = True
            if self._client is not None or self.wanted:
                yield from self._finish()
        finally:
            writer.abandon()
            self._save()
            self.ledger.close()
            if self._client is not None:
                self._client.close()

    def _take(self, planned: PlannedRequest, writer: InputFileWriter) -> Iterator[AnnotationResult]:
        if self.pending.get(planned.key) is not None:  # an earlier run's batch file asks for it already
            self.wanted[string_hash(planned.key)] = planned.request.id
            return
        self.client  # noqa: B018 - fail on a missing key before writing anything
        if not self.ann.budget.reserve(planned.input_tokens):
            yield self.ann.budget_result(planned)
            return
        cid = custom_id(planned.key)
        body = {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions"}
        line = (json.dumps(body | {"body": self.ann.planner.chat_body(planned)}) + "\n").encode("utf-8")
        if not writer.fits(line, planned.input_tokens):
            self.ann.budget.release(planned.input_tokens)
            yield self.ann.fail(
                planned,
                f"batch: one request of {len(line):,} bytes and {planned.input_tokens:,} tokens is over "
                f"--batch_max_bytes {self.limits.bytes:,} or --batch_max_enqueued_tokens {self.limits.tokens:,}",
            )
            return
        if (closed := writer.add(cid, planned.key, planned.input_tokens, line)) is not None:
            self.reserved.add(closed["name"])
            yield from self._pump()

    def _finish(self) -> Iterator[AnnotationResult]:
        self._adopt()
        while True:
            yield from self._pump()
            if not self._work_left():
                break
            now = time.monotonic()
            wait = self.last_poll + self.config.batch_poll_s - now
            if now < self.hold_until < float("inf"):
                wait = min(wait, self.hold_until - now)
            time.sleep(max(wait, 0.01))
        for pair_id in self.wanted.values():  # earlier runs' files the budget cap kept back
            yield self.ann.budget_result(planned_from_key(f"{pair_id}|", 0))
        self.wanted.clear()

    def _work_left(self) -> bool:
        for name, entry in self.ledger.entries.items():
            if entry["state"] in ("submitted", "downloaded"):
                return True
            if entry["state"] in ("written", "uploaded") and name not in self.skipped:
                return True
        return False

    def _pump(self) -> Iterator[AnnotationResult]:
        """One round: submit what fits the queue, poll (at most every ``batch_poll_s``), merge what is downloaded."""
        self._adopt()
        yield from self._submit_ready()
        if time.monotonic() - self.last_poll >= self.config.batch_poll_s:
            self.last_poll = time.monotonic()
            yield from self._poll()
        for entry in list(self.ledger.entries.values()):
            if entry["state"] == "downloaded" and (entry["run"] == self.run_id or self.planning_done):
                yield from self._merge(entry)

    def _save(self) -> None:
        entries = self.ledger.entries.values()
        self.ann.stats.batches = [entry_summary(e) for e in entries]
        self.ann.stats.batch_queue = self.queue | {"enqueued_tokens": self._enqueued()}
        self.ledger.save()
        self.ann.write_report()

    # ------------------------------------------------------------------ submitting
    def _adopt(self) -> None:
        """Uploads of earlier runs not known to be in a batch: adopt the batch if one was created before the kill."""
        orphans = {
            e["file_id"]: e
            for name, e in self.ledger.entries.items()
            if e["state"] == "uploaded" and e["run"] != self.run_id and name not in self.checked
        }
        if not orphans:
            return
        oldest = min(e.get("uploaded_at") or 0 for e in orphans.values())
        for file_id, batch in self._batches_of(set(orphans), oldest).items():
            orphans[file_id] |= {"state": "submitted", "batch_id": batch.id, "batch_status": batch.status}
            logger.info("batch %s (created before a restart) adopted for %s", batch.id, orphans[file_id]["name"])
        self.checked.update(e["name"] for e in orphans.values())
        self._save()

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
            for e in self.ledger.entries.values()
            if e["state"] == "submitted" and e["batch_status"] not in TERMINAL
        )

    def _submit_ready(self) -> Iterator[AnnotationResult]:
        for name, entry in list(self.ledger.entries.items()):
            if entry["state"] not in ("written", "uploaded") or name in self.skipped:
                continue
            if time.monotonic() < self.hold_until:
                return
            enqueued = self._enqueued()
            if enqueued + entry["input_tokens"] > self.limits.tokens:
                if enqueued == 0 and entry["requests"] > 1:  # an earlier run's file, written under a larger limit
                    self._split(entry, f"{entry['input_tokens']:,} tokens, over --batch_max_enqueued_tokens")
                    continue
                if enqueued:
                    return  # wait for a batch to finish: files go in the order written
            if name not in self.reserved:
                if not self.ann.budget.reserve(entry["input_tokens"], entry["requests"]):
                    self.skipped.add(name)
                    continue
                self.reserved.add(name)
            yield from self._submit(entry)

    def _upload(self, entry: dict):
        with open(self.ledger.file(entry["name"], "input"), "rb") as fh:
            return self.client.files.create(file=(f"geollava_{entry['name']}.jsonl", fh), purpose="batch")

    def _submit(self, entry: dict) -> Iterator[AnnotationResult]:
        try:
            if entry["state"] == "written":
                uploaded = self.policy.call(self._upload, entry)
                entry |= {"state": "uploaded", "file_id": uploaded.id, "uploaded_at": time.time()}
                self._save()
            asked = time.time()
            batch = self.policy.call(  # a creation whose reply was lost may exist: look before creating again
                self.client.batches.create,
                before_retry=lambda: self._batches_of({entry["file_id"]}, asked).get(entry["file_id"]),
                input_file_id=entry["file_id"],
                endpoint="/v1/chat/completions",
                completion_window="24h",
                metadata={"geollava": "annotation", "params": self.ann.params_hash[:16], "file": entry["name"]},
            )
        except RequestRejected as err:
            if not TOO_LARGE.search(err.message):
                raise RuntimeError(f"batch file {entry['name']}: the Batch API refused it: {err.reason}") from err
            yield from self._too_large(entry, err.message)
            return
        entry |= {"state": "submitted", "batch_id": batch.id, "batch_status": batch.status}
        if not entry.get("counted"):
            entry["counted"] = True
            self.ann.stats.sent += entry["requests"]
            self.ann.stats.requests += entry["requests"]
        self.queue["peak_enqueued_tokens"] = max(self.queue["peak_enqueued_tokens"], self._enqueued())
        logger.info("batch %s created for %s (%d request(s))", batch.id, entry["name"], entry["requests"])
        self._save()

    def _too_large(self, entry: dict, message: str) -> Iterator[AnnotationResult]:
        if entry["requests"] > 1 and self.ledger.file(entry["name"], "input").exists():
            self._split(entry, message)
        else:
            entry |= {"state": "failed", "error": message}
            yield from self._fail_entry(entry, f"batch: the input is too large for the Batch API: {message}")

    def _split(self, entry: dict, why: str) -> None:
        logger.warning("batch file %s refused (%s): splitting it in two", entry["name"], why[:200])
        entry["error"] = why[:500]
        children = split_entry(self.ledger, entry)
        self.queue["splits"] += 1
        if entry["name"] in self.reserved:
            self.reserved.discard(entry["name"])
            self.reserved.update(c["name"] for c in children)
        self._save()

    # ------------------------------------------------------------------ polling and downloading
    def _poll(self) -> Iterator[AnnotationResult]:
        for entry in list(self.ledger.entries.values()):
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
                self._save()
            if batch.status in TERMINAL:
                self.hold_until = 0.0  # a batch of ours ended: the queue has room again
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
                    self.policy.call(self._download, file_id, self.ledger.file(entry["name"], kind))
                except RequestRejected as err:
                    yield from self._lost(entry, err)
                    return
        entry["state"] = "downloaded"
        self._save()

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
        self.queue["token_limit_refusals"] += 1
        active = self._enqueued() > 0
        backoff = min(self.config.batch_poll_s * 2 ** min(entry["token_limit_retries"], 10), 3600.0)
        self.hold_until = float("inf") if active else time.monotonic() + backoff
        logger.warning("batch file %s: %s; it is resubmitted when the queue has room", entry["name"], message[:200])
        self._save()

    def _download(self, file_id: str, path) -> None:
        with (
            atomic_path(path, fsync=True) as tmp,
            self.client.files.with_streaming_response.content(file_id) as response,
            open(tmp, "wb") as fh,
        ):
            for chunk in response.iter_bytes(1 << 20):
                fh.write(chunk)
