"""The functions lmms-eval calls for the benchmark's tasks: a row's frames and question, and the scores.

``geollava.yaml``, ``geollava_levircc.yaml`` and ``geollava_sequences.yaml`` beside this module name them. Every
score comes from :mod:`trainer.evaluation.metric_sets` (and :mod:`trainer.evaluation.temporal`), the functions
``geollava-score`` computes with. See docs/evaluation.md "In lmms-eval".
"""

import json
import logging
from functools import lru_cache

from trainer.evaluation.metric_sets import (
    GEOLLAVA_KEYS,
    GROUNDING_KEYS,
    LEVIRCC_KEYS,
    TEMPORAL_KEYS,
    geollava_set,
    levircc_set,
)
from trainer.evaluation.run_eval import row_question_and_references
from trainer.evaluation.temporal import temporal_set
from trainer.models.families import dated_question, frame_dates


logger = logging.getLogger(__name__)

#: The metrics of each task definition, in its YAML's order.
TASK_KEYS = {
    "geollava": (*GEOLLAVA_KEYS, *GROUNDING_KEYS),
    "geollava_levircc": LEVIRCC_KEYS,
    "geollava_sequences": (*GEOLLAVA_KEYS, *GROUNDING_KEYS, *TEMPORAL_KEYS),
}
#: The prefix of each task's functions here (``geollava_doc_to_text``, ``levircc_bleu4``, ...): metric keys repeat.
PREFIX = {"geollava": "geollava", "geollava_levircc": "levircc", "geollava_sequences": "sequences"}
#: The columns each task reads (``references`` and ``changes`` too, where the dataset has them), and their form.
COLUMNS = {
    "geollava": ("id", "frames", "conversations"),
    "geollava_levircc": ("id", "frames", "conversations"),
    "geollava_sequences": ("id", "frames", "timestamps", "conversations"),
}
READS = {
    "geollava": "2 frames, earlier first, as geollava-build and geollava-build-levircc write them",
    "geollava_levircc": "2 frames, earlier first, as geollava-build and geollava-build-levircc write them",
    "geollava_sequences": "N frames in time order and one timestamp each, as geollava-build --sequences writes them",
}


def _require(task: str, doc: dict, columns: tuple[str, ...]) -> None:
    missing = [column for column in columns if column not in doc]
    if missing:
        raise ValueError(
            f"task {task}: the dataset has no column {', '.join(map(repr, missing))}: the task reads "
            f"{', '.join(COLUMNS[task])} ({READS[task]})"
        )


def _question(task: str, doc: dict) -> str:
    # lmms-eval reads the question of the first row when it loads the task, from the row without its images.
    _require(task, doc, ("id", "conversations"))
    try:
        return row_question_and_references(doc)[0]
    except ValueError as err:
        raise ValueError(f"task {task}: row {doc['id']!r}: {err}") from None


def _frames(task: str, doc: dict, n_frames: int = 2) -> list:
    # The first request reads the first row's frames, before anything is generated.
    _require(task, doc, ("frames",))
    frames = doc["frames"]
    if not isinstance(frames, list) or len(frames) != n_frames:
        what = "2 images" if task != "geollava_sequences" else f"one image per timestamp ({n_frames})"
        raise ValueError(f"task {task}: row {doc['id']!r}: 'frames' must hold {what}, got {frames!r}")
    return [frame.convert("RGB") for frame in frames]


def _timestamps(doc: dict) -> list[str]:
    _require("geollava_sequences", doc, ("id", "timestamps"))
    timestamps = doc["timestamps"]
    if not isinstance(timestamps, list) or len(timestamps) < 2:
        raise ValueError(
            f"task geollava_sequences: row {doc['id']!r}: 'timestamps' must hold one ISO 8601 date per frame "
            f"(at least 2), got {timestamps!r}"
        )
    return timestamps


def geollava_doc_to_text(doc: dict) -> str:
    """The GeoLLaVA row's own question: its human turn without the ``<video>`` placeholder."""
    return _question("geollava", doc)


def levircc_doc_to_text(doc: dict) -> str:
    """The LEVIR-CC row's own question: its human turn without the ``<video>`` placeholder."""
    return _question("geollava_levircc", doc)


def sequences_doc_to_text(doc: dict) -> str:
    """The sequence row's own question after its frames' dates: ``"Frame dates: 1) 2016-03-02, .... {question}"``.

    lmms-eval's model classes send every image first, then the text, so the dates cannot sit beside their frames:
    they are given as the video families take them (:func:`trainer.models.families.dated_question`).
    """
    question = _question("geollava_sequences", doc)
    timestamps = _timestamps(doc)
    try:
        return dated_question(question, frame_dates(timestamps, len(timestamps)))
    except ValueError as err:
        raise ValueError(f"task geollava_sequences: row {doc['id']!r}: 'timestamps': {err}") from None


def geollava_doc_to_visual(doc: dict) -> list:
    """The GeoLLaVA row's two frames, earlier first, as RGB images: lmms-eval's model classes take two dates so."""
    return _frames("geollava", doc)


def levircc_doc_to_visual(doc: dict) -> list:
    """The LEVIR-CC row's two frames (before, after) as RGB images: lmms-eval's model classes take two dates so."""
    return _frames("geollava_levircc", doc)


def sequences_doc_to_visual(doc: dict) -> list:
    """The sequence row's N frames, in time order, as RGB images: one per timestamp."""
    return _frames("geollava_sequences", doc, len(_timestamps(doc)))


def doc_to_target(doc: dict) -> list[str]:
    """The row's reference captions: its ``references`` (LEVIR-CC: 5) when it has them, else the gpt turn."""
    return row_question_and_references(doc)[1]


def _scored_row(doc: dict, results: list[str]) -> dict:
    row = {"id": str(doc["id"]), "prediction": results[0], "references": doc_to_target(doc)}
    for column in ("changes", "timestamps"):
        if column in doc:
            row[column] = doc[column]
    return row


def process_geollava(doc: dict, results: list[str]) -> dict:
    """What each GeoLLaVA metric aggregates for a row: its id, prediction, references and true ``changes``."""
    return dict.fromkeys(TASK_KEYS["geollava"], _scored_row(doc, results))


def process_levircc(doc: dict, results: list[str]) -> dict:
    """What each LEVIR-CC metric aggregates for a row: its id, prediction and references."""
    return dict.fromkeys(TASK_KEYS["geollava_levircc"], _scored_row(doc, results))


def process_sequences(doc: dict, results: list[str]) -> dict:
    """What each sequences metric aggregates for a row: its id, prediction, references, ``changes``, timestamps."""
    return dict.fromkeys(TASK_KEYS["geollava_sequences"], _scored_row(doc, results))


@lru_cache(maxsize=2)
def _scores(task: str, rows_json: str) -> dict:
    # Every metric of a task aggregates the same rows: the set is computed once (one encoder pass, one JVM).
    rows = json.loads(rows_json)
    predictions = [row["prediction"] for row in rows]
    references = [row["references"] for row in rows]
    if task == "geollava_levircc":
        scored = levircc_set(predictions, references)
    else:
        changes = [row.get("changes") for row in rows] if any("changes" in row for row in rows) else None
        scored = geollava_set(predictions, references, changes)
        if task == "geollava_sequences":  # as geollava-score composes them: the caption set, then temporal grounding
            scored.update(temporal_set(predictions, references, changes, [row.get("timestamps") for row in rows]))
    for key, why in scored.unavailable.items():
        logger.warning("task %s: %s is not computed: %s", task, key, why)
    return scored.values


def _aggregation(task: str, key: str):
    def aggregate(results: list[dict]) -> float | None:
        return _scores(task, json.dumps(results, sort_keys=True)).get(key)

    aggregate.__name__ = aggregate.__qualname__ = f"{PREFIX[task]}_{key}"
    aggregate.__doc__ = f"{key} of the {task} task over its rows, as geollava-score computes it (None: not computed)."
    return aggregate


geollava_rouge1 = _aggregation("geollava", "rouge1")
geollava_rouge2 = _aggregation("geollava", "rouge2")
geollava_rougeL = _aggregation("geollava", "rougeL")
geollava_sentence_bleu2 = _aggregation("geollava", "sentence_bleu2")
geollava_sbert_cosine = _aggregation("geollava", "sbert_cosine")
geollava_bertscore_f1 = _aggregation("geollava", "bertscore_f1")
geollava_grounding_precision = _aggregation("geollava", "grounding_precision")
geollava_grounding_recall = _aggregation("geollava", "grounding_recall")
geollava_grounding_f1 = _aggregation("geollava", "grounding_f1")
sequences_rouge1 = _aggregation("geollava_sequences", "rouge1")
sequences_rouge2 = _aggregation("geollava_sequences", "rouge2")
sequences_rougeL = _aggregation("geollava_sequences", "rougeL")
sequences_sentence_bleu2 = _aggregation("geollava_sequences", "sentence_bleu2")
sequences_sbert_cosine = _aggregation("geollava_sequences", "sbert_cosine")
sequences_bertscore_f1 = _aggregation("geollava_sequences", "bertscore_f1")
sequences_grounding_precision = _aggregation("geollava_sequences", "grounding_precision")
sequences_grounding_recall = _aggregation("geollava_sequences", "grounding_recall")
sequences_grounding_f1 = _aggregation("geollava_sequences", "grounding_f1")
sequences_temporal_precision = _aggregation("geollava_sequences", "temporal_precision")
sequences_temporal_recall = _aggregation("geollava_sequences", "temporal_recall")
sequences_temporal_f1 = _aggregation("geollava_sequences", "temporal_f1")
levircc_bleu1 = _aggregation("geollava_levircc", "bleu1")
levircc_bleu2 = _aggregation("geollava_levircc", "bleu2")
levircc_bleu3 = _aggregation("geollava_levircc", "bleu3")
levircc_bleu4 = _aggregation("geollava_levircc", "bleu4")
levircc_meteor = _aggregation("geollava_levircc", "meteor")
levircc_rougeL_coco = _aggregation("geollava_levircc", "rougeL_coco")
levircc_cider_d = _aggregation("geollava_levircc", "cider_d")
levircc_s_m = _aggregation("geollava_levircc", "s_m")
