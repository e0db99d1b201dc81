"""Batched greedy generation with left padding equals one-by-one generation, for every family."""

import numpy as np
import pytest
import torch

from dataset_builder.prompts import PROMPT_TEMPLATES
from trainer.evaluation.generation import encode_batch, generate_batch
from trainer.models.families import FAMILIES
from trainer.models.loading import load_for_inference
from trainer.tiny.build import build_tiny_model


CORPUS = [*PROMPT_TEMPLATES, "A new building was built in the north-east. Nothing changed. A road was widened."]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def loaded(request, tmp_path_factory):
    path = build_tiny_model(request.param, tmp_path_factory.mktemp(request.param), image_size=32, corpus=CORPUS)
    return load_for_inference(path)


def _rows(n, seed=0):
    rng = np.random.default_rng(seed)
    frames = [[rng.integers(0, 255, (40, 36, 3), dtype=np.uint8) for _ in range(2)] for _ in range(n)]
    # different templates -> prompts of different lengths, so the batch really is padded
    return [PROMPT_TEMPLATES[i % len(PROMPT_TEMPLATES)] for i in range(n)], frames


def test_batch_is_left_padded(loaded):
    model, processor, family = loaded
    if family.name == "ccexpert":
        pytest.skip("CCExpert's template always shows its fixed prompt: rows of one batch have the same length")
    questions, frames = _rows(3)
    enc = encode_batch(processor, family, questions, frames)
    mask = enc["attention_mask"]
    assert (mask[:, -1] == 1).all()  # every row ends with a real token
    assert (mask == 0).any()  # and at least one row is padded, on the left
    assert (mask.sum(1) < mask.shape[1]).any()


def test_batched_greedy_equals_one_by_one(loaded):
    model, processor, family = loaded
    questions, frames = _rows(5)
    batched = generate_batch(model, processor, family, questions, frames, max_new_tokens=10)
    single = [
        generate_batch(model, processor, family, [q], [f], max_new_tokens=10)[0]
        for q, f in zip(questions, frames, strict=True)
    ]
    assert batched == single
    assert all(batched)


def test_prompt_is_not_in_the_output(loaded):
    model, processor, family = loaded
    questions, frames = _rows(1)
    enc = encode_batch(processor, family, questions, frames)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=3, do_sample=False)
    new = processor.tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    assert generate_batch(model, processor, family, questions, frames, max_new_tokens=3) == [new]


def test_mismatched_inputs_and_empty_batch():
    with pytest.raises(ValueError, match="2 questions but 1 frame lists"):
        encode_batch(None, "llava-next-video", ["a", "b"], [[None, None]])
    assert generate_batch(None, None, "llava-next-video", [], []) == []
