"""The paper's prompt templates and annotation prompt (GeoLLaVA, arXiv 2410.19552, App. A); the sequences prompts.

The ``sequences`` config (one location at every date) has its own question and annotation prompt, and one way of
writing its dates. See docs/dataset.md.
"""

import hashlib


#: The six human-turn templates of the paper's Appendix A, verbatim (the sixth lacks its closing quote there).
PROMPT_TEMPLATES: tuple[str, ...] = (
    "Provide a detailed description of the satellite video, where each frame corresponds to a different time but "
    "the same location.",
    "Describe the satellite video thoroughly, noting that each frame shows the same location at a different time.",
    "Give a detailed account of the satellite video, with each frame depicting the same location at distinct points "
    "in time.",
    "Offer an elaborate explanation of the satellite video, where every frame captures the same location but at "
    "different times.",
    "Elaborate on the changes in the location as seen in the satellite video, where each frame is a snapshot of the "
    "same place at different times.",
    "Provide a report describing the satellite video, where each frame shows the same location at different time "
    "points.",
)

#: What GPT-4o-mini was asked for each pair (paper §3).
ANNOTATION_PROMPT = "Briefly describe each image independently, then explain the changes happening between them."

#: The visual placeholder that ends every human turn, as in the official LLaVA-format JSON.
VIDEO_TOKEN = "<video>"

#: The question of every ``sequences`` row (its frames' dates are in the row's ``timestamps``, not in this text).
SEQUENCE_QUESTION = (
    "These satellite frames show the same location at different dates, in time order. Describe the first and the "
    "last frame, then say what changed and between which dates."
)

#: What a language model is asked for each sequence; the frames follow it, each after its label (:func:`image_label`).
SEQUENCE_ANNOTATION_PROMPT = (
    "The satellite images below show the same location at different dates, in time order, each after its date. "
    "Briefly describe the first and the last image. Then, for each interval between two consecutive dates in which "
    'something changed, write one sentence that begins "Between YYYY-MM and YYYY-MM," with the months of those two '
    "dates, and say what changed and where; several changes in one interval share its sentence. Leave out intervals "
    'with no change. If nothing changed at all, write "No change is visible across the N dates." with N the number '
    "of images."
)

#: The text before each frame of a sequence where frames and dates are interleaved.
IMAGE_LABEL = "Image {index} ({date}):"


def choose_template(pair_id: str) -> int:
    """Pick a template index for a pair, deterministically from its id (stable across runs and machines).

    Args:
        pair_id: The pair id, e.g. ``"airport_hangar_0_4-airport_hangar_0_1"``.

    Returns:
        An index into :data:`PROMPT_TEMPLATES`.
    """
    digest = hashlib.sha256(pair_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % len(PROMPT_TEMPLATES)


def human_turn(template_id: int) -> str:
    """The human turn of a conversation: the template followed by the visual placeholder."""
    return f"{PROMPT_TEMPLATES[template_id]}\n{VIDEO_TOKEN}"


def sequence_human_turn() -> str:
    """The human turn of a ``sequences`` row: :data:`SEQUENCE_QUESTION` followed by the visual placeholder."""
    return f"{SEQUENCE_QUESTION}\n{VIDEO_TOKEN}"


def date_of(timestamp: str) -> str:
    """The ``YYYY-MM-DD`` date of an ISO 8601 timestamp as written (its own offset, not converted to UTC)."""
    return timestamp.strip()[:10]


def month_of(timestamp: str) -> str:
    """The ``YYYY-MM`` month of an ISO 8601 timestamp as written: the resolution captions give intervals at."""
    return timestamp.strip()[:7]


def image_label(index: int, timestamp: str) -> str:
    """The label of frame ``index`` (1-based) of a sequence: ``"Image 3 (2017-08-02):"``."""
    return IMAGE_LABEL.format(index=index, date=date_of(timestamp))


def strip_visual_placeholder(human_value: str) -> str:
    """The question text of a human turn without the ``<video>``/``<image>`` placeholders."""
    return " ".join(human_value.replace(VIDEO_TOKEN, " ").replace("<image>", " ").split())
