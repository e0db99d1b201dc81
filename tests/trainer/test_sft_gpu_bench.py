"""benchmarks/gpu_train.py on CPU: it skips cleanly without CUDA, its 7B config and FLOP counts match the anchors, and
its code path (meta build, LoRA and QLoRA steps) runs on a small config, so that it works unchanged on a GPU."""

import importlib.util
from pathlib import Path

import pytest
import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextVideoConfig, LlavaNextVideoForConditionalGeneration


ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("gpu_train", ROOT / "benchmarks" / "gpu_train.py")
gpu_train = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_train)


def small_config() -> LlavaNextVideoConfig:
    return LlavaNextVideoConfig(
        text_config=LlamaConfig(
            vocab_size=128,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            tie_word_embeddings=False,
        ),
        vision_config=CLIPVisionConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        video_token_index=126,
        image_token_index=127,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_grid_pinpoints=[[32, 64], [64, 32], [64, 64]],
        image_seq_length=16,
        video_seq_length=8,
        tie_word_embeddings=False,
    )


def test_skips_cleanly_without_cuda(tmp_path, capsys):
    assert not torch.cuda.is_available()
    assert gpu_train.main(["--out_dir", str(tmp_path / "results")]) == 0
    assert "skipped" in capsys.readouterr().out
    assert not (tmp_path / "results").exists()


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="methods 'dora'"):
        gpu_train.GpuTrainBenchConfig(methods="dora")
    with pytest.raises(ValueError, match="answer_tokens 700"):
        gpu_train.GpuTrainBenchConfig(answer_tokens=700)


def test_real_config_sizes_and_flops_match_the_anchors():
    config = gpu_train.real_config()
    assert gpu_train.video_tokens(config) == 288 == config.video_seq_length
    with torch.device("meta"):
        model = LlavaNextVideoForConditionalGeneration(config)
    counts = gpu_train.parameter_counts(model)
    # anchors-and-performance.md B4: N = 7.06B, N_LM = 6.74B, N_vision = 0.30B, projector ~21M.
    assert counts["total"] == pytest.approx(7.06e9, rel=0.01)
    assert counts["lm_matmul"] + counts["embedding"] == pytest.approx(6.74e9, rel=0.01)
    assert counts["vision"] == pytest.approx(0.30e9, rel=0.02)
    assert counts["projector"] == pytest.approx(21e6, rel=0.05)
    flops = gpu_train.flops_per_sample(counts, config, 700)
    assert flops["6n"] == 6 * counts["total"] * 700
    assert flops["6n"] / 1e12 == pytest.approx(29.7, rel=0.01)
    # B4's frozen-base estimate, ~20 TFLOP/sample (4 N_LM tokens + vision forward + attention).
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


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_methods_train_on_a_small_config(method, tmp_path):
    config = small_config()
    bench = gpu_train.GpuTrainBenchConfig(
        methods=method, batch_sizes="2", tokens_per_sample=40, answer_tokens=10, steps=2, warmup_steps=1, lora_r=4
    )
    if method == "qlora":
        gpu_train.build_random_model(config, "cpu", torch.float32).save_pretrained(tmp_path / "base")
    result = gpu_train.run_method(method, config, bench, "cpu", torch.float32, tmp_path)
    assert result["batch"] == 2 and result["tried"] == [{"batch": 2, "result": "measured"}]
    assert result["samples_per_s"] > 0 and result["losses_finite"]
    assert result["lora_parameters"] > 0
    assert result["flops_per_sample"]["6n"] > result["flops_per_sample"]["4n"] > 0
    with torch.device("meta"):
        counts = gpu_train.parameter_counts(LlavaNextVideoForConditionalGeneration(config))
    assert result["parameters"] == counts  # the QLoRA base is counted unpacked
