"""Dated sequences of N frames: each family's prompt format, visual tokens that match the model for N = 3 and 8,
answer-only labels, over-long rows never cut, and geollava-train + geollava-eval on a ``sequences`` config."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import load_dataset
from transformers import AutoModelForImageTextToText, AutoProcessor

import trainer.models.ccexpert  # noqa: F401 - registers the ccexpert family
from dataset_builder.prompts import SEQUENCE_QUESTION
from tests.trainer.helpers import sequence_row, write_sequences_dataset
from trainer.evaluation.generation import encode_batch, generate_batch
from trainer.evaluation.run_eval import main as eval_main
from trainer.models.families import build_messages, frame_dates
from trainer.sft import load_rows
from trainer.sft import main as train_main
from trainer.tiny.build import build_tiny_model
from trainer.training.collator import IGNORE_INDEX, OverlongSampleError, VideoSFTCollator
from trainer.training.config import GeoScriptArguments


ANSWER = "Between 2010-01 and 2011-02, a new road was built across the north."
CORPUS = [SEQUENCE_QUESTION, ANSWER, "Frame dates: Image USER: ASSISTANT:", "user assistant system"]
FAMILIES = ("llava-next-video", "video-llava", "llava-onevision", "qwen2.5-vl")
# Visual tokens a frame takes in the tiny models (32 px, patch 8; Qwen2.5-VL: 56 px frames, patch 14, 2 x 2 merge):
# LLaVA-NeXT-Video pools the 4 x 4 patches of a video frame 2 x 2; Video-LLaVA keeps them and the CLS token;
# LLaVA-OneVision gives each of several images its 4 x 4 patches and one newline token.
PER_FRAME = {"llava-next-video": 4, "video-llava": 17, "llava-onevision": 17, "qwen2.5-vl": 4}
PLACEHOLDER = {"llava-next-video": "<video>", "video-llava": "<video>", "llava-onevision": "<image>"}
PLACEHOLDER["qwen2.5-vl"] = "<|image_pad|>"
# The supervised text after the prompt.
ANSWERS = {"llava-next-video": f" {ANSWER}</s>", "video-llava": f" {ANSWER}</s>"}
ANSWERS |= {"llava-onevision": f"{ANSWER}<|im_end|>", "qwen2.5-vl": f"{ANSWER}<|im_end|>"}
QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
DATES = "1) 2010-01-02, 2) 2011-02-02, 3) 2012-03-02"
INTERLEAVED = "trainer/recipes/chat_templates/llava_onevision_interleaved.jinja"


def _size(family: str) -> int:
    return 56 if family == "qwen2.5-vl" else 32


def _row(i: int, n_frames: int, family: str) -> dict:
    row = sequence_row(i, n_frames, ANSWER, size=_size(family))
    row["frames"] = [np.asarray(frame) for frame in row["frames"]]
    return row


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request, tmp_path_factory):
    name = request.param
    path = build_tiny_model(
        name, tmp_path_factory.mktemp(name), image_size=64 if name == "qwen2.5-vl" else 32, corpus=CORPUS
    )
    return name, path, AutoProcessor.from_pretrained(path)


@pytest.mark.parametrize("n_frames", [3, 8])
def test_visual_tokens_match_the_model_and_labels_are_the_answer(tiny, n_frames):
    name, path, processor = tiny
    rows = [_row(0, n_frames, name), _row(1, 3, name)]
    collator = VideoSFTCollator(processor, name)
    batch = collator(rows)
    tok = processor.tokenizer
    placeholder = tok.convert_tokens_to_ids(PLACEHOLDER[name])
    ids, labels, attention = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert (ids == placeholder).sum(dim=1).tolist() == [n_frames * PER_FRAME[name], 3 * PER_FRAME[name]]
    # The model itself checks that its visual features fill exactly these tokens, and trains on them.
    model = AutoModelForImageTextToText.from_pretrained(path)
    loss = model(**batch).loss
    assert torch.isfinite(loss)
    assert (labels[ids == placeholder] == IGNORE_INDEX).all() and (labels[attention == 0] == IGNORE_INDEX).all()
    for row, row_ids, row_labels in zip(rows, ids, labels, strict=True):
        supervised = row_labels != IGNORE_INDEX
        n_prompt, n_answer = int(supervised.nonzero()[0]), int(supervised.sum())
        assert supervised[n_prompt : n_prompt + n_answer].all()  # one span
        assert tok.decode(row_ids[supervised]) == ANSWERS[name]
        # The unsupervised part is what inference gives the model for the same row (visual tokens expanded).
        question = SEQUENCE_QUESTION
        prompt = encode_batch(processor, name, [question], [row["frames"]], [row["timestamps"]])["input_ids"][0]
        assert row_ids[:n_prompt].tolist() == prompt.tolist()


def test_rows_of_different_lengths_in_one_batch_get_what_they_get_alone(tiny):
    name, path, processor = tiny
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    rows = [_row(0, 3, name), _row(1, 5, name)]
    collator = VideoSFTCollator(processor, name)
    batch = collator(rows)
    if "pixel_values_videos" in batch:  # the two clips go to the model as one clip of their 8 frames
        assert batch["pixel_values_videos"].shape[:2] == (1, 8)
    with torch.no_grad():
        logits = model(**batch).logits
        for i, row in enumerate(rows):
            alone = collator([row])
            n = alone["input_ids"].shape[1]
            torch.testing.assert_close(logits[i, :n], model(**alone).logits[0], atol=1e-5, rtol=1e-4)
    frames, dates = [r["frames"] for r in rows], [r["timestamps"] for r in rows]
    together = generate_batch(model, processor, name, [SEQUENCE_QUESTION] * 2, frames, 6, dates=dates)
    alone = [
        generate_batch(model, processor, name, [SEQUENCE_QUESTION], [f], 6, dates=[d])[0]
        for f, d in zip(frames, dates, strict=True)
    ]
    assert together == alone


def test_each_family_renders_its_sequence_prompt(tiny):
    name, _, processor = tiny
    VideoSFTCollator(processor, name)  # Video-LLaVA gets its documented template
    messages = build_messages(
        name, SEQUENCE_QUESTION, _row(0, 3, name)["frames"], dates=_row(0, 3, name)["timestamps"]
    )
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    expected = {
        "llava-next-video": f"USER: <video>\nFrame dates: {DATES}. {SEQUENCE_QUESTION} ASSISTANT:",
        "video-llava": f"USER: <video>\nFrame dates: {DATES}. {SEQUENCE_QUESTION} ASSISTANT:",
        "qwen2.5-vl": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        f"Image 1 (2010-01-02): {QWEN_IMAGE}\nImage 2 (2011-02-02): {QWEN_IMAGE}\nImage 3 (2012-03-02): {QWEN_IMAGE}"
        f"\n{SEQUENCE_QUESTION}<|im_end|>\n<|im_start|>assistant\n",
        # The published LLaVA-OneVision template renders every image first: the labels then follow in order.
        "llava-onevision": "<|im_start|>user\n<image>\n<image>\n<image>\nImage 1 (2010-01-02): \n"
        f"Image 2 (2011-02-02): \nImage 3 (2012-03-02): \n{SEQUENCE_QUESTION}<|im_end|>\n<|im_start|>assistant\n",
    }
    assert prompt == expected[name]


def test_the_interleaved_onevision_template_keeps_pairs_byte_for_byte(tmp_path):
    path = build_tiny_model("llava-onevision", tmp_path / "ov", image_size=32, corpus=CORPUS)
    published = AutoProcessor.from_pretrained(path)
    ours = AutoProcessor.from_pretrained(path)
    ours.chat_template = Path(INTERLEAVED).read_text()
    row = _row(0, 3, "llava-onevision")
    messages = build_messages("llava-onevision", SEQUENCE_QUESTION, row["frames"], dates=row["timestamps"])
    assert ours.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == (
        "<|im_start|>user\nImage 1 (2010-01-02): <image>\nImage 2 (2011-02-02): <image>\nImage 3 (2012-03-02): "
        f"<image>\n{SEQUENCE_QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    )
    batch = VideoSFTCollator(ours, "llava-onevision")([row])
    supervised = batch["labels"][0] != IGNORE_INDEX
    assert ours.tokenizer.decode(batch["input_ids"][0][supervised]) == ANSWERS["llava-onevision"]
    pair = {**row, "frames": row["frames"][:2]}
    del pair["timestamps"]
    for key, value in VideoSFTCollator(published, "llava-onevision")([pair]).items():
        assert torch.equal(value, VideoSFTCollator(ours, "llava-onevision")([pair])[key]), key


def test_ccexpert_takes_pairs_only_and_dates_are_checked():
    frames = [np.zeros((8, 8, 3), np.uint8)] * 3
    with pytest.raises(ValueError, match="ccexpert needs exactly 2 frames"):
        build_messages("ccexpert", "Q", frames)
    with pytest.raises(ValueError, match="ccexpert takes pairs only"):
        build_messages("ccexpert", "Q", frames[:2], dates=["2016-03-02", "2017-08-15"])
    with pytest.raises(ValueError, match="2 dates for 3 frames"):
        build_messages("qwen2.5-vl", "Q", frames, dates=["2016-03-02", "2017-08-15"])
    with pytest.raises(ValueError, match=r"date 2 \(2015-01-01\) is before date 1 \(2016-03-02\)"):
        frame_dates(["2016-03-02", "2015-01-01"], 2)
    with pytest.raises(ValueError, match="date 1 .* is not an ISO 8601 date"):
        frame_dates(["March 2016", "2017-08-15"], 2)
    assert frame_dates(["2016-03-02T10:21:07.123Z", "2016-03-02"], 2) == ["2016-03-02", "2016-03-02"]
    assert build_messages("llava-next-video", "Q", frames)[0]["content"][1]["text"] == "Q"  # no dates: numbered only
    with pytest.raises(ValueError, match="needs at least 2 frames"):
        build_messages("llava-next-video", "Q", frames[:1])


def test_overlong_sequences_are_skipped_or_named_never_cut(tiny):
    name, _, processor = tiny
    short, long = _row(0, 3, name), {**_row(1, 8, name), "id": "long_one"}
    lengths = [int(VideoSFTCollator(processor, name)([r])["attention_mask"].sum()) for r in (short, long)]
    limit = (lengths[0] + lengths[1]) // 2
    with pytest.raises(OverlongSampleError, match="'long_one'"):
        VideoSFTCollator(processor, name, max_length=limit)([short, long])
    collator = VideoSFTCollator(processor, name, on_overlong="skip", max_length=limit)
    batch = collator([short, long])
    assert collator.skipped_ids == ["long_one"] and batch["input_ids"].shape[0] == 1
    with pytest.raises(ValueError, match="one image per timestamp"):
        VideoSFTCollator(processor, name)([{**short, "frames": short["frames"][:2]}])


CAPTIONS = [
    ("Between {0} and {1}, a new road was built across the north.", "road_built", 0),
    ("Between {1} and {2}, a small group of new buildings was built in the east.", "building_built", 1),
    ("No change is visible across the {n} dates.", None, None),
]


def _dataset_rows(n_rows: int, start: int) -> list[dict]:
    rows = []
    for i in range(start, start + n_rows):
        text, kind, gap = CAPTIONS[i % len(CAPTIONS)]
        n_frames = 3 + i % 3
        stamps = sequence_row(i, n_frames, "")["timestamps"]
        caption = text.format(*(s[:7] for s in stamps), n=n_frames)
        changes = [] if kind is None else [{"kind": kind, "location": "north", "size": "small"}]
        for change in changes:
            change.update(start=stamps[gap], end=stamps[gap + 1])
        rows.append(sequence_row(i, n_frames, caption, changes=changes))
    return rows


@pytest.fixture(scope="module")
def sequences_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("sequences")
    return write_sequences_dataset(root, {"train": _dataset_rows(8, 0), "test": _dataset_rows(4, 100)})


def test_train_then_eval_on_the_sequences_config(sequences_dataset, tmp_path):
    base = build_tiny_model("llava-next-video", tmp_path / "base", image_size=32, corpus=CORPUS)
    adapter = tmp_path / "adapter"
    recipe = "trainer/recipes/tiny/sequences_lora_prune.yaml"
    args = ["--config", recipe, "--model_name_or_path", str(base), "--dataset_name", str(sequences_dataset)]
    args += ["--output_dir", str(adapter), "--max_steps", "2", "--per_device_train_batch_size", "4"]
    assert train_main([*args, "--dataloader_num_workers", "0", "--disable_tqdm", "true"]) == 0
    summary = json.loads((adapter / "run_summary.json").read_text())
    assert summary["data"]["dataset_config"] == "sequences" and summary["data"]["num_frames"] == 8
    assert summary["data"]["rows"] == 8

    out = tmp_path / "eval"
    args = ["--model", str(base), "--adapter", str(adapter), "--dataset", str(sequences_dataset), "--config"]
    args += ["sequences", "--out", str(out), "--max_new_tokens", "8", "--meteor", "false", "--model_metrics", "false"]
    assert eval_main(args) == 0
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    expected = load_dataset(str(sequences_dataset), "sequences", split="test")
    assert [r["timestamps"] for r in records] == expected["timestamps"]
    assert [len(r["changes"]) for r in records] == [len(c) for c in expected["changes"]]
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"temporal_precision", "temporal_recall", "temporal_f1", "grounding_f1"} <= set(metrics)
    assert metrics["temporal_rows"] == 4 and metrics["temporal_truth"]["changes"] == 4
    # the test split: building_built (gap 1), no change, road_built (gap 0), building_built (gap 1); adding road_built
    # ties at F1 0.5, and the fewer kinds win
    majority = metrics["temporal_majority"]
    assert majority["kinds"] == ["building_built"] and majority["gaps"] == {"building_built": 1}
    assert majority["temporal_f1"] == pytest.approx(0.5)
    assert "Temporal grounding" in (out / "report.md").read_text()


def test_num_frames_bounds_the_rows_of_a_sequences_config(sequences_dataset):
    args = {"dataset_name": str(sequences_dataset), "dataset_config": "sequences"}
    assert len(load_rows(GeoScriptArguments(**args, num_frames=5))) == 8
    with pytest.raises(ValueError, match="num_frames 4: row 'farm_2' holds 5 dated frames"):
        load_rows(GeoScriptArguments(**args, num_frames=4))
