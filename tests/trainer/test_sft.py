"""geollava-train: trainable parameters change and frozen ones do not, every family trains, QLoRA 4-bit/8-bit train
on CPU, the output folder holds only the adapter's files, and the CLI run reloads with its masks."""

import json
import shutil

import numpy as np
import pytest
import torch
from datasets import Dataset, load_dataset
from safetensors.torch import load_file
from transformers import AutoProcessor
from trl import SFTTrainer

from dataset_builder.prompts import PROMPT_TEMPLATES
from dataset_builder.rows import features
from tests.trainer.helpers import tiny_sft_args
from trainer.models.families import FAMILIES
from trainer.models.loading import load_for_inference
from trainer.pruning.masks import SavedMasks, load_masks, save_masks
from trainer.pruning.methods import PruningConfig
from trainer.sft import given_masks, main, resume_checkpoint
from trainer.tiny.build import build_tiny_model
from trainer.training.collator import VideoSFTCollator
from trainer.training.config import GeoModelConfig, GeoSFTConfig
from trainer.training.model_setup import LoadedModel, load_model


CAPTIONS = [
    "A new building was built in the north-east.",
    "A road was widened in the south.",
    "The forest was cleared in the west.",
    "No change is visible between the two images.",
]
CORPUS = [*PROMPT_TEMPLATES, *CAPTIONS, "USER: ASSISTANT:", "user assistant system"]
FEATURES = features(columns=("id", "frames", "conversations"))
CARD = "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*\n---\n"
ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors", "run_summary.json", "training_curves.png"}


def make_dataset(n, size=32, seed=0):
    rng = np.random.default_rng(seed)
    rows = {"id": [], "frames": [], "conversations": []}
    for i in range(n):
        rows["id"].append(f"pair_{i}")
        rows["frames"].append([rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(2)])
        rows["conversations"].append(
            [
                {"from": "human", "value": PROMPT_TEMPLATES[i % len(PROMPT_TEMPLATES)] + "\n<video>"},
                {"from": "gpt", "value": CAPTIONS[i % len(CAPTIONS)]},
            ]
        )
    return Dataset.from_dict(rows, features=FEATURES)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    """A Hub-layout dataset folder, read back with load_dataset as a user would."""
    root = tmp_path_factory.mktemp("dataset")
    (root / "data").mkdir()
    make_dataset(16).to_parquet(str(root / "data" / "train-00000-of-00001.parquet"))
    (root / "README.md").write_text(CARD)
    return root


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return build_tiny_model("llava-next-video", tmp_path_factory.mktemp("lnv"), image_size=32, corpus=CORPUS)


def _sft(out, **kwargs):
    defaults = {"max_steps": 3, "per_device_train_batch_size": 4, "save_strategy": "no"}
    return tiny_sft_args(GeoSFTConfig, out, **(defaults | kwargs))


def _train(path, family, dataset, out, model_kwargs=None, **sft_kwargs):
    model_args = GeoModelConfig(
        model_name_or_path=str(path), use_peft=True, lora_r=4, lora_alpha=8, lora_dropout=0.0, **(model_kwargs or {})
    )
    loaded = load_model(model_args)
    processor = AutoProcessor.from_pretrained(path)
    trainer = SFTTrainer(
        model=loaded.model,
        args=_sft(out, **sft_kwargs),
        train_dataset=dataset,
        processing_class=processor,
        data_collator=VideoSFTCollator(processor, family),
    )
    return loaded, trainer


def test_sft_config_defaults():
    args = GeoSFTConfig(output_dir="x", use_cpu=True)
    assert args.remove_unused_columns is False
    assert args.dataset_kwargs == {"skip_prepare_dataset": True}
    assert args.max_length is None and args.bf16 is False and args.report_to in ("none", [], ["none"])
    assert args.activation_checkpointing is False
    with pytest.raises(ValueError, match="remove_unused_columns"):
        GeoSFTConfig(output_dir="x", use_cpu=True, remove_unused_columns=True)
    with pytest.raises(ValueError, match="skip_prepare_dataset"):
        GeoSFTConfig(output_dir="x", use_cpu=True, dataset_kwargs={})


def test_trainable_change_frozen_do_not(tiny_path, dataset_dir, tmp_path):
    dataset = load_dataset(str(dataset_dir), split="train")
    loaded, trainer = _train(tiny_path, "llava-next-video", dataset, tmp_path, {"lora_modules_to_save": ["lm_head"]})
    before = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    trainer.train()
    changed = {n for n, p in loaded.model.named_parameters() if not torch.equal(p, before[n])}
    trainable = set(loaded.trainable_names)
    # Every LoRA B and the trained lm_head copy move; LoRA A may or may not (B starts at zero), so check B.
    assert {n for n in trainable if "lora_B" in n or "modules_to_save" in n} <= changed
    assert changed <= trainable, f"frozen parameters changed: {sorted(changed - trainable)[:5]}"
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 3 and all(np.isfinite(losses))
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert logged  # throughput keys are added by the CLI's callback, checked in the CLI test


@pytest.mark.parametrize("family", sorted(set(FAMILIES) - {"llava-next-video"}))
def test_each_family_trains(family, tmp_path):
    size = 56 if family == "qwen2.5-vl" else 32
    path = build_tiny_model(family, tmp_path / "model", image_size=64 if size == 56 else 32, corpus=CORPUS)
    loaded, trainer = _train(path, family, make_dataset(4, size), tmp_path / "out", max_steps=2, learning_rate=5e-3)
    lora_b = {n: p.detach().clone() for n, p in loaded.model.named_parameters() if "lora_B" in n}
    trainer.train()
    after = dict(loaded.model.named_parameters())
    assert lora_b and all(not torch.equal(after[n], v) for n, v in lora_b.items())
    assert all(np.isfinite(e["loss"]) for e in trainer.state.log_history if "loss" in e)


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_lora_trains_on_cpu(tiny_path, bits, tmp_path):
    loaded, trainer = _train(
        tiny_path, "llava-next-video", make_dataset(8), tmp_path, {f"load_in_{bits}bit": True}, learning_rate=5e-3
    )
    assert loaded.quantization == ("nf4" if bits == 4 else "int8")
    lora_b = {n: p.detach().clone() for n, p in loaded.model.named_parameters() if "lora_B" in n}
    trainer.train()
    after = dict(loaded.model.named_parameters())
    assert all(not torch.equal(after[n], v) for n, v in lora_b.items())


def _cli(tiny_path, dataset_dir, out, recipe, *extra):
    argv = [
        "--config",
        f"trainer/recipes/tiny/{recipe}.yaml",
        "--model_name_or_path",
        str(tiny_path),
        "--dataset_name",
        str(dataset_dir),
        "--output_dir",
        str(out),
        "--max_steps",
        "4",
        "--per_device_train_batch_size",
        "4",
        "--logging_steps",
        "1",
        "--disable_tqdm",
        "true",
        *extra,
    ]
    assert main(argv) == 0
    return json.loads((out / "run_summary.json").read_text())


def test_cli_lora_writes_only_adapter_files(tiny_path, dataset_dir, tmp_path):
    out = tmp_path / "adapter"
    summary = _cli(tiny_path, dataset_dir, out, "lora", "--save_strategy", "steps", "--save_steps", "2")
    files = {p.name for p in out.iterdir()}
    assert files >= ADAPTER_FILES
    assert not any(name.startswith("checkpoint-") for name in files), files
    assert not files & {"README.md", "training_args.bin", "optimizer.pt", "scheduler.pt", "trainer_state.json"}
    assert (out / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    weights = load_file(out / "adapter_model.safetensors")
    assert any("lora_B" in k for k in weights) and any("lm_head" in k for k in weights)
    assert not any("optimizer" in k or "exp_avg" in k for k in weights)
    # The summary the card renderer reads.
    assert summary["recipe"] == "trainer/recipes/tiny/lora.yaml"
    assert summary["data"]["rows"] == 16 and summary["model"]["family"] == "llava-next-video"
    assert summary["model"]["lora_r"] == 16 and summary["pruning"] is None
    assert summary["versions"]["transformers"] and summary["versions"]["trl"]
    assert summary["throughput"]["samples"] == 16 and summary["throughput"]["samples_per_second"] > 0
    assert summary["throughput"]["tokens"] > 0 and summary["skipped_overlong"]["count"] == 0
    logged = [e for e in summary["log_history"] if "loss" in e]
    assert len(logged) == 4 and all("tokens_per_second" in e and "peak_memory_mb" in e for e in logged)


def test_cli_qlora_prune_reloads_with_masks(tiny_path, dataset_dir, tmp_path):
    out = tmp_path / "adapter"
    summary = _cli(tiny_path, dataset_dir, out, "qlora_prune")
    assert summary["model"]["quantization"] == "nf4"
    assert summary["model"]["loaded_from"].endswith("adapter.pruned-base")
    # The adapter names the base the user gave, never the local pruned copy its weights were read from.
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(tiny_path)
    assert summary["pruning"]["method"] == "magnitude"
    assert summary["pruning"]["sparsity_reached"] == pytest.approx(0.05, abs=1e-3)
    masks = load_masks(out)
    assert masks and all("language_model" in name for name in masks)
    model, _, family = load_for_inference(str(tiny_path), str(out))
    weights = dict(model.named_parameters())
    name, mask = next(iter(masks.items()))
    weight = next(p for n, p in weights.items() if n.endswith(name.removeprefix("model.") + ".base_layer.weight"))
    assert (weight.detach().reshape(mask.shape)[~mask] == 0).all()
    assert family.name == "llava-next-video"


def test_cli_overlong_skip_is_counted(tiny_path, dataset_dir, tmp_path):
    rows = load_dataset(str(dataset_dir), split="train")
    processor = AutoProcessor.from_pretrained(tiny_path)
    lengths = [int(VideoSFTCollator(processor, "llava-next-video")([row])["attention_mask"].sum()) for row in rows]
    limit = sorted(lengths)[len(lengths) // 2]
    n_long = sum(n > limit for n in lengths)
    assert 0 < n_long < len(lengths)
    out = tmp_path / "adapter"
    with pytest.raises(ValueError, match="never truncated"):
        _cli(tiny_path, dataset_dir, out, "lora", "--max_length", str(limit))
    summary = _cli(
        tiny_path,
        dataset_dir,
        out,
        "lora",
        "--max_length",
        str(limit),
        "--on_overlong",
        "skip",
        "--per_device_train_batch_size",
        "16",
        "--max_steps",
        "1",
    )
    assert summary["skipped_overlong"]["count"] == n_long
    assert len(summary["skipped_overlong"]["ids"]) == n_long


def test_resume_gives_the_same_loss_curve(tiny_path, dataset_dir, tmp_path):
    common = ("--max_steps", "4", "--save_steps", "2", "--save_strategy", "steps", "--lr_scheduler_type", "linear")
    full = _cli(tiny_path, dataset_dir, tmp_path / "full", "lora", *common, "--keep_checkpoints", "true")
    checkpoint = tmp_path / "full" / "checkpoint-2"
    assert (checkpoint / "optimizer.pt").is_file()  # checkpoints keep optimizer state, for resume
    resumed = _cli(
        tiny_path, dataset_dir, tmp_path / "resumed", "lora", *common, "--resume_from_checkpoint", str(checkpoint)
    )

    def losses(summary):
        return {e["step"]: e["loss"] for e in summary["log_history"] if "loss" in e and e["step"] > 2}

    assert sorted(losses(full)) == sorted(losses(resumed)) == [3, 4]
    np.testing.assert_allclose(
        [losses(resumed)[s] for s in (3, 4)], [losses(full)[s] for s in (3, 4)], rtol=1e-5, atol=1e-6
    )
    assert not (tmp_path / "resumed" / "checkpoint-2").exists()


def test_resume_with_pruning_takes_the_resumed_checkpoints_masks(tiny_path, dataset_dir, tmp_path):
    common = ("--max_steps", "4", "--save_steps", "2", "--save_strategy", "steps", "--lr_scheduler_type", "linear")
    common += ("--pruning_method", "magnitude", "--pruning_sparsity", "0.05")
    full = _cli(tiny_path, dataset_dir, tmp_path / "full", "lora", *common, "--keep_checkpoints", "true")
    checkpoint = tmp_path / "resumed" / "checkpoint-2"
    shutil.copytree(tmp_path / "full" / "checkpoint-2", checkpoint)
    resumed = _cli(tiny_path, dataset_dir, tmp_path / "resumed", "lora", *common, "--resume_from_checkpoint", "last")
    assert resumed["pruning"]["masks_loaded_from"] == str(checkpoint) and "masks_loaded_from" not in full["pruning"]
    masks, reference = load_masks(tmp_path / "resumed"), load_masks(tmp_path / "full")
    assert masks.keys() == reference.keys() and all(torch.equal(masks[n], reference[n]) for n in masks)
    full_losses, resumed_losses = (
        [e["loss"] for e in summary["log_history"] if "loss" in e and e["step"] > 2] for summary in (full, resumed)
    )
    assert len(resumed_losses) == len(full_losses) == 2
    np.testing.assert_allclose(resumed_losses, full_losses, rtol=1e-5, atol=1e-6)


def test_the_callback_is_given_masks_from_explicit_inputs_only(tmp_path):
    for name in ("checkpoint-2", "masks-path", "pruned-copy"):
        save_masks({"m": torch.tensor([True, False, True])}, tmp_path / name, {"source": name})
    copy = SavedMasks.read(tmp_path / "pruned-copy")
    loaded = LoadedModel(torch.nn.Identity(), FAMILIES["llava-next-video"], str(tmp_path / "pruned-copy"), "nf4", 0, 0)
    loaded.pruned_masks = copy
    pruning = PruningConfig(pruning_method="magnitude", pruning_sparsity=0.3)
    with_path = PruningConfig(
        pruning_method="magnitude", pruning_sparsity=0.3, pruning_masks_path=str(tmp_path / "masks-path")
    )

    def source(config, checkpoint):
        return given_masks(config, loaded, checkpoint and str(tmp_path / checkpoint)).report["source"]

    # The resumed checkpoint first (once pruning had run, it holds masks), then pruning_masks_path, then the copy.
    assert source(pruning, "checkpoint-2") == source(with_path, "checkpoint-2") == "checkpoint-2"
    assert source(with_path, None) == source(with_path, "checkpoint-1") == "masks-path"
    assert source(pruning, None) == source(pruning, "checkpoint-1") == "pruned-copy"
    assert given_masks(PruningConfig(), loaded, str(tmp_path / "checkpoint-2")) is None
    missing = PruningConfig(
        pruning_method="magnitude", pruning_sparsity=0.3, pruning_masks_path=str(tmp_path / "none")
    )
    with pytest.raises(FileNotFoundError, match="pruning_masks_path .* holds no pruning_masks.safetensors"):
        given_masks(missing, loaded, None)


def test_resume_checkpoint_resolves_last(tmp_path):
    for step in (2, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()

    def resolved(value, output_dir=tmp_path):
        return resume_checkpoint(GeoSFTConfig(output_dir=str(output_dir), use_cpu=True, resume_from_checkpoint=value))

    assert resolved(None) is None
    assert resolved("last") == resolved("true") == str(tmp_path / "checkpoint-10")
    assert resolved(str(tmp_path / "checkpoint-2")) == str(tmp_path / "checkpoint-2")
    with pytest.raises(ValueError, match="No valid checkpoint"):
        resolved("last", tmp_path / "empty")


def test_logs_go_to_the_stdout_of_each_run_when_a_caller_captures_runs_one_by_one(tmp_path, monkeypatch):
    import contextlib
    import io
    import logging

    from trainer.sft import parse_args, setup

    # a fresh process: no handler yet, so setup's basicConfig installs its own
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    argv = ["--config", "trainer/recipes/tiny/lora.yaml", "--model_name_or_path", "base", "--dataset_name", "data"]
    script, training, model, pruning, _ = parse_args([*argv, "--output_dir", str(tmp_path), "--log_level", "info"])
    first, second = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(first):
        setup(training, script, model, pruning)
    with contextlib.redirect_stdout(second):
        setup(training, script, model, pruning)
        logging.getLogger("trainer.sft").info("said during the second run")
    assert "model options" in first.getvalue() and "said during the second run" not in first.getvalue()
    assert "model options" in second.getvalue() and "said during the second run" in second.getvalue()
