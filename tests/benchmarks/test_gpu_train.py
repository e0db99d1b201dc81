"""benchmarks/gpu_train.py on CPU: it skips cleanly without CUDA (or fails with --require_cuda), its 7B config and FLOP
counts match the anchors, it reads the 7B recipes, and its dry run (tiny config, 2 steps per recipe, the whole code
path: meta build, LoRA and QLoRA steps, results files) runs here, so that it works unchanged on a GPU. Out of memory in
any of its CUDA forms falls back to a smaller micro-batch; a recipe that fails leaves the others' results."""

import importlib.util
import json
import textwrap
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
    assert recipes["h100_lora"].method == "lora" and recipes["h100_lora"].batch == 8
    assert not recipes["h100_lora"].activation_checkpointing
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
    page = (tmp_path / "gpu_train.md").read_text()
    assert "| qlora_prune5 | qlora | random (7B config) | 2 |" in page
    assert page.splitlines()[0].endswith("(dry run on the CPU, tiny config: nothing here is a GPU figure)")


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


def test_micro_batches_fall_back_to_half_and_a_quarter_of_the_recipes():
    bench = gpu_train.GpuTrainBenchConfig()
    recipes = {r.name: r for r in bench.recipe_list}
    assert bench.batch_list(recipes["h100_lora"]) == [8, 4, 2]
    assert bench.batch_list(recipes["qlora_prune5"]) == [2, 1]
    assert gpu_train.GpuTrainBenchConfig(batch_sizes="4,16,8").batch_list(recipes["qlora_prune5"]) == [16, 8, 4]


def test_every_cuda_out_of_memory_form_is_recognised():
    assert gpu_train.is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    cublas = "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"
    assert gpu_train.is_out_of_memory(RuntimeError(cublas))
    assert gpu_train.is_out_of_memory(RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be ..."))
    assert not gpu_train.is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not gpu_train.is_out_of_memory(ValueError("out of memory"))


def _tiny_bench(*extra):
    return gpu_train.GpuTrainBenchConfig(
        dry_run=True, tokens_per_sample=40, answer_tokens=10, steps=1, warmup_steps=0, **dict(extra)
    )


def test_an_out_of_memory_error_moves_on_to_the_next_micro_batch(tmp_path, monkeypatch):
    # No CUDA here: the measurement raises what cuBLAS raises near the memory limit, at micro-batches above 1.
    real = gpu_train.measure

    def measure(model, batch, *args):
        if batch["input_ids"].shape[0] > 1:
            raise RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`")
        return real(model, batch, *args)

    monkeypatch.setattr(gpu_train, "measure", measure)
    bench = _tiny_bench(("recipes", gpu_train.DEFAULT_RECIPES.split(",")[1]), ("batch_sizes", "2,1"))
    (recipe,) = bench.recipe_list
    result = gpu_train.run_recipe(recipe, gpu_train.tiny_config(), bench, "cpu", torch.float32, tmp_path)
    assert result["batch"] == 1 and result["losses_finite"]
    assert result["tried"] == [
        {"batch": 2, "result": "out of memory (RuntimeError)"},
        {"batch": 1, "result": "measured"},
    ]


def test_a_failing_recipe_keeps_its_traceback_and_the_next_one_runs_with_results_after_each(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        textwrap.dedent(
            """\
            model_name_or_path: llava-hf/LLaVA-NeXT-Video-7B-hf
            use_peft: true
            lora_r: 8
            lora_alpha: 16
            per_device_train_batch_size: 1
            attn_implementation: no_such_attention
            """
        )
    )
    recipes = f"{broken},{gpu_train.DEFAULT_RECIPES.split(',')[0]}"
    bench = _tiny_bench(("recipes", recipes), ("batch_sizes", "1"))
    saved = []
    results = gpu_train.run_recipes(bench, tmp_path / "work", lambda done, pending: saved.append((len(done), pending)))
    assert saved == [(1, ["h100_lora"]), (2, [])]  # written after each recipe, naming what is still to run
    assert results[0]["recipe"] == "broken" and "no_such_attention" in results[0]["error"]
    assert "Traceback" in results[0]["traceback"]
    assert "error" not in results[1] and results[1]["samples_per_s"] > 0


def test_the_random_base_is_saved_in_shards_and_reloads_in_4bit(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_train, "SHARD_SIZE", "200KB")
    folder = gpu_train.save_random_base(small_config(), "cpu", torch.float32, tmp_path / "base", "sdpa")
    assert len(list(folder.glob("*.safetensors"))) > 1 and (folder / "model.safetensors.index.json").is_file()
    (recipe,) = _tiny_bench(("recipes", gpu_train.DEFAULT_RECIPES.split(",")[1])).recipe_list
    model = gpu_train._qlora_model(folder, recipe, torch.float32)
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())
