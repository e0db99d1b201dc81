"""The rows of the GeoLLaVA dataset: their schema (docs/CONTRACTS.md §2) and how a pair becomes one."""

from datasets import Features, Image, List, Value

from dataset_builder.pairs import Pair
from dataset_builder.prompts import choose_template, human_turn


def features(with_videos: bool = True, with_changes: bool = False, columns: tuple[str, ...] | None = None) -> Features:
    """The row schema (docs/CONTRACTS.md §2).

    Args:
        with_videos: Include the ``video`` column (relative mp4 path).
        with_changes: Include the ``changes`` column (synthetic trees' ground truth).
        columns: Only these columns, in this order (what a consumer that reads a subset, or a test, needs).

    Returns:
        The features, in column order.

    Raises:
        KeyError: If ``columns`` names a column the schema does not have.
    """
    spec = {
        "id": Value("string"),
        "split": Value("string"),
        "category": Value("string"),
        "location_id": Value("string"),
        "image1": Value("string"),
        "image2": Value("string"),
        "timestamp1": Value("string"),
        "timestamp2": Value("string"),
        "gap_days": Value("int32"),
        "frames": List(Image()),
    }
    if with_videos:
        spec["video"] = Value("string")
    spec |= {
        "conversations": List({"from": Value("string"), "value": Value("string")}),
        "prompt_template_id": Value("int32"),
        "gsd": Value("float32"),
        "country_code": Value("string"),
        "cloud_cover": Value("int32"),
    }
    if with_changes or (columns and "changes" in columns):
        spec["changes"] = List({"kind": Value("string"), "location": Value("string"), "size": Value("string")})
    if columns is not None:
        spec = {name: spec[name] for name in columns}
    return Features(spec)


def make_row(pair: Pair, caption: str, frames_jpeg: list[bytes], video: str | None, changes: list | None) -> dict:
    """One dataset row of a pair (pure: no file is read or written).

    Args:
        pair: The pair.
        caption: The annotator's answer (the gpt turn).
        frames_jpeg: The two frames' JPEG bytes, earlier first.
        video: The clip's path inside the dataset folder, or ``None`` without clips.
        changes: The pair's true changes (synthetic trees), or ``None``.

    Returns:
        The row, keyed as :func:`features`.
    """
    template_id = choose_template(pair.id)
    row = {
        "id": pair.id,
        "split": pair.split,
        "category": pair.category,
        "location_id": pair.location_id,
        "image1": pair.first.stem,
        "image2": pair.second.stem,
        "timestamp1": pair.first.timestamp_text,
        "timestamp2": pair.second.timestamp_text,
        "gap_days": pair.gap_days,
        "frames": [{"bytes": data, "path": None} for data in frames_jpeg],
    }
    if video is not None:
        row["video"] = video
    row |= {
        "conversations": [{"from": "human", "value": human_turn(template_id)}, {"from": "gpt", "value": caption}],
        "prompt_template_id": template_id,
        "gsd": pair.first.gsd,
        "country_code": pair.first.country_code,
        "cloud_cover": pair.first.cloud_cover,
    }
    if changes is not None:
        row["changes"] = changes
    return row
