"""Write-then-rename: a file (or folder) is either absent or complete, never half-written.

Every writer of the project goes through :func:`atomic_path` (or :func:`atomic_dir`): the content is written under a
temporary name beside the target, then renamed over it; on an exception the temporary is removed. A run killed
mid-write leaves a ``.NAME.PID.tmp`` beside the target, which the next run removes or overwrites.
"""

import json
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    import pyarrow as pa


#: Parquet row groups of 100 rows, as `datasets` writes image datasets (the Hub's viewer pages by row group).
ROW_GROUP_ROWS = 100


def temporary_name(path: Path) -> Path:
    """The temporary name ``path`` is written under before the rename (unique per process)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


@contextmanager
def atomic_path(path: str | Path, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; rename it over ``path`` when the block succeeds.

    Args:
        path: The target file (its folder is created when missing).
        fsync: Flush the file to disk before the rename (for files that must survive a power loss).

    Yields:
        The temporary path; on an exception it is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        if fsync:
            _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder to fill; it replaces ``path`` (a folder, or nothing) when the block succeeds.

    An existing ``path`` is moved aside first and removed after the rename, so a crash leaves either the old folder,
    the new one, or the old one beside a ``.NAME.PID.tmp``/``.old`` folder that the next call removes.

    Args:
        path: The target folder.

    Yields:
        The temporary folder (created empty).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = temporary_name(path), path.with_name(f".{path.name}.{os.getpid()}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_bytes(path: str | Path, data: bytes, *, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str, *, fsync: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    return write_bytes(path, text.encode("utf-8"), fsync=fsync)


def write_lines(path: str | Path, lines: Iterable[str]) -> Path:
    """Write one line per item (each ended by a newline) to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for line in lines:
            fh.write(line + "\n")
    return Path(path)


def write_json(
    path: str | Path,
    data,
    *,
    indent: int | None = 1,
    sort_keys: bool = False,
    ensure_ascii: bool = True,
    fsync: bool = False,
) -> Path:
    """Write ``data`` as JSON (and a final newline) to ``path`` atomically; returns ``path``.

    Objects JSON cannot hold (paths, dtypes, ...) are written as their ``str``.
    """
    text = json.dumps(data, indent=indent, sort_keys=sort_keys, ensure_ascii=ensure_ascii, default=str)
    return write_text(path, text + "\n", fsync=fsync)


def write_parquet(
    table: "pa.Table", path: str | Path, *, row_group_size: int | None = ROW_GROUP_ROWS, fsync: bool = False
) -> Path:
    """Write a Parquet shard atomically, in row groups of ``row_group_size`` rows; returns ``path``."""
    # pyarrow here, not at the top: the Space ships this module (through the pruning masks' writer) and installs
    # no pyarrow; only the builder writes Parquet.
    import pyarrow.parquet as pq

    with atomic_path(path, fsync=fsync) as tmp:
        pq.write_table(table, tmp, row_group_size=row_group_size)
    return Path(path)
