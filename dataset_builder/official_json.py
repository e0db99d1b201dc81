"""The official GeoLLaVA release form: a JSON list of ``{"id", "video", "conversations"}`` plus 2-frame mp4 clips.

``export_official`` writes it from a built dataset folder (so the paper's training code can read our output);
``dataset_builder.annotation.imported`` reads it (``geollava-build --annotator import:PATH``).

    python -c "from dataset_builder.official_json import *; export_official('outputs/geollava', 'outputs/official')"
"""

import io
import json
import logging
import shutil
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image
from tqdm.auto import tqdm

from dataset_builder.atomic import atomic_path
from dataset_builder.frames import write_mp4


logger = logging.getLogger(__name__)

__all__ = ["export_official", "official_entry"]


def official_entry(row: dict) -> dict:
    """The official form of one dataset row (``id``, ``conversations``): ``{"id", "video": "<id>.mp4", ...}``."""
    return {"id": row["id"], "video": f"{row['id']}.mp4", "conversations": row["conversations"]}


def _default_shards(dataset_dir: Path) -> dict[str, list[Path]]:
    """The default config's shards per split (``data/{split}-NNNNN-of-NNNNN.parquet``)."""
    shards: dict[str, list[Path]] = {}
    for path in sorted((dataset_dir / "data").glob("*-*-of-*.parquet")):
        shards.setdefault(path.name.split("-")[0], []).append(path)
    return shards


def export_official(dataset_dir: Path | str, out_dir: Path | str, videos: bool = True) -> dict[str, int]:
    """Write the official form of a built dataset: ``geollava_json/{split}.json`` and ``videos/{split}/{id}.mp4``.

    Rows are streamed shard by shard (memory stays bounded). Clips are copied from the dataset when it has them and
    made from its two stored frames when it does not; when ``out_dir`` is ``dataset_dir`` existing clips are kept.

    Args:
        dataset_dir: A folder written by ``geollava-build``.
        out_dir: Where to write (may be ``dataset_dir`` itself).
        videos: Also write the clips (``False``: the JSON only; it still names ``<id>.mp4``).

    Returns:
        Entries written per split.

    Raises:
        FileNotFoundError: If ``dataset_dir`` holds no default-config shards.
    """
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    shards = _default_shards(dataset_dir)
    if not shards:
        raise FileNotFoundError(f"{dataset_dir}/data/: no {{split}}-NNNNN-of-NNNNN.parquet shards to export")
    (out_dir / "geollava_json").mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, files in shards.items():
        video_dir = out_dir / "videos" / split
        if videos:
            video_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / "geollava_json" / f"{split}.json"
        n = 0
        with atomic_path(target) as tmp, open(tmp, "w", encoding="utf-8") as fh:
            fh.write("[")
            for path in tqdm(files, desc=f"official json ({split})", unit="shard", disable=len(files) < 2):
                columns = ["id", "conversations"]
                if videos:
                    # clips already made are copied (or kept); only a --no-videos build needs its frames read
                    columns.append("video" if "video" in pq.read_schema(path).names else "frames")
                for batch in pq.ParquetFile(path).iter_batches(batch_size=64, columns=columns):
                    for row in batch.to_pylist():
                        fh.write(("," if n else "") + "\n" + json.dumps(official_entry(row), ensure_ascii=False))
                        n += 1
                        if videos:
                            _export_clip(row, dataset_dir, video_dir / f"{row['id']}.mp4")
            fh.write("\n]\n")
        counts[split] = n
    return counts


def _export_clip(row: dict, dataset_dir: Path, target: Path) -> None:
    if "video" in row:
        source = dataset_dir / row["video"]
        if not source.exists():
            raise FileNotFoundError(f"{source}: the clip of row {row['id']!r} is missing from the dataset")
        if source.resolve() != target.resolve():
            with atomic_path(target) as tmp:
                shutil.copyfile(source, tmp)
        return
    frames = [Image.open(io.BytesIO(frame["bytes"])).convert("RGB") for frame in row["frames"]]
    write_mp4(frames, target)
