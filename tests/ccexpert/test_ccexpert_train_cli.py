"""The CCExpert stages through `geollava-train` itself (recipes + the stage hook in trainer/sft.py)."""

import json

import torch
from safetensors.torch import load_file

from dataset_builder.levircc import main as build_levircc
from dataset_builder.synthetic.synth import main as synth_main
from trainer.sft import main as train_main
from trainer.tiny.build import build_tiny_model


def test_stage_one_then_three_through_the_cli(tmp_path):
    synth_main(["--format", "levir-cc", "--out", str(tmp_path / "levir"), "--pairs", "16", "--seed", "3"])
    build_levircc(["--root", str(tmp_path / "levir"), "--out", str(tmp_path / "ds")])
    base = build_tiny_model("ccexpert", tmp_path / "base", image_size=32, corpus=["what difference happened"])
    common = ["--dataset_name", str(tmp_path / "ds"), "--max_steps", "2", "--per_device_train_batch_size", "2"]
    assert train_main(
        [
            "--config",
            "trainer/recipes/ccexpert/tiny_stage1.yaml",
            "--model_name_or_path",
            str(base),
            "--output_dir",
            str(tmp_path / "s1"),
            *common,
        ]
    ) in (0, None)
    before, after = load_file(base / "model.safetensors"), load_file(tmp_path / "s1" / "model.safetensors")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("integration_module" in k or "multi_modal_projector" in k for k in changed)
    assert train_main(
        [
            "--config",
            "trainer/recipes/ccexpert/tiny_stage3.yaml",
            "--model_name_or_path",
            str(tmp_path / "s1"),
            "--output_dir",
            str(tmp_path / "s3"),
            *common,
        ]
    ) in (0, None)
    selection = json.loads((tmp_path / "s3" / "best" / "selection.json").read_text())
    assert selection["split"] == "validation"
