"""benchmarks/gpu_train.py on CPU: it skips cleanly without CUDA (or fails with --require_cuda), its 7B config and FLOP
counts match the anchors, it reads the 7B recipes, and its dry run (tiny config, 2 steps per recipe, the whole code
path: meta build, LoRA and QLoRA steps, results files) runs here, so that it works unchanged on a GPU."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from transformers import LlavaNextVideoForConditionalGeneration


ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("gpu_train", ROOT / "benchmarks" / "gpu_train.py")
gpu_train = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_train)


def small_config():
    return gpu_train.tiny_config()


def test_skips_cleanly_without_cuda(tmp_path, capsys):
    assert not torch.cuda.is_available()
    assert gpu_train.main(["--out_dir", str(tmp_path / "results")]) == 0
    assert "no CUDA device" in capsys.readouterr().out
    assert gpu_train.main(["--out_dir", str(tmp_path / "results"), "--require_cuda", "true"]) == 1
    assert not (tmp_path / "results").exists()


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="answer_tokens 700"):
        gpu_train.GpuTrainBenchConfig(answer_tokens=700)
    with pytest.raises(ValueError, match="batch_sizes 'x'"):
        gpu_train.GpuTrainBenchConfig(batch_sizes="x")
    with pytest.raises(FileNotFoundError):
        gpu_train.GpuTrainBenchConfig(recipes="trainer/recipes/nope.yaml")


def test_the_default_recipes_are_the_7b_ones_and_their_weights_are_found_offline(tmp_path):
    recipes = {r.name: r for r in gpu_train.GpuTrainBenchConfig().recipe_list}
    assert recipes["h100_lora"].method == "lora" and recipes["h100_lora"].batch == 16
    qlora = recipes["qlora_prune5"]
    assert (qlora.method, qlora.batch, qlora.lora_r, qlora.lora_alpha) == ("qlora", 2, 64, 128)
    assert qlora.model_id == "llava-hf/LLaVA-NeXT-Video-7B-hf" and qlora.activation_checkpointing
    # Not on this machine: a random model of the same config is timed instead; nothing is downloaded.
    assert gpu_train.find_weights("auto", qlora.model_id) is None
    assert gpu_train.find_weights("random", str(tmp_path)) is None
    assert gpu_train.find_weights("auto", str(tmp_path)) == tmp_path


def test_real_config_sizes_and_flops_match_the_anchors():
    config = gpu_train.real_config()
    assert gpu_train.video_tokens(config) == 288 == config.video_seq_length
    with torch.device("meta"):
        model = LlavaNextVideoForConditionalGeneration(config)
    counts = gpu_train.parameter_counts(model)
    # The 7B planning figures of docs/training.md "At scale": N = 7.06B, N_LM = 6.74B, vision 0.30B, projector ~21M.
    assert counts["total"] == pytest.approx(7.06e9, rel=0.01)
    assert counts["lm_matmul"] + counts["embedding"] == pytest.approx(6.74e9, rel=0.01)
    assert counts["vision"] == pytest.approx(0.30e9, rel=0.02)
    assert counts["projector"] == pytest.approx(21e6, rel=0.05)
    flops = gpu_train.flops_per_sample(counts, config, 700)
    assert flops["6n"] == 6 * counts["total"] * 700
    assert flops["6n"] / 1e12 == pytest.approx(29.7, rel=0.01)
    # The frozen-base count, ~20 TFLOP/sample (4 N_LM tokens + vision forward + attention).
    assert flops["4n"] / 1e12 == pytest.approx(20.2, rel=0.05)
    assert gpu_train.peak_tflops("NVIDIA H100 80GB HBM3", None) == 989.4
    assert gpu_train.peak_tflops("NVIDIA H100 PCIe", None) == 756.0
    assert gpu_train.peak_tflops("Some GPU", None) is None


def test_meta_build_initialises_weights_and_buffers():
    config = small_config()
    torch.manual_seed(0)
    reference = LlavaNextVideoForConditionalGeneration(config)
    model = gpu_train.build_random_model(config, "cpu", torch.float32)
    buffers = dict(reference.named_buffers())
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, buffers[name]), name
    # Same initialisation scheme as a normal build: every weight's spread matches (values differ: other draws).
    weights = dict(reference.named_parameters())
    for name, parameter in model.named_parameters():
        assert torch.isfinite(parameter).all(), name
        expected = weights[name].detach()
        if parameter.numel() >= 1024:
            assert parameter.std().item() == pytest.approx(expected.std().item(), rel=0.25, abs=1e-6), name
            assert parameter.mean().item() == pytest.approx(expected.mean().item(), abs=0.02), name


def test_synthetic_batch_matches_the_collator_shape():
    config = small_config()
    batch = gpu_train.synthetic_batch(config, 3, 40, 10, "cpu", torch.float32)
    assert batch["input_ids"].shape == (3, 40)
    assert ((batch["input_ids"] == config.video_token_index).sum(dim=1) == 8).all()
    supervised = batch["labels"] != -100
    assert (supervised.sum(dim=1) == 10).all() and supervised[:, -10:].all()
    assert batch["pixel_values_videos"].shape == (3, 2, 3, 32, 32)


def test_dry_run_times_every_recipe_and_writes_its_results(tmp_path):
    args = ["--dry_run", "true", "--tokens_per_sample", "40", "--answer_tokens", "10", "--steps", "2"]
    assert gpu_train.main([*args, "--warmup_steps", "1", "--batch_sizes", "2", "--out_dir", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "gpu_train.json").read_text())
    assert result["dry_run"] and result["device"] == "cpu (dry run)"
    assert [r["recipe"] for r in result["recipes"]] == ["h100_lora", "qlora_prune5"]
    assert [r["method"] for r in result["recipes"]] == ["lora", "qlora"]
    with torch.device("meta"):
        counts = gpu_train.parameter_counts(LlavaNextVideoForConditionalGeneration(small_config()))
    for r in result["recipes"]:
        assert r["batch"] == 2 and r["tried"] == [{"batch": 2, "result": "measured"}] and r["weights"] == "random"
        assert r["samples_per_s"] > 0 and r["losses_finite"] and r["lora_parameters"] > 0
        assert r["flops_per_sample"]["6n"] > 0 and r["flops_per_sample"]["4n"] > 0
        assert r["parameters"] == counts  # the QLoRA base is counted unpacked
    assert "| qlora_prune5 | qlora | random (7B config) | 2 |" in (tmp_path / "gpu_train.md").read_text()


def test_dry_run_writes_nothing_into_the_results_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_train, "RESULTS", tmp_path / "results")
    args = ["--dry_run", "true", "--tokens_per_sample", "40", "--answer_tokens", "10", "--steps", "1"]
    assert (
        gpu_train.main(
            [*args, "--warmup_steps", "0", "--batch_sizes", "1", "--recipes", gpu_train.DEFAULT_RECIPES.split(",")[0]]
        )
        == 0
    )
    assert not (tmp_path / "results").exists()
