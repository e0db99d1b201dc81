"""A compact map from strings to integers, 16 bytes an entry: what keeps 100K-pair bookkeeping out of the RAM.

Strings are reduced to a 64-bit hash (blake2b); hashes and values sit in two sorted numpy arrays, with the latest
additions in a small dict merged into the arrays every ``merge_every`` additions. A later value for the same hash
replaces the earlier one. Two different strings share a hash with probability ~n²/2^65 (3e-10 at 100K strings): a
caller that cannot afford even that verifies what the value points to (the answer cache compares the stored key).
"""

import hashlib

import numpy as np


def string_hash(text: str) -> int:
    """The 64-bit hash of a string (stable across runs and machines)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


class HashIndex:
    """String (by its 64-bit hash) -> int, in sorted arrays plus a small dict of recent additions.

    Args:
        merge_every: Recent additions kept in the dict before they are merged into the arrays.
    """

    def __init__(self, merge_every: int = 8192):
        self.merge_every = merge_every
        self._hashes = np.empty(0, dtype=np.uint64)
        self._values = np.empty(0, dtype=np.int64)
        self._recent: dict[int, int] = {}

    def add(self, text: str, value: int = 0) -> None:
        """Map ``text`` to ``value`` (replacing an earlier value)."""
        self.add_hash(string_hash(text), value)

    def add_hash(self, h: int, value: int = 0) -> None:
        """Map the hash ``h`` to ``value`` (replacing an earlier value)."""
        self._recent[h] = value
        if len(self._recent) >= self.merge_every:
            self._merge()

    def get(self, text: str) -> int | None:
        """The value of ``text``, or ``None``."""
        h = string_hash(text)
        if h in self._recent:
            return self._recent[h]
        i = int(np.searchsorted(self._hashes, np.uint64(h)))
        if i < len(self._hashes) and int(self._hashes[i]) == h:
            return int(self._values[i])
        return None

    def __contains__(self, text: str) -> bool:
        return self.get(text) is not None

    def __len__(self) -> int:
        self._merge()
        return len(self._hashes)

    def nbytes(self) -> int:
        """Bytes held by the arrays (the dict of recent additions is at most ``merge_every`` entries)."""
        return self._hashes.nbytes + self._values.nbytes

    def _merge(self) -> None:
        if not self._recent:
            return
        hashes = np.concatenate([self._hashes, np.fromiter(self._recent.keys(), np.uint64, len(self._recent))])
        values = np.concatenate([self._values, np.fromiter(self._recent.values(), np.int64, len(self._recent))])
        self._recent = {}
        order = np.argsort(hashes, kind="stable")  # stable: of equal hashes, the later addition stays last
        hashes, values = hashes[order], values[order]
        last = np.append(hashes[1:] != hashes[:-1], True)  # keep the last of each run of equal hashes
        self._hashes, self._values = hashes[last], values[last]
