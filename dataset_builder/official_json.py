"""The official GeoLLaVA release form: a JSON list of ``{"id", "video", "conversations"}`` plus 2-frame mp4 clips.

``export_official`` writes it from a built dataset folder (so the paper's training code can read our output);
``ImportAnnotator`` reads it (``geollava-build --annotator import:PATH``) and attaches its answers to our pairs by id.

    python -c "from dataset_builder.official_json import *; export_official('outputs/geollava', 'outputs/official')"
"""

import io
import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image
from tqdm.auto import tqdm

from dataset_builder.annotate import AnnotationRequest, AnnotationResult
from dataset_builder.frames import write_mp4
from dataset_builder.prompts import ANNOTATION_PROMPT


logger = logging.getLogger(__name__)

__all__ = ["ImportAnnotator", "export_official", "official_entry", "read_official"]


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
        tmp = target.with_name(f".{target.name}.tmp")
        n = 0
        with open(tmp, "w", encoding="utf-8") as fh:
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
        os.replace(tmp, target)
        counts[split] = n
    return counts


def _export_clip(row: dict, dataset_dir: Path, target: Path) -> None:
    if "video" in row:
        source = dataset_dir / row["video"]
        if not source.exists():
            raise FileNotFoundError(f"{source}: the clip of row {row['id']!r} is missing from the dataset")
        if source.resolve() != target.resolve():
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            shutil.copyfile(source, tmp)
            os.replace(tmp, target)
        return
    frames = [Image.open(io.BytesIO(frame["bytes"])).convert("RGB") for frame in row["frames"]]
    write_mp4(frames, target)


def read_official(path: Path | str) -> tuple[dict[str, str], list[str]]:
    """Answers by id from official GeoLLaVA JSON: one file, or every ``*.json`` in a folder.

    The id of an entry is the stem of its ``video`` (the official clip name is the pair id), else its ``id``; the
    answer is its first ``gpt`` turn. Entries without them are skipped and reported (the rest are still used).

    Args:
        path: A JSON file or a folder of them (e.g. a built dataset's ``geollava_json/``).

    Returns:
        ``(answers by id, problems)``: each problem names the file and the entry index.

    Raises:
        FileNotFoundError: If ``path`` holds no JSON file.
        ValueError: If a file is not a JSON list (naming the file).
    """
    path = Path(path)
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not files or not files[0].exists():
        raise FileNotFoundError(f"{path}: no official GeoLLaVA JSON ([{{id, video, conversations}}, ...]) found")
    answers: dict[str, str] = {}
    problems: list[str] = []
    for file in files:
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except ValueError as err:
            raise ValueError(f"{file}: not valid JSON ({err})") from err
        if not isinstance(data, list):
            raise ValueError(f"{file}: expected a JSON list of {{id, video, conversations}} entries")
        for i, entry in enumerate(data):
            key, answer = _entry_answer(entry)
            if key is None or answer is None:
                problems.append(f"{file} entry {i}: no id/video or no gpt turn in conversations")
            elif key in answers and answers[key] != answer:
                problems.append(f"{file} entry {i}: id {key!r} seen before with another answer (kept the first)")
            else:
                answers.setdefault(key, answer)
    for problem in problems[:5]:
        logger.warning("import: %s", problem)
    if len(problems) > 5:
        logger.warning("import: %d more problem(s)", len(problems) - 5)
    return answers, problems


def _entry_answer(entry) -> tuple[str | None, str | None]:
    if not isinstance(entry, dict):
        return None, None
    # the clip name is the pair id in the official release (its "id" field is not always one)
    key = Path(str(entry["video"])).stem if entry.get("video") else entry.get("id")
    turns = entry.get("conversations")
    answer = None
    if isinstance(turns, list):
        answer = next(
            (
                t["value"]
                for t in turns
                if isinstance(t, dict) and t.get("from") == "gpt" and isinstance(t.get("value"), str)
            ),
            None,
        )
    return (str(key) if key else None), answer


class ImportAnnotator:
    """``--annotator import:PATH``: the official release's answers (GPT-4o-mini), attached by pair id.

    Our human turn (template chosen from the id) is kept; the gpt turn is the imported answer. Pairs the file does
    not hold come back with status ``"missing"`` (the builder reports and leaves them out).
    """

    name = "import"
    model = "gpt-4o-mini (imported from the official GeoLLaVA JSON)"
    prompt = ANNOTATION_PROMPT

    def __init__(self, path: Path | str):
        """Read the official JSON at ``path`` (a file or a folder of ``{split}.json``)."""
        self.path = Path(path)
        self.answers, self.problems = read_official(self.path)

    def annotate(self, requests: Iterable[AnnotationRequest]) -> Iterator[AnnotationResult]:
        """Yield the imported answer for each request; unmatched ids are reported as ``missing``."""
        for request in requests:
            answer = self.answers.get(request.id)
            if answer is None:
                yield AnnotationResult(request.id, None, "missing", f"id not in {self.path}")
            else:
                yield AnnotationResult(request.id, answer)
