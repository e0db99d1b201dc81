"""Write-then-rename: a file is either absent or complete, never half-written.

An interrupted run leaves a ``.NAME.PID.tmp`` beside the target, which the next run removes or overwrites.
"""

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


#: Parquet row groups of 100 rows, as `datasets` writes image datasets (the Hub's viewer pages by row group).
ROW_GROUP_ROWS = 100


def temporary_name(path: Path) -> Path:
    """The temporary name ``path`` is written under before the rename."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    tmp = temporary_name(path)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: Path, data) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically (objects JSON cannot hold are written as strings)."""
    write_text(path, json.dumps(data, indent=1, default=str) + "\n")


def write_parquet(table: pa.Table, path: Path) -> None:
    """Write a Parquet shard atomically, in row groups of :data:`ROW_GROUP_ROWS`."""
    tmp = temporary_name(path)
    pq.write_table(table, tmp, row_group_size=ROW_GROUP_ROWS)
    os.replace(tmp, path)
