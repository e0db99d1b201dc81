"""Model families: how each video/multi-image VLM takes a pair or a dated sequence, and which modules are which.

Adding a family is one entry in :data:`FAMILIES`. Training (the collator), evaluation, prediction and the Space all
turn a row into chat messages with :func:`build_messages`, so the prompt format is the same everywhere.
See docs/training.md "The four families' prompt formats".
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

import numpy as np
from PIL import Image

from dataset_builder.prompts import IMAGE_LABEL


def lm_projections(prefix: str = "language_model") -> str:
    """LoRA target regex: the attention and MLP projections of the language model under ``prefix``."""
    return rf".*{prefix}\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))"


@dataclass(frozen=True)
class Family:
    """What the rest of the project needs to know about one model family.

    Attributes:
        name: Registry key, e.g. ``"llava-next-video"``.
        model_type: ``config.model_type`` of its checkpoints.
        model_class: The transformers class (loaded through ``AutoModelForImageTextToText``).
        visual: How it takes a pair: ``"video"`` (the two frames as one 2-frame clip) or ``"images"`` (two image
            slots).
        vision_modules: In-memory module prefixes of the vision tower(s) and projector: frozen by default, never
            quantized, never pruned.
        example_model_id: The real checkpoint this family is used with.
        language_model: In-memory prefix of the language model (all five families: ``model.language_model``).
        lora_target_modules: Default LoRA target regex: attention and MLP projections of the language model only
            (:func:`lm_projections`).
        sequence_visual: How it takes a dated sequence of N frames: ``"video"`` (one N-frame clip, the dates in the
            question text), ``"images"`` (N images, each after its date label), or ``None`` (pairs only).
    """

    name: str
    model_type: str
    model_class: str
    visual: str
    vision_modules: tuple[str, ...]
    example_model_id: str
    language_model: str = "model.language_model"
    lora_target_modules: str = lm_projections()
    sequence_visual: str | None = None


#: The LLaVA layout's vision tower and projector, which LLaVA-NeXT-Video, LLaVA-OneVision and CCExpert extend.
LLAVA_VISION = ("model.vision_tower", "model.multi_modal_projector")

FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family(
            name="llava-next-video",
            model_type="llava_next_video",
            model_class="LlavaNextVideoForConditionalGeneration",
            visual="video",
            vision_modules=(*LLAVA_VISION, "model.vision_resampler"),
            example_model_id="llava-hf/LLaVA-NeXT-Video-7B-hf",
            sequence_visual="video",
        ),
        Family(
            name="video-llava",
            model_type="video_llava",
            model_class="VideoLlavaForConditionalGeneration",
            visual="video",
            vision_modules=("model.image_tower", "model.video_tower", "model.multi_modal_projector"),
            example_model_id="LanguageBind/Video-LLaVA-7B-hf",
            sequence_visual="video",
        ),
        Family(
            # A pair as a 2-frame video: 2 x 196 + 1 tokens on the real models, against anyres tiling (thousands) for
            # a single image. A sequence as N images: several images per sample skip anyres (729 + 1 tokens each).
            name="llava-onevision",
            model_type="llava_onevision",
            model_class="LlavaOnevisionForConditionalGeneration",
            visual="video",
            vision_modules=LLAVA_VISION,
            example_model_id="llava-hf/llava-onevision-qwen2-7b-ov-hf",
            sequence_visual="images",
        ),
        Family(
            # Two images: as a video, the 2 frames are one temporal patch and the two dates fuse into the same tokens.
            name="qwen2.5-vl",
            model_type="qwen2_5_vl",
            model_class="Qwen2_5_VLForConditionalGeneration",
            visual="images",
            vision_modules=("model.visual",),
            example_model_id="Qwen/Qwen2.5-VL-7B-Instruct",
            sequence_visual="images",
        ),
    )
}


def get_family(name: str) -> Family:
    """The family registered under ``name``.

    Raises:
        ValueError: If no family has that name.
    """
    if name not in FAMILIES:
        raise ValueError(f"family {name!r} is not registered; choose one of {sorted(FAMILIES)}")
    return FAMILIES[name]


def family_of(model_or_config) -> Family:
    """The family of a loaded model, a config, or a ``model_type`` string.

    Raises:
        ValueError: If the model type belongs to no registered family.
    """
    if isinstance(model_or_config, str):
        model_type = model_or_config
    else:
        config = getattr(model_or_config, "config", model_or_config)
        model_type = getattr(config, "model_type", None)
    for family in FAMILIES.values():
        if family.model_type == model_type:
            return family
    known = ", ".join(f.model_type for f in FAMILIES.values())
    raise ValueError(f"model_type {model_type!r} belongs to no registered family ({known})")


def register_family(family: Family) -> None:
    """Add a family to the registry (e.g. CCExpert, which builds on LLaVA-OneVision)."""
    FAMILIES[family.name] = family


def _as_array(frame) -> np.ndarray:
    if isinstance(frame, Image.Image):
        return np.asarray(frame.convert("RGB"))
    array = np.asarray(frame)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"a frame must be an RGB image (H, W, 3), got an array of shape {array.shape}")
    return array.astype(np.uint8, copy=False)


def _same_size(frames) -> list[Image.Image]:
    images = [frame if isinstance(frame, Image.Image) else Image.fromarray(_as_array(frame)) for frame in frames]
    images = [image.convert("RGB") for image in images]
    size = images[0].size
    return [image if image.size == size else image.resize(size, Image.Resampling.BICUBIC) for image in images]


def frame_dates(timestamps: Sequence[str], n_frames: int) -> list[str]:
    """The ``YYYY-MM-DD`` date of each frame, from ISO 8601 timestamps or dates, checked to be in time order.

    Args:
        timestamps: One ISO 8601 string per frame (``"2016-03-02T10:21:07.123Z"`` or ``"2016-03-02"``).
        n_frames: How many frames they date.

    Raises:
        ValueError: If there is not one per frame, one is not an ISO 8601 date, or a date precedes the one before it.
    """
    if len(timestamps) != n_frames:
        raise ValueError(f"{len(timestamps)} dates for {n_frames} frames: give one date per frame")
    dates = []
    for i, value in enumerate(timestamps, 1):
        text = str(value).strip()
        try:
            day = date.fromisoformat(text[:10])
        except ValueError:
            raise ValueError(f"date {i} ({value!r}) is not an ISO 8601 date (YYYY-MM-DD)") from None
        if len(text) > 10 and text[10] not in "T ":
            raise ValueError(f"date {i} ({value!r}) is not an ISO 8601 date (YYYY-MM-DD)")
        if dates and day.isoformat() < dates[-1]:
            raise ValueError(f"frames must be in time order: date {i} ({day}) is before date {i - 1} ({dates[-1]})")
        dates.append(day.isoformat())
    return dates


def dated_question(question: str, dates: Sequence[str]) -> str:
    """The question after the frames' dates, as the video families take a sequence's dates in the text.

    ``dated_question("Describe ...", ["2016-03-02", "2017-08-15"])`` is
    ``"Frame dates: 1) 2016-03-02, 2) 2017-08-15. Describe ..."``; no dates leave the question as it is.
    """
    if not dates:
        return question
    return f"Frame dates: {', '.join(f'{i}) {day}' for i, day in enumerate(dates, 1))}. {question}"


def sequence_content(family: Family, question: str, images: list[Image.Image], dates: list[str] | None) -> list[dict]:
    """The user turn's content for a sequence: how ``family`` takes N frames and their dates (see build_messages)."""
    if family.sequence_visual == "video":
        clip = {"type": "video", "video": np.stack([np.asarray(image) for image in images])}
        return [clip, {"type": "text", "text": dated_question(question, dates or [])}]
    content = []
    for i, image in enumerate(images, 1):
        label = (IMAGE_LABEL.format(index=i, date=dates[i - 1]) if dates else f"Image {i}:") + " "
        content += [{"type": "text", "text": label if i == 1 else "\n" + label}, {"type": "image", "image": image}]
    return [*content, {"type": "text", "text": "\n" + question}]


def build_messages(
    family: Family | str, question: str, frames, answer: str | None = None, dates: Sequence[str] | None = None
) -> list[dict]:
    """The chat messages for one pair or one dated sequence, the question, and the answer if given.

    Two frames without ``dates`` are a pair, taken as the family's :attr:`Family.visual` says. With ``dates`` (or
    more than two frames) they are a sequence, taken as :attr:`Family.sequence_visual` says: video families get one
    N-frame clip with ``"Frame dates: 1) 2016-03-02, 2) 2017-08-15, 3) 2019-01-30."`` before the question;
    image families get the N images interleaved with their labels, ``"Image 3 (2017-08-02): <image>"``, then the
    question (a template that renders the content in order interleaves them; LLaVA-OneVision's published one puts
    every image first, docs/training.md).

    Args:
        family: A :class:`Family` or its registry name.
        question: The human turn's text, without visual placeholders (see ``prompts.strip_visual_placeholder``).
        frames: The frames in time order (PIL images or ``(H, W, 3)`` uint8 arrays). A frame of another size than
            the first is resized to the first one's size, as a clip needs one size.
        answer: The assistant's answer (training); ``None`` for generation.
        dates: The frames' ISO 8601 timestamps or dates, one per frame (a sequence), or ``None``.

    Returns:
        Messages for ``processor.apply_chat_template``.

    Raises:
        ValueError: For fewer than 2 frames, more than 2 without a family that takes sequences, or bad dates.
    """
    family = get_family(family) if isinstance(family, str) else family
    if len(frames) < 2 or (len(frames) != 2 and family.sequence_visual is None):
        needs = "exactly 2 frames (earlier, later)" if family.sequence_visual is None else "at least 2 frames"
        raise ValueError(f"{family.name} needs {needs}, got {len(frames)}")
    images = _same_size(frames)
    if dates is None and len(frames) == 2:
        if family.visual == "video":
            visual = [{"type": "video", "video": np.stack([np.asarray(image) for image in images])}]
        else:
            visual = [{"type": "image", "image": image} for image in images]
        content = [*visual, {"type": "text", "text": question}]
    elif family.sequence_visual is None:
        raise ValueError(f"{family.name} takes pairs only: its frames cannot be dated as a sequence")
    else:
        days = None if dates is None else frame_dates(dates, len(frames))
        content = sequence_content(family, question, images, days)
    messages = [{"role": "user", "content": content}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages
