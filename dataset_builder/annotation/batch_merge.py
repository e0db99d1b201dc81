"""Merging a finished batch into the answer cache: the part of the Batch path that hands results on.

A downloaded output (and error) file is read line by line and recorded in chunks of ``MERGE_CHUNK`` answers, one
write and one fsync each; an answer the cache already holds from the same batch (merged before a kill) is not
recorded again. Results are handed on only for the pairs the current run asked for.
"""

import json
import logging
from collections.abc import Iterator

from dataset_builder.annotation.base import AnnotationResult
from dataset_builder.annotation.hash_index import string_hash
from dataset_builder.annotation.openai_requests import parse_batch_row, planned_from_key


logger = logging.getLogger(__name__)

MERGE_CHUNK = 1000


class BatchMerging:
    """The merging half of ``openai_batch.BatchRunner``.

    A mixin: it uses the runner's ``ann``, ``ledger``, ``run_id``, ``wanted``, ``reserved`` and ``_save``.
    """

    def _wanted(self, entry: dict, key: str) -> bool:
        if entry["run"] == self.run_id:
            return True
        return self.wanted.pop(string_hash(key), None) is not None

    def _merge(self, entry: dict) -> Iterator[AnnotationResult]:
        manifest = self.ledger.manifest(entry["name"])
        for kind in ("output", "errors"):
            path = self.ledger.file(entry["name"], kind)
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
            result = self.ann.fail(planned_from_key(key, tokens), f"batch {entry['batch_status']}: no answer")
            if self._wanted(entry, key):
                yield result
        self._release(entry)
        entry["state"] = "merged"
        self.ledger.remove_files(entry["name"])
        self._save()

    def _merge_rows(self, entry: dict, manifest: dict, rows: list[dict]) -> Iterator[AnnotationResult]:
        answers, failures, again = [], [], []
        for row in rows:
            item = manifest.pop(row.get("custom_id"), None)
            if item is None:
                logger.warning("batch %s: unknown custom_id %r skipped", entry["batch_id"], row.get("custom_id"))
                continue
            planned = planned_from_key(*item)
            cached = self.ann.cache.get(planned.key)
            if cached is not None and cached.get("batch_id") == entry["batch_id"]:
                again.append((planned, cached))  # merged before a kill: counted then, handed on only if asked
                continue
            status, text, reason, usage = parse_batch_row(row)
            if status == "failed":
                failures.append((planned, reason))
            else:
                answers.append((planned, status, text, reason, usage))
        results = self.ann.record_many(answers, batch_id=entry["batch_id"])
        results += [self.ann.fail(planned, reason) for planned, reason in failures]
        results += [self.ann.result_from_entry(p.request.id, cached) for p, cached in again]
        keys = [a[0].key for a in answers] + [p.key for p, _ in failures] + [p.key for p, _ in again]
        for key, result in zip(keys, results, strict=True):
            if self._wanted(entry, key):
                yield result

    def _fail_entry(self, entry: dict, reason: str) -> Iterator[AnnotationResult]:
        for key in list(self.ledger.manifest_keys(entry["name"])):
            result = self.ann.fail(planned_from_key(key, 0), reason)
            if self._wanted(entry, key):
                yield result
        self._release(entry)
        self.ledger.remove_files(entry["name"])
        self._save()

    def _release(self, entry: dict) -> None:
        if entry["name"] in self.reserved:
            self.reserved.discard(entry["name"])
            self.ann.budget.release(entry["input_tokens"], entry["requests"])
