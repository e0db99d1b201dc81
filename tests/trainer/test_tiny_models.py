import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from dataset_builder.prompts import PROMPT_TEMPLATES
from trainer.models.chat_templates import ensure_chat_template
from trainer.models.families import FAMILIES, build_messages, family_of, get_family
from trainer.tiny.build import build_tiny_model, build_tokenizer, main, tokenizer_corpus
from trainer.training.collator import IGNORE_INDEX, VideoSFTCollator


CORPUS = [
    *PROMPT_TEMPLATES,
    "The first image shows farmland and a river. The second image shows the same farmland.",
    "A new building was built in the north-east. A road was widened in the south.",
]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def tiny(request, tmp_path_factory):
    out = build_tiny_model(request.param, tmp_path_factory.mktemp(request.param), corpus=CORPUS)
    return request.param, out


def _frames(seed=0):
    rng = np.random.default_rng(seed)
    # Two sizes on purpose: build_messages brings the later frame to the earlier one's size.
    return [rng.integers(0, 255, (70, 90, 3), dtype=np.uint8), rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)]


def test_family_saves_loads_and_generates(tiny):
    name, path = tiny
    model = AutoModelForImageTextToText.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    ensure_chat_template(processor, name)
    assert type(model).__name__ == FAMILIES[name].model_class
    assert family_of(model) is get_family(name)
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    messages = build_messages(name, "Describe the satellite video.", _frames())
    enc = processor.apply_chat_template(
        [messages], add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        logits = model(**enc).logits
    assert logits.shape[:2] == enc["input_ids"].shape
    assert torch.isfinite(logits).all()
    out = model.generate(**enc, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == enc["input_ids"].shape[1] + 4 or out[0, -1] == processor.tokenizer.eos_token_id


def test_reloaded_model_is_bit_identical(tiny):
    _, path = tiny
    a = AutoModelForImageTextToText.from_pretrained(path)
    b = AutoModelForImageTextToText.from_pretrained(path)
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), name


def test_labels_cover_answer_and_end_of_turn_only(tiny):
    name, path = tiny
    processor = AutoProcessor.from_pretrained(path)
    answer = "A new building was built in the north-east."
    conversations = [{"from": "human", "value": "Describe the satellite video."}, {"from": "gpt", "value": answer}]
    batch = VideoSFTCollator(processor, name)([{"id": "r", "frames": _frames(), "conversations": conversations}])
    supervised = batch["input_ids"][0][batch["labels"][0] != IGNORE_INDEX]
    assert processor.tokenizer.decode(supervised).strip() == answer + processor.tokenizer.eos_token
    # The answer decodes back exactly: captions are never mangled by the tokenizer.
    assert processor.tokenizer.decode(supervised[:-1]).strip() == answer


def test_visual_layout_per_family(tiny):
    name, path = tiny
    processor = AutoProcessor.from_pretrained(path)
    ensure_chat_template(processor, name)
    messages = build_messages(name, "What changed?", _frames())
    enc = processor.apply_chat_template([messages], tokenize=True, return_dict=True, return_tensors="pt")
    if FAMILIES[name].visual == "video":
        assert enc["pixel_values_videos"].shape[1] == 2  # one clip of two frames
    elif "image_grid_thw" in enc:
        assert enc["image_grid_thw"].shape[0] == 2  # two separate images
    else:
        assert enc["pixel_values"].shape[0] == 2  # two separate images


def test_tokenizer_keeps_corpus_words_whole():
    tok = build_tokenizer(CORPUS * 20, vocab_size=512)
    ids = tok("A new building was built in the north-east.")["input_ids"]
    assert len(ids) <= 12
    assert tok.decode(ids) == "A new building was built in the north-east."


def test_cli_writes_a_loadable_model(tmp_path, capsys):
    main(["--family", "llava-next-video", "--out", str(tmp_path / "m"), "--image_size", "32"])
    info = json.loads((tmp_path / "m" / "tiny_model.json").read_text())
    assert info["family"] == "llava-next-video"
    assert info["image_size"] == 32
    assert "parameters" in capsys.readouterr().out
    AutoModelForImageTextToText.from_pretrained(tmp_path / "m")


def test_bad_family_is_refused():
    with pytest.raises(ValueError, match="family"):
        build_tiny_model("llava-9000", "/nonexistent")


@pytest.mark.parametrize("family", ["llava-next-video", "video-llava", "llava-onevision"])
def test_patch_size_sets_the_visual_grid(tmp_path, family):
    path = build_tiny_model(family, tmp_path / "m", image_size=64, patch_size=16, corpus=CORPUS)
    model = AutoModelForImageTextToText.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    ensure_chat_template(processor, family)
    assert model.config.vision_config.patch_size == 16
    assert json.loads((path / "tiny_model.json").read_text())["patch_size"] == 16
    enc = processor.apply_chat_template(
        [build_messages(family, "What changed?", _frames())], tokenize=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        assert torch.isfinite(model(**enc).logits).all()  # the processor's visual tokens match the model's features


def test_patch_size_must_divide_half_the_image():
    with pytest.raises(ValueError, match="--patch_size 24"):
        main(["--family", "llava-next-video", "--out", "/nonexistent", "--image_size", "64", "--patch_size", "24"])


def test_language_and_vision_depth_and_rope_base_are_separate_options(tmp_path, capsys):
    out = tmp_path / "m"
    main(
        ["--family", "llava-next-video", "--out", str(out), "--num_layers", "3", "--vision_layers", "2"]
        + ["--rope_theta", "1e6"]
    )
    config = AutoModelForImageTextToText.from_pretrained(out).config
    assert config.text_config.num_hidden_layers == 3
    assert config.vision_config.num_hidden_layers == 2
    assert config.text_config.rope_parameters["rope_theta"] == 1e6
    info = json.loads((out / "tiny_model.json").read_text())
    assert (info["vision_layers"], info["rope_theta"]) == (2, 1e6)


def test_default_rope_base_is_the_config_class_default(tiny):
    name, path = tiny
    theta = AutoModelForImageTextToText.from_pretrained(path).config.text_config.rope_parameters["rope_theta"]
    assert theta == (1e6 if name == "qwen2.5-vl" else 10000.0)


def test_vision_tower_needs_two_layers():
    with pytest.raises(ValueError, match="--vision_layers 1"):
        main(["--family", "llava-next-video", "--out", "/nonexistent", "--vision_layers", "1"])


def test_cli_corpus_size_reaches_the_tokenizer(tmp_path, capsys):
    main(["--family", "llava-next-video", "--out", str(tmp_path / "small"), "--corpus_size", "20"])
    info = json.loads((tmp_path / "small" / "tiny_model.json").read_text())
    assert info["corpus_size"] == 20
    # 20 captions hold fewer distinct words than the 3,000 of the default corpus.
    assert info["vocab_size"] < len(build_tokenizer(tokenizer_corpus(3000), vocab_size=1024))
