"""The video collator: dataset rows -> model inputs with labels on the answer only, never truncated.

TRL has no video path, so ``SFTTrainer`` gets the raw rows (``remove_unused_columns=False``, dataset preparation
skipped) and this collator builds everything: the chat messages (``trainer.models.families.build_messages``, the one
place rows become messages), the processor call with the assistant mask, and the labels.
"""

import logging

import numpy as np
import torch

from dataset_builder.prompts import strip_visual_placeholder
from trainer.models.families import Family, build_messages, get_family


logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


class OverlongSampleError(ValueError):
    """A sample is longer than ``max_length`` after visual-token expansion and ``on_overlong`` is ``"error"``."""


def row_messages(row: dict, family: Family | str) -> list[dict]:
    """The chat messages of one dataset row (CONTRACTS.md §2): question, both frames and the answer.

    Raises:
        ValueError: If the row lacks frames or a human + gpt conversation (the message names the row id).
    """
    row_id = row.get("id", "?")
    conversations = row.get("conversations") or []
    if len(conversations) < 2 or conversations[0].get("from") != "human" or conversations[1].get("from") != "gpt":
        raise ValueError(f"row {row_id!r}: conversations must start with a human turn then a gpt turn")
    frames = row.get("frames")
    if frames is None or len(frames) != 2:
        raise ValueError(f"row {row_id!r}: frames must hold 2 images, got {None if frames is None else len(frames)}")
    question = strip_visual_placeholder(conversations[0]["value"])
    try:
        return build_messages(family, question, frames, conversations[1]["value"])
    except ValueError as error:
        raise ValueError(f"row {row_id!r}: {error}") from error


def _as_tensor(value) -> torch.Tensor:
    """A processor output as one tensor: tensors as they are, lists of same-shape tensors stacked, lists of ints."""
    if torch.is_tensor(value):
        return value
    if isinstance(value, list | tuple) and value and all(torch.is_tensor(v) for v in value):
        return torch.stack(list(value))
    return torch.as_tensor(np.asarray(value))


class VideoSFTCollator:
    """Collate dataset rows into ``input_ids``, ``attention_mask``, visual inputs and ``labels``.

    Labels are ``-100`` on the prompt, the visual tokens and padding (everything outside the chat template's
    ``{% generation %}`` block), so the loss is on the answer and its end-of-sequence token only.

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
            processor: The model's processor; its chat template must mark the answer with ``{% generation %}``.
            family: The model family (how the two frames are given).
            on_overlong: ``"error"`` or ``"skip"``.
            max_length: Maximum tokens per sample after visual expansion; ``None`` = no limit.
        """
        if on_overlong not in ("error", "skip"):
            raise ValueError(f"on_overlong {on_overlong!r}: choose 'error' or 'skip'")
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length {max_length!r}: must be >= 1 or None")
        self.processor = processor
        self.family = get_family(family) if isinstance(family, str) else family
        self.on_overlong = on_overlong
        self.max_length = max_length
        self.n_skipped = 0
        self.skipped_ids: list[str] = []
        self.n_samples = 0
        self.n_tokens = 0

    def _encode(self, conversations: list[list[dict]]) -> dict:
        # No return_tensors: the processor still returns tensors for the model inputs, while the assistant mask and
        # the offsets it is computed from stay Python lists; transformers walks those token by token, about twice
        # as fast over lists as over tensors (the whole collator: ~140 -> ~280 samples/s at 336 px).
        enc = self.processor.apply_chat_template(
            conversations,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
            processor_kwargs={"padding": True, "padding_side": "right"},
        )
        return {key: _as_tensor(value) for key, value in enc.items()}

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
        assistant = enc.pop("assistant_masks")
        labels = enc["input_ids"].clone()
        labels[(assistant == 0) | (enc["attention_mask"] == 0)] = IGNORE_INDEX
        if not (labels != IGNORE_INDEX).any(dim=1).all():
            raise ValueError(
                "no answer token is supervised: the processor's chat template has no {% generation %} block around "
                "the assistant turn; set chat_template_path to a template that has one (see docs/training.md)"
            )
        enc["labels"] = labels
        self.n_samples += labels.shape[0]
        self.n_tokens += int(enc["attention_mask"].sum())
        return dict(enc)
