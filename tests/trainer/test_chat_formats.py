"""The four families' published prompt formats, and answer-only labels that end with the end-of-turn token.

Each tiny model carries its family's real special tokens and its checkpoint's published template (Video-LLaVA's
publishes none); each template copy renders the strings transformers' tests and docs publish for the same messages,
and the collator supervises exactly the answer + end-of-turn tokens, token for token, whatever ``{% generation %}``
markers the template has or lacks.
"""

import json

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
from trainer.tiny.tokenizer import build_tokenizer
from trainer.training.collator import IGNORE_INDEX, AnswerFormat, VideoSFTCollator, answer_format


QUESTION = "What changed between the two images?"
ANSWER = "A new road was built in the north."
CORPUS = [*PROMPT_TEMPLATES, QUESTION, ANSWER, "USER: ASSISTANT:", "user assistant system"]
QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
# The documented generation prompts (model docs / processor tests / convert scripts, see chat_templates.py).
PROMPTS = {
    "llava-next-video": f"USER: <video>\n{QUESTION} ASSISTANT:",
    "video-llava": f"USER: <video>\n{QUESTION} ASSISTANT:",
    "llava-onevision": f"<|im_start|>user <video>\n{QUESTION}<|im_end|><|im_start|>assistant\n",
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


# LLaVA-OneVision's chat template as transformers' tests/models/llava_onevision/test_processor_llava_onevision.py
# writes it (`prepare_processor_dict`), transcribed on one line as it stands there: a raw string, so its three
# Jinja escapes stay the two characters `\n` that its source writes as '\\n'.
ONEVISION_PUBLISHED = r"{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}{# Render all video then #}{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\n' + content['text'] }}{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{% generation %}{{ '\n' + content['text'] }}{% endgeneration %}{% endfor %}{% endif %}{{'<|im_end|>'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"  # noqa: E501


def _user(visual: str, text: str) -> dict:
    return {"role": "user", "content": [{"type": visual}, {"type": "text", "text": text}]}


def _assistant(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


IMAGE_Q, VIDEO_Q = "What is shown in this image?", "What is shown in this video?"
# Qwen2-VL's multi-turn example in transformers' docs/source/en/model_doc/qwen2_vl.md ("Multiple Image Inputs").
QWEN_DOCS_CONVERSATION = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hello, how are you?"}]},
    {"role": "assistant", "content": "I'm doing well, thank you for asking. How can I assist you today?"},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "Can you describe these images and video?"},
            {"type": "image"},
            {"type": "image"},
            {"type": "video"},
            {"type": "text", "text": "These are from my vacation."},
        ],
    },
    {
        "role": "assistant",
        "content": "I'd be happy to describe the images and video for you. Could you please provide more context "
        "about your vacation?",
    },
    {"role": "user", "content": "It was a trip to the mountains. Can you see the details in the images and video?"},
]
QWEN_DOCS_RENDERED = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|>"
    "<|vision_end|>Hello, how are you?<|im_end|>\n<|im_start|>assistant\nI'm doing well, thank you for asking. How "
    "can I assist you today?<|im_end|>\n<|im_start|>user\nCan you describe these images and video?<|vision_start|>"
    "<|image_pad|><|vision_end|><|vision_start|><|image_pad|><|vision_end|><|vision_start|><|video_pad|><|vision_end|>"
    "These are from my vacation.<|im_end|>\n<|im_start|>assistant\nI'd be happy to describe the images and video for "
    "you. Could you please provide more context about your vacation?<|im_end|>\n<|im_start|>user\nIt was a trip to "
    "the mountains. Can you see the details in the images and video?<|im_end|>\n<|im_start|>assistant\n"
)
# The docs' second expected output, with add_vision_id=True.
QWEN_DOCS_RENDERED_WITH_IDS = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nPicture 1: <|vision_start|>"
    "<|image_pad|><|vision_end|>Hello, how are you?<|im_end|>\n<|im_start|>assistant\nI'm doing well, thank you for "
    "asking. How can I assist you today?<|im_end|>\n<|im_start|>user\nCan you describe these images and video?"
    "Picture 2: <|vision_start|><|image_pad|><|vision_end|>Picture 3: <|vision_start|><|image_pad|><|vision_end|>"
    "Video 1: <|vision_start|><|video_pad|><|vision_end|>These are from my vacation.<|im_end|>\n<|im_start|>assistant"
    "\nI'd be happy to describe the images and video for you. Could you please provide more context about your "
    "vacation?<|im_end|>\n<|im_start|>user\nIt was a trip to the mountains. Can you see the details in the images and "
    "video?<|im_end|>\n<|im_start|>assistant\n"
)
# (family, messages, add_generation_prompt, the published rendering). Where each string comes from:
#   llava-next-video, generation: tests/models/llava_next_video/test_processor_llava_next_video.py, test_chat_template
#     (image) and test_chat_template_dict, whose expected ids decode to "<s>" + the video string (the BOS is the
#     tokenizer's), both from llava-hf/LLaVA-NeXT-Video-7B-hf;
#   llava-onevision, generation: tests/models/llava_onevision/test_processor_llava_onevision.py, test_chat_template
#     (image) and test_chat_template_dict (ids [151644, 872, 220, 151647, 198, ..., 151645, 151644, 77091, 198]:
#     "<|im_start|>", "user", " ", "<video>", "\n", ..., "<|im_end|>", "<|im_start|>", "assistant", "\n"), both from
#     llava-hf/llava-onevision-qwen2-7b-ov-hf;
#   qwen2.5-vl: the docs' multi-turn example above, and the same string cut after the first answer for the training
#     conversation (the template renders turn by turn);
#   llava-next-video and llava-onevision, training conversation: no rendering is published; the strings are written
#     out from the published templates' text ("ASSISTANT: " + answer + " "; "<|im_start|>assistant " + "\n" + answer
#     + "<|im_end|>").
PUBLISHED_RENDERINGS = [
    ("llava-next-video", [_user("image", IMAGE_Q)], True, f"USER: <image>\n{IMAGE_Q} ASSISTANT:"),
    ("llava-next-video", [_user("video", VIDEO_Q)], True, f"USER: <video>\n{VIDEO_Q} ASSISTANT:"),
    (
        "llava-next-video",
        [_user("video", QUESTION), _assistant(ANSWER)],
        False,
        f"USER: <video>\n{QUESTION} ASSISTANT: {ANSWER} ",
    ),
    (
        "llava-onevision",
        [_user("image", IMAGE_Q)],
        True,
        f"<|im_start|>user <image>\n{IMAGE_Q}<|im_end|><|im_start|>assistant\n",
    ),
    (
        "llava-onevision",
        [_user("video", VIDEO_Q)],
        True,
        f"<|im_start|>user <video>\n{VIDEO_Q}<|im_end|><|im_start|>assistant\n",
    ),
    (
        "llava-onevision",
        [_user("video", QUESTION), _assistant(ANSWER)],
        False,
        f"<|im_start|>user <video>\n{QUESTION}<|im_end|><|im_start|>assistant \n{ANSWER}<|im_end|>",
    ),
    ("qwen2.5-vl", QWEN_DOCS_CONVERSATION, True, QWEN_DOCS_RENDERED),
    (
        "qwen2.5-vl",
        QWEN_DOCS_CONVERSATION[:2],
        False,
        QWEN_DOCS_RENDERED[: QWEN_DOCS_RENDERED.index("<|im_end|>", QWEN_DOCS_RENDERED.index("I'm doing")) + 11],
    ),
]


def _frames(size: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(2)]


def _row(size: int) -> dict:
    conversations = [{"from": "human", "value": QUESTION + "\n<video>"}, {"from": "gpt", "value": ANSWER}]
    return {"id": "pair_0", "frames": _frames(size), "conversations": conversations}


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(CORPUS)


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


def test_the_onevision_template_is_the_published_one(tokenizer):
    copy = PUBLISHED_TEMPLATES["llava-onevision"]
    # the published string, its three Jinja escapes read as the newlines Jinja reads them as
    assert ONEVISION_PUBLISHED.count("\\n") == 3 and copy == ONEVISION_PUBLISHED.replace("\\n", "\n")
    # as save_pretrained writes the checkpoint's chat_template.json (the conversion script's template gives 824)
    assert len(json.dumps({"chat_template": copy}, indent=2)) + 1 == 826
    conversation = [_user("video", QUESTION), _assistant(ANSWER), _user("image", IMAGE_Q)]
    for generation in (False, True):
        rendered = [
            tokenizer.apply_chat_template(
                conversation, chat_template=template, tokenize=False, add_generation_prompt=generation
            )
            for template in (copy, ONEVISION_PUBLISHED)
        ]
        assert rendered[0] == rendered[1]


@pytest.mark.parametrize(
    ("name", "messages", "generation", "expected"),
    PUBLISHED_RENDERINGS,
    ids=[f"{case[0]}-{'generation' if case[2] else 'training'}-{i}" for i, case in enumerate(PUBLISHED_RENDERINGS)],
)
def test_each_template_copy_renders_the_published_strings(name, messages, generation, expected, tokenizer):
    # The template alone decides the text: rendered through a tokenizer, with the messages exactly as published.
    rendered = tokenizer.apply_chat_template(
        messages, chat_template=PUBLISHED_TEMPLATES[name], tokenize=False, add_generation_prompt=generation
    )
    assert rendered == expected


def test_qwen_template_numbers_the_visuals_as_the_docs_show(tokenizer):
    rendered = tokenizer.apply_chat_template(
        QWEN_DOCS_CONVERSATION,
        chat_template=PUBLISHED_TEMPLATES["qwen2.5-vl"],
        tokenize=False,
        add_generation_prompt=True,
        add_vision_id=True,
    )
    assert rendered == QWEN_DOCS_RENDERED_WITH_IDS


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
