"""The video collator: rows (pairs or dated sequences) -> model inputs, labels on the answer only, never truncated.

TRL has no video path, so ``SFTTrainer`` gets the raw rows and this collator builds everything: the chat messages,
the processor call and the labels, with the answer found from the template's own rendering of the generation prompt.
See docs/training.md "The collator and the loss".
"""

import bisect
import logging
from dataclasses import dataclass

import numpy as np
import torch

from dataset_builder.prompts import strip_visual_placeholder
from trainer.models.chat_templates import ensure_chat_template
from trainer.models.families import Family, build_messages, get_family


logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


_PROBE_ANSWER = "GEOLLAVA-PROBE-ANSWER"


@dataclass(frozen=True)
class AnswerFormat:
    """How a chat template joins the generation prompt, the answer and the end of the turn.

    Attributes:
        separator: Text between the generation prompt and the answer (``" "`` after Vicuna's ``ASSISTANT:``).
        end_of_turn: The token that ends the answer, which the model must learn to emit (``</s>``, ``<|im_end|>``).
    """

    separator: str
    end_of_turn: str


def answer_format(processor, family: Family | str) -> AnswerFormat:
    """Read the answer's separator and end-of-turn token off the processor's chat template.

    Raises:
        ValueError: If the template does not render the assistant's answer, or no end-of-turn token can be found.
    """
    family = get_family(family) if isinstance(family, str) else family
    frames = [np.zeros((4, 4, 3), np.uint8)] * 2
    messages = build_messages(family, "Q", frames, _PROBE_ANSWER)
    full = processor.apply_chat_template(messages, tokenize=False)
    prompt = processor.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    if full.count(_PROBE_ANSWER) != 1:
        raise ValueError("the processor's chat template does not render the assistant's answer (exactly once)")
    head, after = full.split(_PROBE_ANSWER)
    # Where the template's assistant header differs from its generation prompt, the answer follows the prompt as is.
    separator = head[len(prompt) :] if head.startswith(prompt) else ""
    tokenizer = processor.tokenizer
    specials = sorted(set(tokenizer.all_special_tokens), key=len, reverse=True)
    end = next((t for t in specials if after.lstrip().startswith(t)), None) or tokenizer.eos_token
    if not end:
        raise ValueError("no end-of-turn token: the template writes none after the answer, the tokenizer has no EOS")
    return AnswerFormat(separator, end)


def _visuals(conversation: list[dict]) -> tuple[list, list]:
    images, videos = [], []
    for message in conversation:
        for block in message["content"]:
            if block["type"] == "image":
                images.append(block["image"])
            elif block["type"] == "video":
                videos.append(block["video"])
    return images, videos


def _shifted(char: int, replacements: list[dict]) -> int:
    # The processor expands each visual placeholder into many tokens: move a character position of the rendered text
    # past the expansions before it (the same arithmetic as transformers' assistant masks).
    ends = [r["span"][1] for r in replacements]
    gained = [0] + [r["new_span"][1] - r["span"][1] for r in replacements]
    return char + gained[bisect.bisect_right(ends, char)]


class OverlongSampleError(ValueError):
    """A sample is longer than ``max_length`` after visual-token expansion and ``on_overlong`` is ``"error"``."""


def row_messages(row: dict, family: Family | str) -> list[dict]:
    """The chat messages of one dataset row: question, frames (with their dates for a sequence) and the answer.

    A pair row (CONTRACTS.md §2) holds 2 frames; a ``sequences`` row holds N frames and their ``timestamps``, which
    the prompt gives as dates (``families.build_messages``).

    Raises:
        ValueError: If the row lacks frames or a human + gpt conversation (the message names the row id).
    """
    row_id = row.get("id", "?")
    conversations = row.get("conversations") or []
    if len(conversations) < 2 or conversations[0].get("from") != "human" or conversations[1].get("from") != "gpt":
        raise ValueError(f"row {row_id!r}: conversations must start with a human turn then a gpt turn")
    frames = row.get("frames")
    timestamps = row.get("timestamps")
    if timestamps is None and (frames is None or len(frames) != 2):
        raise ValueError(f"row {row_id!r}: frames must hold 2 images, got {None if frames is None else len(frames)}")
    if timestamps is not None and (frames is None or len(frames) != len(timestamps)):
        got = None if frames is None else len(frames)
        raise ValueError(f"row {row_id!r}: frames must hold one image per timestamp ({len(timestamps)}), got {got}")
    question = strip_visual_placeholder(conversations[0]["value"])
    try:
        return build_messages(family, question, frames, conversations[1]["value"], dates=timestamps)
    except ValueError as error:
        raise ValueError(f"row {row_id!r}: {error}") from error


def _as_tensor(value) -> torch.Tensor:
    """A processor output as one tensor: tensors as they are, lists of same-shape tensors stacked, lists of ints."""
    if torch.is_tensor(value):
        return value
    if isinstance(value, list | tuple) and value and all(torch.is_tensor(v) for v in value):
        return torch.stack(list(value))
    return torch.as_tensor(np.asarray(value))


def _one_clip(clips: list[torch.Tensor]) -> torch.Tensor:
    """Clips of different lengths as one clip of all their frames, ``(1, total frames, C, H, W)``.

    The families that take a sequence as a clip (LLaVA-NeXT-Video, Video-LLaVA) encode each frame on its own, and
    the model fills the batch's video placeholders in order: each row's placeholders get its own frames' features,
    exactly as in a batch of one.
    """
    return torch.cat(list(clips))[None]


class VideoSFTCollator:
    """Collate dataset rows into ``input_ids``, ``attention_mask``, visual inputs and ``labels``.

    Labels are ``-100`` on the prompt (the generation prompt, visual tokens included) and on padding, so the loss is
    on the answer and its end-of-turn token only (see the module docstring; no ``{% generation %}`` block needed).

    A sample longer than ``max_length`` (counted after the processor expands the visual placeholders) is never cut:
    with ``on_overlong="error"`` the batch fails naming the row id; with ``"skip"`` the sample is dropped from its
    batch and counted in :attr:`n_skipped` (:attr:`skipped_ids` names them).

    Attributes:
        n_skipped: Over-long samples dropped so far.
        skipped_ids: Their row ids (or batch positions when rows have no id).
        n_samples: Samples returned so far.
        n_tokens: Non-padding tokens returned so far (for tokens/s).
    """

    def __init__(self, processor, family: Family | str, on_overlong: str = "error", max_length: int | None = None):
        """Create the collator.

        Args:
            processor: The model's processor, with its chat template (published or the project's).
            family: The model family (how a pair's two frames, or a sequence's N frames, are given).
            on_overlong: ``"error"`` or ``"skip"``.
            max_length: Maximum tokens per sample after visual expansion; ``None`` = no limit.
        """
        if on_overlong not in ("error", "skip"):
            raise ValueError(f"on_overlong {on_overlong!r}: choose 'error' or 'skip'")
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length {max_length!r}: must be >= 1 or None")
        self.processor = processor
        self.family = get_family(family) if isinstance(family, str) else family
        ensure_chat_template(processor, self.family.name)
        self.on_overlong = on_overlong
        self.max_length = max_length
        self.n_skipped = 0
        self.skipped_ids: list[str] = []
        self.n_samples = 0
        self.n_tokens = 0
        self._format: tuple[str, AnswerFormat] | None = None

    def _encode(self, conversations: list[list[dict]]) -> dict:
        """Tokenize ``generation prompt + separator + answer + end of turn`` per row, with the answer's labels mask.

        No return_tensors: the processor still returns tensors for the model inputs, while the offsets stay Python
        lists, which are walked about twice as fast as tensors.
        """
        template = self.processor.chat_template
        if self._format is None or self._format[0] != template:
            self._format = (template, answer_format(self.processor, self.family))
        fmt = self._format[1]
        prompts = self.processor.apply_chat_template(
            [c[:-1] for c in conversations], tokenize=False, add_generation_prompt=True
        )
        answers = [c[-1]["content"][0]["text"] for c in conversations]
        texts = [p + fmt.separator + a + fmt.end_of_turn for p, a in zip(prompts, answers, strict=True)]
        images, videos = zip(*(_visuals(c) for c in conversations), strict=True)
        bos = self.processor.tokenizer.bos_token
        # Clips of different lengths (a batch of sequences) cannot be stacked: the processor returns them as a list.
        mixed_clips = len({len(clip) for row_videos in videos for clip in row_videos}) > 1
        enc = self.processor(
            text=texts,
            images=list(images) if any(images) else None,
            videos=list(videos) if any(videos) else None,
            padding=True,
            padding_side="right",
            return_offsets_mapping=True,
            return_text_replacement_offsets=True,
            add_special_tokens=not (bos and texts[0].startswith(bos)),
            **({"return_tensors": None} if mixed_clips else {}),
        )
        if mixed_clips:
            enc["pixel_values_videos"] = _one_clip(enc["pixel_values_videos"])
        offsets = enc.pop("offset_mapping")
        replacements = enc.pop("text_replacement_offsets", None) or [[] for _ in texts]
        answer_masks = []
        for prompt, row_offsets, row_replacements in zip(prompts, offsets, replacements, strict=True):
            start = _shifted(len(prompt), row_replacements)
            if any(a < start < b for a, b in row_offsets):
                raise ValueError("a token spans the end of the generation prompt and the answer: cannot split them")
            answer_masks.append([int(a >= start and b > a) for a, b in row_offsets])
        out = {key: _as_tensor(value) for key, value in enc.items()}
        out["answer_mask"] = torch.tensor(answer_masks)
        return out

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        """Collate a batch of rows.

        Raises:
            OverlongSampleError: If a sample exceeds ``max_length`` and ``on_overlong`` is ``"error"``, or every sample
                of the batch was skipped.
            ValueError: If a row is malformed (the message names it).
        """
        ids = [str(row.get("id", f"#{i}")) for i, row in enumerate(rows)]
        conversations = [row_messages(row, self.family) for row in rows]
        enc = self._encode(conversations)
        if self.max_length is not None:
            lengths = enc["attention_mask"].sum(dim=1).tolist()
            long = [i for i, n in enumerate(lengths) if n > self.max_length]
            if long:
                details = ", ".join(f"{ids[i]!r} ({lengths[i]} tokens)" for i in long)
                if self.on_overlong == "error":
                    raise OverlongSampleError(
                        f"max_length {self.max_length}: sample(s) {details} are longer after visual-token expansion; "
                        "samples are never truncated: raise max_length or set on_overlong: skip"
                    )
                self.n_skipped += len(long)
                self.skipped_ids.extend(ids[i] for i in long)
                logger.warning(
                    "skipped %d over-long sample(s): %s (total skipped %d)", len(long), details, self.n_skipped
                )
                dropped = set(long)
                kept = [c for i, c in enumerate(conversations) if i not in dropped]
                if not kept:
                    raise OverlongSampleError(
                        f"max_length {self.max_length}: every sample of the batch is longer ({details})"
                    )
                enc = self._encode(kept)
        answer = enc.pop("answer_mask")
        labels = enc["input_ids"].clone()
        labels[(answer == 0) | (enc["attention_mask"] == 0)] = IGNORE_INDEX
        if not (labels != IGNORE_INDEX).any(dim=1).all():
            raise ValueError("no answer token is supervised in a sample: is an answer empty?")
        enc["labels"] = labels
        self.n_samples += labels.shape[0]
        self.n_tokens += int(enc["attention_mask"].sum())
        return dict(enc)
