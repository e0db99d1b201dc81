"""The rows of the GeoLLaVA dataset: their schemas (docs/CONTRACTS.md §2) and how a pair or a sequence becomes one."""

from datasets import Features, Image, List, Value

from dataset_builder.pairs import Pair
from dataset_builder.prompts import choose_template, human_turn, sequence_human_turn
from dataset_builder.sequences import ViewSequence


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


def sequence_features(with_changes: bool = False) -> Features:
    """The row schema of the ``sequences`` config (docs/CONTRACTS.md §2).

    Args:
        with_changes: Include the ``changes`` column (synthetic trees' ground truth, each change with its interval).

    Returns:
        The features, in column order.
    """
    spec = {
        "id": Value("string"),
        "frames": List(Image()),
        "timestamps": List(Value("string")),
        "category": Value("string"),
        "country_code": Value("string"),
        "gsd": Value("float32"),
        "conversations": List({"from": Value("string"), "value": Value("string")}),
    }
    if with_changes:
        spec["changes"] = List(
            {
                "kind": Value("string"),
                "location": Value("string"),
                "size": Value("string"),
                "start": Value("string"),
                "end": Value("string"),
            }
        )
    return Features(spec)


def make_sequence_row(sequence: ViewSequence, caption: str, frames_jpeg: list[bytes], changes: list | None) -> dict:
    """One ``sequences`` row (pure: no file is read or written).

    Args:
        sequence: The location's kept views.
        caption: The annotator's answer (the gpt turn).
        frames_jpeg: The kept views' frames as JPEG bytes, in time order.
        changes: The true changes with their intervals (synthetic trees), or ``None``.

    Returns:
        The row, keyed as :func:`sequence_features`.
    """
    first = sequence.views[0]
    row = {
        "id": sequence.id,
        "frames": [{"bytes": data, "path": None} for data in frames_jpeg],
        "timestamps": list(sequence.timestamps),
        "category": sequence.category,
        "country_code": first.country_code,
        "gsd": first.gsd,
        "conversations": [{"from": "human", "value": sequence_human_turn()}, {"from": "gpt", "value": caption}],
    }
    if changes is not None:
        row["changes"] = changes
    return row
