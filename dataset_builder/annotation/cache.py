"""Append-only, fsync'd JSONL cache of paid answers: what makes a rerun never pay twice.

One line per final answer, written and fsync'd before the answer is counted or handed on. A line cut short by a
crash or ``kill -9`` is skipped on load (its pair is asked again); nothing is ever rewritten in place. The key is
(pair id, model, sha256 of prompt + parameters, sha256 of both images' bytes), so a shared cache file serves any
number of builds and ``geollava-annotate`` runs. In memory only key -> offset is kept (16 bytes an answer, 1.7 MB at
106K pairs); an entry is read back from the file when it is asked for.
"""

import hashlib
import json
import logging
import os
import threading
from pathlib import Path

from dataset_builder.annotation.hash_index import HashIndex


logger = logging.getLogger(__name__)

#: Statuses that are final: cached, and not asked again unless ``--retry_failed``. ``failed`` (retries exhausted
#: on 429/5xx/timeouts) is never cached: a rerun asks again.
FINAL_STATUSES = ("ok", "refused", "content_filter", "empty", "malformed")


def sha256_hex(*parts: bytes | str) -> str:
    """sha256 over the parts, each length-prefixed so that ("ab", "c") and ("a", "bc") differ."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


def cache_key(pair_id: str, model: str, params_hash: str, image_hash: str) -> str:
    """The cache key of one request."""
    return f"{pair_id}|{model}|{params_hash}|{image_hash}"


class AnnotationCache:
    """An append-only JSONL file of final answers, indexed by key -> byte offset (16 bytes an entry in memory).

    Only the index is held: an entry is read back from the file when asked for (``os.pread``), and its stored key is
    compared with the one asked, so a hash collision of the index reads as "not cached", never as a wrong answer.

    Args:
        path: The JSONL file (created with its folder when missing).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._index = HashIndex()
        self._lock = threading.Lock()
        self.skipped_lines = 0
        if self.path.exists():
            self._load()
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        self._needs_newline = self.skipped_lines > 0 and not self._ends_with_newline()

    def _load(self) -> None:
        offset = 0
        with open(self.path, "rb") as fh:
            for lineno, line in enumerate(fh, 1):
                try:
                    self._index.add(json.loads(line)["key"], offset)
                except (ValueError, KeyError, TypeError):
                    self.skipped_lines += 1
                    logger.warning("%s:%d: unreadable cache line skipped (cut short by a crash?)", self.path, lineno)
                offset += len(line)

    def _ends_with_newline(self) -> bool:
        size = os.fstat(self._fd).st_size
        return size == 0 or os.pread(self._fd, 1, size - 1) == b"\n"

    def _read_line(self, offset: int) -> bytes:
        chunks = []
        while True:
            chunk = os.pread(self._fd, 65536, offset)
            end = chunk.find(b"\n")
            if end >= 0 or not chunk:
                chunks.append(chunk if end < 0 else chunk[:end])
                return b"".join(chunks)
            chunks.append(chunk)
            offset += len(chunk)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def get(self, key: str) -> dict | None:
        """The cached entry of a key (read back from the file), or ``None``."""
        offset = self._index.get(key)
        if offset is None:
            return None
        try:
            entry = json.loads(self._read_line(offset))
        except ValueError:
            return None
        return entry if isinstance(entry, dict) and entry.get("key") == key else None

    def append(self, entry: dict) -> None:
        """Write one entry (must hold ``key``) and fsync it; only then is it visible to :meth:`get`.

        Args:
            entry: A JSON-serialisable mapping with at least ``key``, ``id`` and ``status``.
        """
        self.append_many([entry])

    def append_many(self, entries: list[dict]) -> None:
        """Write entries with one write and one fsync (the Batch path merges thousands of answers at once)."""
        if not entries:
            return
        lines = [(json.dumps(e, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8") for e in entries]
        with self._lock:
            data = b"".join(lines)
            if self._needs_newline:  # a torn last line: start ours on a fresh line so both stay separable
                data = b"\n" + data
                self._needs_newline = False
            written = data
            while written:
                written = written[os.write(self._fd, written) :]
            os.fsync(self._fd)
            # O_APPEND puts the file position at the end of what this process just wrote, whoever else appends
            offset = os.lseek(self._fd, 0, os.SEEK_CUR) - sum(len(line) for line in lines)
            for entry, line in zip(entries, lines, strict=True):
                self._index.add(entry["key"], offset)
                offset += len(line)

    def close(self) -> None:
        """Close the file."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "AnnotationCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
