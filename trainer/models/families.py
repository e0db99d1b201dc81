"""Model families: how each video/multi-image VLM takes the two dates, and which of its modules are which.

Adding a family is one entry in :data:`FAMILIES`. Training (the collator), evaluation, prediction and the Space all
turn a row into chat messages with :func:`build_messages`, so the prompt format is the same everywhere.
"""

from dataclasses import dataclass

import numpy as np
from PIL import Image


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
        visual: ``"video"`` (the two frames as one 2-frame clip) or ``"images"`` (two image slots).
        vision_modules: In-memory module prefixes of the vision tower(s) and projector: frozen by default, never
            quantized, never pruned.
        example_model_id: The real checkpoint this family is used with.
        language_model: In-memory prefix of the language model (all five families: ``model.language_model``).
        lora_target_modules: Default LoRA target regex: attention and MLP projections of the language model only
            (:func:`lm_projections`).
    """

    name: str
    model_type: str
    model_class: str
    visual: str
    vision_modules: tuple[str, ...]
    example_model_id: str
    language_model: str = "model.language_model"
    lora_target_modules: str = lm_projections()


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
        ),
        Family(
            name="video-llava",
            model_type="video_llava",
            model_class="VideoLlavaForConditionalGeneration",
            visual="video",
            vision_modules=("model.image_tower", "model.video_tower", "model.multi_modal_projector"),
            example_model_id="LanguageBind/Video-LLaVA-7B-hf",
        ),
        Family(
            # As a 2-frame video: 2 x 196 + 1 tokens on the real models, against anyres tiling (thousands) for images.
            name="llava-onevision",
            model_type="llava_onevision",
            model_class="LlavaOnevisionForConditionalGeneration",
            visual="video",
            vision_modules=LLAVA_VISION,
            example_model_id="llava-hf/llava-onevision-qwen2-7b-ov-hf",
        ),
        Family(
            # Two images: as a video, the 2 frames are one temporal patch and the two dates fuse into the same tokens.
            name="qwen2.5-vl",
            model_type="qwen2_5_vl",
            model_class="Qwen2_5_VLForConditionalGeneration",
            visual="images",
            vision_modules=("model.visual",),
            example_model_id="Qwen/Qwen2.5-VL-7B-Instruct",
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


def build_messages(family: Family | str, question: str, frames, answer: str | None = None) -> list[dict]:
    """The chat messages for one pair: the frames as the family takes them, the question, and the answer if given.

    Args:
        family: A :class:`Family` or its registry name.
        question: The human turn's text, without visual placeholders (see ``prompts.strip_visual_placeholder``).
        frames: The two frames, earlier first (PIL images or ``(H, W, 3)`` uint8 arrays). A later frame of another
            size is resized to the first one's size, as a 2-frame clip needs one size.
        answer: The assistant's answer (training); ``None`` for generation.

    Returns:
        Messages for ``processor.apply_chat_template``.
    """
    family = get_family(family) if isinstance(family, str) else family
    if len(frames) != 2:
        raise ValueError(f"a pair needs exactly 2 frames (earlier, later), got {len(frames)}")
    images = _same_size(frames)
    if family.visual == "video":
        visual = [{"type": "video", "video": np.stack([np.asarray(image) for image in images])}]
    else:
        visual = [{"type": "image", "image": image} for image in images]
    messages = [{"role": "user", "content": [*visual, {"type": "text", "text": question}]}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages
