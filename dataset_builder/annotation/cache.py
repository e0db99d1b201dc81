"""Append-only, fsync'd JSONL cache of paid answers: what makes a rerun never pay twice.

One line per final answer, written and fsync'd before the answer is counted or handed on. A line cut short by a
crash or ``kill -9`` is skipped on load (its pair is asked again); nothing is ever rewritten in place. The key is
(pair id, model, sha256 of prompt + parameters, sha256 of both images' bytes), so a shared cache file serves any
number of builds and ``geollava-annotate`` runs.
"""

import hashlib
import json
import logging
import os
import threading
from pathlib import Path


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
    """An append-only JSONL file of final answers, loaded into memory once.

    Args:
        path: The JSONL file (created with its folder when missing).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._entries: dict[str, dict] = {}
        self._lock = threading.Lock()
        self.skipped_lines = 0
        if self.path.exists():
            with open(self.path, encoding="utf-8") as fh:
                for lineno, line in enumerate(fh, 1):
                    try:
                        entry = json.loads(line)
                        self._entries[entry["key"]] = entry
                    except (ValueError, KeyError, TypeError):
                        self.skipped_lines += 1
                        logger.warning("%s:%d: unreadable cache line skipped (cut short by a crash?)", path, lineno)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._needs_newline = self.skipped_lines > 0 and not self._ends_with_newline()

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell() == 0:
                return True
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) == b"\n"

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get(self, key: str) -> dict | None:
        """The cached entry of a key, or ``None``."""
        return self._entries.get(key)

    def append(self, entry: dict) -> None:
        """Write one entry (must hold ``key``) and fsync it; only then is it visible to :meth:`get`.

        Args:
            entry: A JSON-serialisable mapping with at least ``key``, ``id`` and ``status``.
        """
        line = json.dumps(entry, ensure_ascii=False, sort_keys=True) + "\n"
        with self._lock:
            data = line.encode("utf-8")
            if self._needs_newline:  # a torn last line: start ours on a fresh line so both stay separable
                data = b"\n" + data
                self._needs_newline = False
            while data:
                data = data[os.write(self._fd, data) :]
            os.fsync(self._fd)
            self._entries[entry["key"]] = entry

    def close(self) -> None:
        """Close the file."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "AnnotationCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
