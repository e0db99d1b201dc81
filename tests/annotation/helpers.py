"""Helpers of the annotation tests: the key that must never leak, JPEG bytes, tiny built dataset folders."""

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from datasets import Dataset
from PIL import Image as PILImage

from dataset_builder.annotation.base import AnnotationRequest
from dataset_builder.rows import features


SECRET = "sk-test-SECRET-never-logged-0123456789abcdef"
REPO_ROOT = Path(__file__).resolve().parents[2]


def jpeg(seed: int, size=(48, 40)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    PILImage.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def pair_requests(n: int, start: int = 0) -> list[AnnotationRequest]:
    """``n`` annotation requests with stored frames (distinct images per pair)."""
    return [
        AnnotationRequest(f"barn_{i}_1-barn_{i}_0", (Path("a.jpg"), Path("b.jpg")), (jpeg(2 * i), jpeg(2 * i + 1)))
        for i in range(start, start + n)
    ]


def sequence_requests(n: int, frames: int = 3, start: int = 0) -> list[AnnotationRequest]:
    """``n`` sequence requests of ``frames`` stored frames each, with their timestamps (distinct images)."""
    return [
        AnnotationRequest(
            f"train/barn_{i}",
            (),
            tuple(jpeg(1000 + 10 * i + j) for j in range(frames)),
            timestamps=tuple(f"{2004 + 2 * j}-0{j % 9 + 1}-1{j % 10}T10:30:00Z" for j in range(frames)),
        )
        for i in range(start, start + n)
    ]


FEATURES = features(columns=("id", "split", "image1", "image2", "frames", "conversations", "prompt_template_id"))


def _rows(split: str, start: int, n: int, answered: int = 0) -> dict:
    rows = {k: [] for k in FEATURES}
    for i in range(start, start + n):
        pid = f"barn_{i}_1-barn_{i}_0"
        rows["id"].append(pid)
        rows["split"].append(split)
        rows["image1"].append(f"barn_{i}_1")
        rows["image2"].append(f"barn_{i}_0")
        rows["frames"].append([{"bytes": jpeg(2 * i), "path": None}, {"bytes": jpeg(2 * i + 1), "path": None}])
        answer = f"old answer {i}" if i - start < answered else ""
        rows["conversations"].append(
            [{"from": "human", "value": "Describe the satellite video.\n<video>"}, {"from": "gpt", "value": answer}]
        )
        rows["prompt_template_id"].append(0)
    return rows


def make_dataset(root: Path, n_train: int = 6, n_test: int = 3, sample: int = 3, answered: int = 0) -> Path:
    """A Hub-layout folder as geollava-build writes it (no build_report.json): train/test shards + sample_10k."""
    data = root / "data"
    (data / "sample_10k").mkdir(parents=True)
    train = Dataset.from_dict(_rows("train", 0, n_train, answered), features=FEATURES)
    test = Dataset.from_dict(_rows("test", 100, n_test), features=FEATURES)
    half = (n_train + 1) // 2
    train.select(range(half)).to_parquet(data / "train-00000-of-00002.parquet")
    train.select(range(half, n_train)).to_parquet(data / "train-00001-of-00002.parquet")
    test.to_parquet(data / "test-00000-of-00001.parquet")
    train.select(range(sample)).to_parquet(data / "sample_10k" / "train-00000-of-00001.parquet")
    (root / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*\n"
        "  - split: test\n    path: data/test-*\n- config_name: sample_10k\n  data_files:\n  - split: train\n"
        "    path: data/sample_10k/train-*\n---\n# tiny\n"
    )
    return root


def read_answers(root: Path) -> dict[str, dict[str, str]]:
    """gpt answers per shard (relative path) per pair id."""
    out = {}
    for path in sorted((root / "data").rglob("*.parquet")):
        table = pq.read_table(path, columns=["id", "conversations"]).to_pylist()
        out[str(path.relative_to(root))] = {r["id"]: r["conversations"][-1]["value"] for r in table}
    return out


def cache_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    lines = []
    for line in path.read_text().splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:  # a line being written right now
            continue
    return lines
