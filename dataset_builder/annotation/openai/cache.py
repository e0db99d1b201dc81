"""The answer cache: an append-only, fsync'd JSONL file of paid answers, what makes a rerun never pay twice.

An answer is written and fsync'd before it is counted or handed on; a line cut short by a crash is skipped on load.
Only a hash of each key and its byte offset are held in memory; entries are read back from the file.
See docs/annotation.md.
"""

import hashlib
import json
import logging
import os
import threading
from pathlib import Path

from dataset_builder.annotation.base import AnnotationResult


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
    """The cache key of one request: what makes one shared cache file safe for every build and run."""
    return f"{pair_id}|{model}|{params_hash}|{image_hash}"


def string_hash(text: str) -> int:
    """The 64-bit hash of a string (stable across runs and machines): how keys are held in memory.

    Two different strings share a hash with probability ~n²/2^65 (3e-10 at 100K strings); the cache compares the
    stored key, so a collision reads as "not cached", never as another pair's answer.
    """
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def cached_result(pair_id: str, entry: dict) -> AnnotationResult:
    """The result of a pair answered before (a cache entry)."""
    return AnnotationResult(pair_id, entry.get("text"), entry["status"], entry.get("reason", ""), entry["usage"])


class AnnotationCache:
    """An append-only JSONL file of final answers, indexed by the key's hash -> byte offset.

    Only the index is held (about 140 bytes an answer: 14 MB at 100K): an entry is read back from the file when asked
    for (``os.pread``), and its stored key is compared with the one asked, so a hash collision reads as "not
    cached", never as a wrong answer.

    Args:
        path: The JSONL file (created with its folder when missing).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._index: dict[int, int] = {}  # string_hash(key) -> byte offset of its line
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
                    self._index[string_hash(json.loads(line)["key"])] = offset
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
        offset = self._index.get(string_hash(key))
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
                self._index[string_hash(entry["key"])] = offset
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
