"""The paper's prompt templates and the annotation prompt (GeoLLaVA, arXiv 2410.19552, Appendix A)."""

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


def strip_visual_placeholder(human_value: str) -> str:
    """The question text of a human turn without the ``<video>``/``<image>`` placeholders."""
    return " ".join(human_value.replace(VIDEO_TOKEN, " ").replace("<image>", " ").split())
