"""Staging rules: what each artifact carries, and what it never does."""

import logging

import pytest

from upload.push import main as push_main
from upload.staging import is_staged, staged_files


def _touch(root, *paths):
    for rel in paths:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")


def test_model_staging_never_carries_training_state(tmp_path):
    # the adapter, its masks and processor, the card, the evaluation and the run's summary
    adapter = ["adapter_config.json", "adapter_model.safetensors", "pruning_masks.safetensors", "pruning.json"]
    processor = ["tokenizer.json", "tokenizer_config.json", "processor_config.json", "chat_template.jinja"]
    keep = ["README.md", "metrics.json", "training_curves.png", "run_summary.json", *adapter, *processor]
    drop = [
        "optimizer.pt",
        "scheduler.pt",
        "rng_state.pth",
        "rng_state_1.pth",
        "trainer_state.json",
        "training_args.bin",
        "checkpoint-10/adapter_model.safetensors",
        "checkpoint-10/optimizer.pt",
        ".README.md.tmp",
        "notes.txt",
    ]
    _touch(tmp_path, *keep, *drop)
    assert [p.as_posix() for p in staged_files("model", tmp_path)] == sorted(keep)


def test_base_staging_carries_the_whole_model_and_its_processor(tmp_path):
    keep = ["README.md", "config.json", "generation_config.json", "model.safetensors", "chat_template.jinja"]
    keep += ["tokenizer.json", "tokenizer_config.json", "processor_config.json"]
    sharded = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json"]
    # the builder's notes record the local folder; an adapter's files or training state are not a base's
    drop = ["tiny_model.json", "adapter_model.safetensors", "optimizer.pt", "checkpoint-5/model.safetensors"]
    _touch(tmp_path, *keep, *sharded, *drop)
    assert [p.as_posix() for p in staged_files("base", tmp_path)] == sorted(keep + sharded)
    # a model push carries a merged model's weights (geollava-export) but never a builder's notes or training state
    assert not any(is_staged("model", name) for name in ("tiny_model.json", "optimizer.pt"))


def test_dataset_and_space_staging(tmp_path):
    _touch(tmp_path, "README.md", "data/train-00000.parquet", "videos/a.mp4", "geollava_json/train.json")
    _touch(tmp_path, "build_report.json", ".cache/x", "work/state.json", "raw/frame.jpg")
    assert {p.as_posix() for p in staged_files("dataset", tmp_path)} == {
        "README.md",
        "data/train-00000.parquet",
        "videos/a.mp4",
        "geollava_json/train.json",
        "build_report.json",
    }
    assert is_staged("space", "app.py") and is_staged("space", "examples/before.png")
    assert not is_staged("space", "__pycache__/app.cpython-311.pyc")
    with pytest.raises(ValueError, match="kind"):
        is_staged("weights", "a.bin")


def test_push_without_card_warns_and_dry_run_lists_the_plan(tmp_path, caplog, capsys):
    _touch(tmp_path, "adapter_config.json", "adapter_model.safetensors", "optimizer.pt")
    with caplog.at_level(logging.WARNING):
        assert push_main(["model", str(tmp_path), "--repo-id", "geo-org/x", "--dry-run"]) == 0
    assert "no README.md card" in caplog.text
    out = capsys.readouterr().out
    assert "adapter_model.safetensors" in out and "optimizer.pt" not in out and "nothing sent" in out
    assert "/geo-org/x" in out


def test_push_refuses_an_empty_artifact(tmp_path, capsys):
    _touch(tmp_path, "optimizer.pt")
    assert push_main(["model", str(tmp_path), "--repo-id", "geo-org/x", "--dry-run"]) == 1
    assert "nothing to push" in capsys.readouterr().err
