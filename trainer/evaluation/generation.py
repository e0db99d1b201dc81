"""Batched generation with left padding: the same prompt format as training, greedy by default.

With left padding every row's last prompt token sits at the end of the batch, so a batch generates exactly what each
row would alone under greedy decoding; right padding would not (docs/evaluation.md). The inputs follow the model:
they are moved to its device, pixel values cast to its dtype (:func:`trainer.models.device.move_inputs`).
"""

import logging
from collections.abc import Sequence

import torch

from trainer.models.chat_templates import ensure_chat_template
from trainer.models.device import move_inputs
from trainer.models.families import Family, build_messages


logger = logging.getLogger(__name__)


def encode_batch(
    processor,
    family: Family | str,
    questions: Sequence[str],
    frames: Sequence[Sequence],
    dates: Sequence[Sequence[str] | None] | None = None,
) -> dict:
    """Chat-template a batch of (question, frames) into left-padded model inputs.

    Args:
        processor: The model's processor.
        family: The model family (how it takes a pair or a sequence).
        questions: Question text of each row, without visual placeholders.
        frames: The frames of each row in time order (2 for a pair).
        dates: Each row's frame dates (a sequence) or ``None`` (a pair); ``None``: every row is a pair.

    Returns:
        The processor's ``BatchFeature`` (``input_ids``, ``attention_mask``, pixel values, ...).
    """
    if len(questions) != len(frames):
        raise ValueError(f"{len(questions)} questions but {len(frames)} frame lists")
    dates = [None] * len(frames) if dates is None else dates
    if len(dates) != len(frames):
        raise ValueError(f"{len(dates)} date lists but {len(frames)} frame lists")
    conversations = [build_messages(family, q, f, dates=d) for q, f, d in zip(questions, frames, dates, strict=True)]
    ensure_chat_template(processor, family if isinstance(family, str) else family.name)
    return processor.apply_chat_template(
        conversations,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs={"padding": True, "padding_side": "left"},
    )


@torch.inference_mode()
def generate_batch(
    model,
    processor,
    family: Family | str,
    questions: Sequence[str],
    frames: Sequence[Sequence],
    max_new_tokens: int = 128,
    do_sample: bool = False,
    dates: Sequence[Sequence[str] | None] | None = None,
    **generate_kwargs,
) -> list[str]:
    """Generate one answer per (question, frames) row, all rows with as many frames in one left-padded batch.

    Args:
        model: The loaded model (base or PEFT-wrapped).
        processor: Its processor.
        family: The model family.
        questions: Question text of each row.
        frames: The frames of each row (2 for a pair).
        max_new_tokens: Generation budget per row.
        do_sample: Sample instead of greedy decoding (greedy by default, as the paper's evaluation).
        dates: Each row's frame dates for a sequence (see :func:`encode_batch`).
        **generate_kwargs: Passed to ``model.generate`` (e.g. ``num_beams``, ``top_p``).

    Returns:
        The decoded answers (special tokens removed, whitespace stripped), in input order.
    """
    if not questions:
        return []
    by_length: dict[int, list[int]] = {}
    for i, row_frames in enumerate(frames):
        by_length.setdefault(len(row_frames), []).append(i)
    if len(by_length) > 1:  # a clip needs one length per batch: each frame count is its own batch
        answers: list[str] = [""] * len(questions)
        for rows in by_length.values():
            texts = generate_batch(
                model,
                processor,
                family,
                [questions[i] for i in rows],
                [frames[i] for i in rows],
                max_new_tokens,
                do_sample,
                None if dates is None else [dates[i] for i in rows],
                **generate_kwargs,
            )
            for i, text in zip(rows, texts, strict=True):
                answers[i] = text
        return answers
    inputs = move_inputs(encode_batch(processor, family, questions, frames, dates), model)
    tokenizer = processor.tokenizer
    output = model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        pad_token_id=tokenizer.pad_token_id,
        **generate_kwargs,
    )
    new_tokens = output[:, inputs["input_ids"].shape[1] :]
    return [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
