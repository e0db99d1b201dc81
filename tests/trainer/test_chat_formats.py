"""The four families' published prompt formats, and answer-only labels that end with the end-of-turn token.

Each tiny model carries its family's real special tokens and its checkpoint's published template (Video-LLaVA's
publishes none); the collator must render the documented format and supervise exactly the answer + end-of-turn
tokens, token for token, whatever ``{% generation %}`` markers the template has or lacks.
"""

import numpy as np
import pytest
import torch
from transformers import AutoProcessor

from dataset_builder.prompts import PROMPT_TEMPLATES
from trainer.evaluation.generation import encode_batch
from trainer.models.ccexpert.template import CCEXPERT_CHAT_TEMPLATE
from trainer.models.chat_templates import (
    CHATML_TEMPLATE,
    PUBLISHED_TEMPLATES,
    QWEN_TEMPLATE,
    VICUNA_TEMPLATE,
)
from trainer.models.families import build_messages
from trainer.tiny.build import build_tiny_model
from trainer.training.collator import IGNORE_INDEX, AnswerFormat, VideoSFTCollator, answer_format


QUESTION = "What changed between the two images?"
ANSWER = "A new road was built in the north."
CORPUS = [*PROMPT_TEMPLATES, QUESTION, ANSWER, "USER: ASSISTANT:", "user assistant system"]
QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
# The documented generation prompts (model docs / processor tests / convert scripts, see chat_templates.py).
PROMPTS = {
    "llava-next-video": f"USER: <video>\n{QUESTION} ASSISTANT:",
    "video-llava": f"USER: <video>\n{QUESTION} ASSISTANT:",
    "llava-onevision": f"<|im_start|>user\n<video>\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n",
    "qwen2.5-vl": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    f"<|im_start|>user\n{QWEN_IMAGE}{QWEN_IMAGE}{QUESTION}<|im_end|>\n<|im_start|>assistant\n",
}
# What follows the prompt in a training sample: the supervised text.
ANSWERS = {
    "llava-next-video": f" {ANSWER}</s>",
    "video-llava": f" {ANSWER}</s>",
    "llava-onevision": f"{ANSWER}<|im_end|>",
    "qwen2.5-vl": f"{ANSWER}<|im_end|>",
}
SPECIAL_TOKENS = {
    "llava-next-video": {"bos_token": "<s>", "eos_token": "</s>", "image_token": "<image>", "video_token": "<video>"},
    "video-llava": {"bos_token": "<s>", "eos_token": "</s>", "image_token": "<image>", "video_token": "<video>"},
    "llava-onevision": {
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "image_token": "<image>",
        "video_token": "<video>",
    },
    "qwen2.5-vl": {
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "image_token": "<|image_pad|>",
        "video_token": "<|video_pad|>",
        "vision_start_token": "<|vision_start|>",
        "vision_end_token": "<|vision_end|>",
    },
}


def _frames(size: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(2)]


def _row(size: int) -> dict:
    conversations = [{"from": "human", "value": QUESTION + "\n<video>"}, {"from": "gpt", "value": ANSWER}]
    return {"id": "pair_0", "frames": _frames(size), "conversations": conversations}


@pytest.fixture(scope="module", params=sorted(PROMPTS))
def family(request, tmp_path_factory):
    name = request.param
    qwen = name == "qwen2.5-vl"  # image sides must be multiples of 28 (patch 14 x merge 2)
    path = build_tiny_model(name, tmp_path_factory.mktemp(name), image_size=64 if qwen else 32, corpus=CORPUS)
    return name, AutoProcessor.from_pretrained(path), 56 if qwen else 32


def test_the_tiny_tokenizer_carries_the_familys_special_tokens(family):
    name, processor, _ = family
    tok = processor.tokenizer
    for role, token in SPECIAL_TOKENS[name].items():
        assert getattr(tok, role) == token, role
        if token is not None:
            assert token in tok.all_special_tokens and len(tok(token, add_special_tokens=False).input_ids) == 1
    assert processor.chat_template == PUBLISHED_TEMPLATES.get(name)  # Video-LLaVA's checkpoint publishes none


def test_the_generation_prompt_is_the_documented_format(family):
    name, processor, size = family
    VideoSFTCollator(processor, name)  # gives Video-LLaVA its documented template
    messages = build_messages(name, QUESTION, _frames(size))
    assert processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == PROMPTS[name]


def test_labels_are_the_answer_and_the_end_of_turn_token_for_token(family):
    name, processor, size = family
    tok = processor.tokenizer
    batch = VideoSFTCollator(processor, name)([_row(size)])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    supervised = labels != IGNORE_INDEX
    n_prompt = int((~supervised).sum())
    assert supervised[n_prompt:].all() and not supervised[:n_prompt].any()  # one span, at the end
    expected = tok(ANSWERS[name], add_special_tokens=False).input_ids
    assert ids[supervised].tolist() == expected
    assert tok.decode(ids[supervised]) == ANSWERS[name]
    assert expected[-1] == tok.convert_tokens_to_ids(SPECIAL_TOKENS[name]["eos_token"])
    # The unsupervised part is, token for token, what the model is given at inference (visual tokens expanded).
    prompt = encode_batch(processor, name, [QUESTION], [_frames(size)])["input_ids"][0]
    assert ids[:n_prompt].tolist() == prompt.tolist()


def test_answer_format_is_read_off_the_template(family):
    name, processor, _ = family
    VideoSFTCollator(processor, name)
    eos = SPECIAL_TOKENS[name]["eos_token"]
    assert answer_format(processor, name) == AnswerFormat(" " if eos == "</s>" else "", eos)


@pytest.mark.parametrize(
    ("name", "template"),
    [
        ("llava-next-video", VICUNA_TEMPLATE),
        ("video-llava", VICUNA_TEMPLATE),
        ("llava-onevision", CHATML_TEMPLATE),
        ("qwen2.5-vl", QWEN_TEMPLATE),
    ],
)
def test_the_projects_own_templates_keep_working(name, template, tmp_path):
    qwen = name == "qwen2.5-vl"
    path = build_tiny_model(name, tmp_path / name, image_size=64 if qwen else 32, corpus=CORPUS)
    processor = AutoProcessor.from_pretrained(path)
    processor.chat_template = template
    batch = VideoSFTCollator(processor, name)([_row(56 if qwen else 32)])
    supervised = batch["labels"][0] != IGNORE_INDEX
    end = "</s>" if "USER:" in PROMPTS[name] else "<|im_end|>"
    assert processor.tokenizer.decode(batch["input_ids"][0][supervised]).strip() == ANSWER + end


def test_ccexpert_template_supervises_the_answer_and_im_end(tmp_path):
    path = build_tiny_model("ccexpert", tmp_path / "cc", image_size=32, corpus=CORPUS)
    processor = AutoProcessor.from_pretrained(path)
    assert processor.chat_template == CCEXPERT_CHAT_TEMPLATE
    batch = VideoSFTCollator(processor, "ccexpert")([_row(32)])
    supervised = batch["labels"][0] != IGNORE_INDEX
    assert processor.tokenizer.decode(batch["input_ids"][0][supervised]) == ANSWER + "<|im_end|>"


def test_a_template_that_drops_the_answer_is_named(tmp_path):
    path = build_tiny_model("llava-next-video", tmp_path / "lnv", image_size=32, corpus=CORPUS)
    processor = AutoProcessor.from_pretrained(path)
    processor.chat_template = "{% for m in messages %}{{ m['role'] }}{% endfor %}"
    with pytest.raises(ValueError, match="does not render the assistant's answer"):
        VideoSFTCollator(processor, "llava-next-video")([_row(32)])


def test_labels_mask_padding_in_a_batch(family):
    name, processor, size = family
    short = _row(size)
    long = {**_row(size), "conversations": [short["conversations"][0], {"from": "gpt", "value": ANSWER * 3}]}
    batch = VideoSFTCollator(processor, name)([short, long])
    padding = batch["attention_mask"] == 0
    assert padding.any() and (batch["labels"][padding] == IGNORE_INDEX).all()
    eot = processor.tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS[name]["eos_token"])
    for row in range(2):  # right padding: each row's last real token is its end of turn, and it is supervised
        last = int(batch["attention_mask"][row].sum()) - 1
        assert batch["input_ids"][row][last] == eot == batch["labels"][row][last]


def test_llava_next_video_trains_on_the_same_tokens_as_with_the_projects_marked_template(tmp_path):
    # The quickstart's model: the published template and the project's template with {% generation %} around the answer
    # and </s> give the same input ids and the same labels as the assistant-mask labels the project used before.
    path = build_tiny_model("llava-next-video", tmp_path / "lnv", image_size=32, corpus=CORPUS)
    processor = AutoProcessor.from_pretrained(path)
    rows = [_row(32), {**_row(32), "conversations": [_row(32)["conversations"][0], {"from": "gpt", "value": "No."}]}]
    published = VideoSFTCollator(processor, "llava-next-video")(rows)
    processor.chat_template = VICUNA_TEMPLATE
    ours = VideoSFTCollator(processor, "llava-next-video")(rows)
    marked = processor.apply_chat_template(
        [build_messages("llava-next-video", QUESTION, r["frames"], r["conversations"][1]["value"]) for r in rows],
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        return_assistant_tokens_mask=True,
        processor_kwargs={"padding": True, "padding_side": "right"},
    )
    before = marked["input_ids"].masked_fill((marked["assistant_masks"] == 0) | (marked["attention_mask"] == 0), -100)
    assert torch.equal(published["input_ids"], ours["input_ids"]) and torch.equal(published["labels"], ours["labels"])
    assert torch.equal(published["input_ids"], marked["input_ids"]) and torch.equal(published["labels"], before)
