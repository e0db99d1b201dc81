import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from dataset_builder.synthetic.render import PIXEL_CLASSES, render, render_with_labels
from dataset_builder.synthetic.scenes import apply_change, random_scene
from trainer.tiny.build import build_tiny_model, main
from trainer.tiny.vision_pretrain import TOWERS, patch_targets, pretrain_vision_tower, scene_images


CORPUS = ["The first image shows farmland. The second image shows farmland with a road."]


def test_labels_match_the_image_render_draws():
    scene = random_scene(np.random.default_rng(3))
    scene, _ = apply_change(scene, "building_built", np.random.default_rng(4))
    plain = render(scene, 96, 80, np.random.default_rng(5), season="autumn")
    image, labels = render_with_labels(scene, 96, 80, np.random.default_rng(5), season="autumn")
    assert image.tobytes() == plain.tobytes()
    assert labels.shape == (80, 96)
    # the new block's centre is labelled as buildings
    x, y, w, h = scene["buildings"][-1]["box"]
    assert PIXEL_CLASSES[labels[int((y + h / 2) * 80), int((x + w / 2) * 96)]] == "buildings"


def test_patch_targets_are_fractions():
    frames, labels = scene_images(4, 32, seed=1)
    assert frames.shape == (4, 32, 32, 3) and labels.shape == (4, 64, 64)
    targets = patch_targets(labels, 4)
    assert targets.shape == (4, 16, len(PIXEL_CLASSES))
    torch.testing.assert_close(targets.sum(-1), torch.ones(4, 16))


@pytest.mark.parametrize("family", sorted(TOWERS))
def test_pretraining_teaches_the_tower_only(family, tmp_path):
    out = build_tiny_model(family, tmp_path / "m", corpus=CORPUS)
    model = AutoModelForImageTextToText.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats = pretrain_vision_tower(model, processor, family, steps=40, images=300, batch_size=32)

    _, labels = scene_images(300, model.config.vision_config.image_size, seed=0)
    majority = np.bincount(labels[-30:].ravel(), minlength=len(PIXEL_CLASSES)).max() / labels[-30:].size
    assert stats["patch_accuracy"] > majority + 0.1, (stats, majority)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    towers = tuple(f"model.{name}." for name in TOWERS[family])
    assert changed and all(k.startswith(towers) for k in changed), sorted(changed)[:5]
    if family == "video-llava":  # one encoder for images and videos, as in the checkpoint
        video = model.model.video_tower.state_dict()
        assert all(torch.equal(v, video[k]) for k, v in model.model.image_tower.state_dict().items())


def test_unsupported_family_is_refused(tmp_path):
    out = build_tiny_model("qwen2.5-vl", tmp_path / "q", corpus=CORPUS)
    model = AutoModelForImageTextToText.from_pretrained(out)
    with pytest.raises(ValueError, match="qwen2.5-vl"):
        pretrain_vision_tower(model, AutoProcessor.from_pretrained(out), "qwen2.5-vl", steps=1)


def test_cli_records_the_pretraining(tmp_path):
    main(
        [
            "--family",
            "llava-next-video",
            "--out",
            str(tmp_path / "m"),
            "--vision_pretrain_steps",
            "5",
            "--vision_pretrain_images",
            "50",
        ]
    )
    info = json.loads((tmp_path / "m" / "tiny_model.json").read_text())
    assert info["vision_pretrain_steps"] == 5
    assert info["vision_pretraining"]["steps"] == 5 and info["vision_pretraining"]["images"] == 50
    assert 0 <= info["vision_pretraining"]["patch_accuracy"] <= 1
    AutoModelForImageTextToText.from_pretrained(tmp_path / "m")
