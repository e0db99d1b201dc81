"""VideoSFTCollator: labels are -100 exactly outside the answer, for every family; over-long samples never cut."""

import numpy as np
import pytest
import torch
from transformers import AutoProcessor

from dataset_builder.prompts import PROMPT_TEMPLATES
from trainer.models.families import FAMILIES
from trainer.tiny.build import build_tiny_model
from trainer.training.collator import IGNORE_INDEX, OverlongSampleError, VideoSFTCollator


CAPTIONS = [
    "A new building was built in the north-east.",
    "A road was widened in the south, and the forest was cleared in the west of the site.",
    "No change is visible.",
]
CORPUS = [*PROMPT_TEMPLATES, *CAPTIONS, "USER: ASSISTANT:", "user assistant system"]


def make_rows(n, size=32, seed=0):
    rng = np.random.default_rng(seed)
    return [
        {
            "id": f"pair_{i}",
            "frames": [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(2)],
            "conversations": [
                {"from": "human", "value": PROMPT_TEMPLATES[i % len(PROMPT_TEMPLATES)] + "\n<video>"},
                {"from": "gpt", "value": CAPTIONS[i % len(CAPTIONS)]},
            ],
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_processor(request, tmp_path_factory):
    # Qwen2.5-VL needs image sides that are multiples of 28 (patch 14 x merge 2).
    size = 56 if request.param == "qwen2.5-vl" else 32
    path = build_tiny_model(
        request.param, tmp_path_factory.mktemp(request.param), image_size=64 if size == 56 else 32, corpus=CORPUS
    )
    return request.param, AutoProcessor.from_pretrained(path), size


def test_labels_supervise_exactly_the_answer_and_eos(family_processor):
    family, processor, size = family_processor
    rows = make_rows(3, size)
    batch = VideoSFTCollator(processor, family)(rows)
    tok = processor.tokenizer
    assert set(batch) >= {"input_ids", "attention_mask", "labels"}
    assert "assistant_masks" not in batch
    labels, ids, attention = batch["labels"], batch["input_ids"], batch["attention_mask"]
    visual_ids = {
        i for i in (getattr(tok, "image_token_id", None), getattr(tok, "video_token_id", None)) if i is not None
    }
    visual_ids |= {tok.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>") if t in tok.get_vocab()}
    for row, row_ids, row_labels, row_attention in zip(rows, ids, labels, attention, strict=True):
        supervised = row_labels != IGNORE_INDEX
        # Supervised labels equal the input ids (no shift in the collator: the model shifts).
        assert torch.equal(row_labels[supervised], row_ids[supervised])
        # Exactly the answer and the end-of-sequence token, one contiguous span.
        assert tok.decode(row_ids[supervised]).strip() == row["conversations"][1]["value"] + tok.eos_token
        positions = supervised.nonzero().squeeze(1)
        assert int(positions[-1] - positions[0]) + 1 == len(positions)
        # Never on padding, never on visual tokens; and the visual tokens are all present.
        assert not supervised[row_attention == 0].any()
        visual = torch.isin(row_ids, torch.tensor(sorted(visual_ids)))
        assert visual.sum() > 0
        assert not supervised[visual].any()
        # Everything before the answer (the prompt) is masked.
        assert (row_labels[: positions[0]] == IGNORE_INDEX).all()


def test_right_padding_and_counters(family_processor):
    family, processor, size = family_processor
    collator = VideoSFTCollator(processor, family)
    rows = make_rows(3, size)
    batch = collator(rows)
    attention = batch["attention_mask"]
    # Right padding: every row's ones come first.
    for row in attention:
        n = int(row.sum())
        assert row[:n].all() and not row[n:].any()
    assert collator.n_samples == 3
    assert collator.n_tokens == int(attention.sum())


@pytest.fixture(scope="module")
def lnv_processor(tmp_path_factory):
    path = build_tiny_model("llava-next-video", tmp_path_factory.mktemp("lnv"), image_size=32, corpus=CORPUS)
    return AutoProcessor.from_pretrained(path)


def _lengths(processor, rows):
    batch = VideoSFTCollator(processor, "llava-next-video")(rows)
    return batch["attention_mask"].sum(dim=1).tolist(), batch


def test_max_length_never_truncates(lnv_processor):
    rows = make_rows(3)
    lengths, full = _lengths(lnv_processor, rows)
    collator = VideoSFTCollator(lnv_processor, "llava-next-video", max_length=max(lengths))
    batch = collator(rows)
    assert torch.equal(batch["input_ids"], full["input_ids"])
    assert torch.equal(batch["labels"], full["labels"])


def test_overlong_error_names_the_row(lnv_processor):
    rows = make_rows(3)
    lengths, _ = _lengths(lnv_processor, rows)
    longest = int(np.argmax(lengths))
    collator = VideoSFTCollator(lnv_processor, "llava-next-video", max_length=max(lengths) - 1)
    with pytest.raises(OverlongSampleError, match=rf"pair_{longest}.*never truncated"):
        collator(rows)


def test_overlong_skip_drops_and_counts(lnv_processor):
    rows = make_rows(3)
    lengths, full = _lengths(lnv_processor, rows)
    limit = sorted(lengths)[1]  # the longest one is over
    long = [i for i, n in enumerate(lengths) if n > limit]
    collator = VideoSFTCollator(lnv_processor, "llava-next-video", on_overlong="skip", max_length=limit)
    batch = collator(rows)
    kept = [i for i in range(3) if i not in long]
    assert batch["input_ids"].shape[0] == len(kept)
    assert collator.n_skipped == len(long) and collator.skipped_ids == [f"pair_{i}" for i in long]
    # The kept samples are whole: their supervised tokens are their full answers.
    tok = lnv_processor.tokenizer
    for row_index, labels in zip(kept, batch["labels"], strict=True):
        answer = tok.decode(labels[labels != IGNORE_INDEX]).strip()
        assert answer == rows[row_index]["conversations"][1]["value"] + tok.eos_token
    collator(rows)
    assert collator.n_skipped == 2 * len(long)


def test_whole_batch_overlong_raises_even_when_skipping(lnv_processor):
    collator = VideoSFTCollator(lnv_processor, "llava-next-video", on_overlong="skip", max_length=4)
    with pytest.raises(OverlongSampleError, match="every sample"):
        collator(make_rows(2))
    assert collator.n_skipped == 2


def test_bad_rows_are_named(lnv_processor):
    collator = VideoSFTCollator(lnv_processor, "llava-next-video")
    row = make_rows(1)[0]
    with pytest.raises(ValueError, match="pair_0.*2 images"):
        collator([{**row, "frames": row["frames"][:1]}])
    with pytest.raises(ValueError, match="pair_0.*human turn then a gpt turn"):
        collator([{**row, "conversations": row["conversations"][::-1]}])
    with pytest.raises(ValueError, match="on_overlong"):
        VideoSFTCollator(lnv_processor, "llava-next-video", on_overlong="truncate")


def test_template_without_generation_block_gives_the_same_labels(lnv_processor):
    rows = make_rows(2)
    template = lnv_processor.chat_template
    assert "{% generation %}" in template
    marked = VideoSFTCollator(lnv_processor, "llava-next-video")(rows)
    try:
        lnv_processor.chat_template = template.replace("{% generation %}", "").replace("{% endgeneration %}", "")
        plain = VideoSFTCollator(lnv_processor, "llava-next-video")(rows)
    finally:
        lnv_processor.chat_template = template
    assert torch.equal(marked["input_ids"], plain["input_ids"]) and torch.equal(marked["labels"], plain["labels"])
