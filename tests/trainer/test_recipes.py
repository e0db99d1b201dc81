"""Every recipe parses into the trainer's dataclasses, says what it targets, and holds the paper's values."""

import re
from pathlib import Path

import pytest
import yaml

from trainer.sft import parse_args


# The geollava-train recipes (other folders, e.g. ccexpert/, belong to other trainers).
OWN = ("tiny", "llava-next-video-7b", "video-llava-7b", "llava-onevision-7b", "qwen2.5-vl-7b")
RECIPES = sorted(p for folder in OWN for p in Path("trainer/recipes", folder).glob("*.yaml"))


def _parse(recipe, tmp_path, *extra):
    return parse_args(
        ["--config", str(recipe), "--dataset_name", "org/geollava", "--output_dir", str(tmp_path), *extra]
    )[:4]


def test_the_expected_recipes_exist():
    names = {str(p.relative_to("trainer/recipes")) for p in RECIPES}
    assert {
        "tiny/lora.yaml",
        "tiny/qlora_prune.yaml",
        "llava-next-video-7b/qlora_prune5.yaml",
        "llava-next-video-7b/qlora_prune1.yaml",
        "llava-next-video-7b/qlora_prune10.yaml",
        "llava-next-video-7b/qlora.yaml",
        "llava-next-video-7b/lora.yaml",
        "llava-next-video-7b/qlora_prune5_10k.yaml",
        "llava-next-video-7b/h100_lora.yaml",
        "video-llava-7b/lora.yaml",
        "tiny/sequences_lora_prune.yaml",
        "llava-next-video-7b/sequences_lora.yaml",
        "video-llava-7b/sequences_lora.yaml",
        "llava-onevision-7b/sequences_lora.yaml",
        "qwen2.5-vl-7b/sequences_lora.yaml",
    } <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to("trainer/recipes")))
def test_recipe_parses_and_has_a_header(recipe, tmp_path):
    text = recipe.read_text()
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert header and text.startswith("#"), "a recipe starts with a comment naming its target"
    assert "samples/s" in " ".join(header) or "sample/s" in " ".join(header)
    assert "geollava-train --config " + str(recipe) in text, "the header shows the command to run it"
    # Every key is a field of one of the four dataclasses (TrlParser refuses unknown keys).
    script, sft, model, pruning = _parse(recipe, tmp_path)
    assert sft.remove_unused_columns is False and sft.dataset_kwargs["skip_prepare_dataset"]
    if recipe.name.startswith("sequences"):
        assert script.dataset_config == "sequences" and script.num_frames == 8
    else:
        assert script.num_frames == 2
    if sft.chat_template_path:
        template = Path(sft.chat_template_path).read_text()
        # the answer's end of turn is supervised: the tokenizer's EOS (Vicuna) or ChatML's <|im_end|>
        assert "{% generation %}" in template and (
            "eos_token" in template or "'<|im_end|>' }}{% endgeneration" in template
        )


def test_table3_recipe_values(tmp_path):
    _, sft, model, pruning = _parse("trainer/recipes/llava-next-video-7b/qlora_prune5.yaml", tmp_path)
    assert model.model_name_or_path == "llava-hf/LLaVA-NeXT-Video-7B-hf"
    assert model.load_in_4bit and model.bnb_4bit_quant_type == "nf4" and model.use_bnb_nested_quant
    assert (model.lora_r, model.lora_alpha) == (64, 128)
    assert sft.per_device_train_batch_size == 2 and sft.learning_rate == 1e-4
    assert sft.warmup_steps == 50 and sft.max_grad_norm == 1.0 and sft.num_train_epochs == 1
    assert (pruning.pruning_method, pruning.pruning_sparsity) == ("magnitude", 0.05)


def test_ablations_differ_from_table3_in_one_thing(tmp_path):
    base = yaml.safe_load(Path("trainer/recipes/llava-next-video-7b/qlora_prune5.yaml").read_text())
    expected = {
        "qlora_prune1.yaml": {"pruning_sparsity": 0.01},
        "qlora_prune10.yaml": {"pruning_sparsity": 0.1},
        "qlora_prune5_10k.yaml": {"dataset_config": "sample_10k"},
        "qlora.yaml": {"pruning_method": "none", "pruning_sparsity": 0.0},
        "lora.yaml": {
            "load_in_4bit": False,
            "pruning_method": "none",
            "pruning_sparsity": 0.0,
            "activation_checkpointing": False,
        },
    }
    for name, diff in expected.items():
        recipe = yaml.safe_load(Path(f"trainer/recipes/llava-next-video-7b/{name}").read_text())
        changed = {k: recipe.get(k) for k in set(base) | set(recipe) if base.get(k) != recipe.get(k)}
        assert changed == diff, name


def test_tiny_recipes_suit_two_cpu_cores(tmp_path):
    for name in ("lora", "qlora_prune"):
        _, sft, model, pruning = _parse(f"trainer/recipes/tiny/{name}.yaml", tmp_path)
        assert not sft.bf16 and not sft.activation_checkpointing and sft.dataloader_num_workers <= 1
        assert model.family == "llava-next-video" and model.lora_modules_to_save == ["lm_head"]
        assert 8 <= sft.per_device_train_batch_size <= 16 and 2e-3 <= sft.learning_rate <= 5e-3
    assert model.load_in_4bit and (pruning.pruning_method, pruning.pruning_sparsity) == ("magnitude", 0.05)


def test_sequences_recipes_one_per_family_never_truncate(tmp_path):
    families = set()
    for recipe in sorted(Path("trainer/recipes").glob("*/sequences_*.yaml")):
        _, sft, model, _ = _parse(recipe, tmp_path)
        families.add(model.family)
        assert model.on_overlong == "error"
        if recipe.parent.name != "tiny":
            assert sft.max_length and sft.per_device_train_batch_size * sft.gradient_accumulation_steps == 4
    assert families == {"llava-next-video", "video-llava", "llava-onevision", "qwen2.5-vl"}
    _, sft, model, pruning = _parse("trainer/recipes/tiny/sequences_lora_prune.yaml", tmp_path)
    assert not sft.bf16 and not sft.activation_checkpointing and sft.dataloader_num_workers <= 1
    assert model.lora_modules_to_save == ["lm_head"] and (pruning.pruning_method, pruning.pruning_sparsity) == (
        "magnitude",
        0.05,
    )


def test_overrides_win_and_bad_values_are_named(tmp_path):
    _, sft, model, _ = _parse("trainer/recipes/tiny/lora.yaml", tmp_path, "--lora_r", "4", "--max_steps", "3")
    assert model.lora_r == 4 and sft.max_steps == 3
    with pytest.raises(ValueError, match="on_overlong 'cut'"):
        _parse("trainer/recipes/tiny/lora.yaml", tmp_path, "--on_overlong", "cut")
    with pytest.raises(ValueError, match="pruning_sparsity"):
        _parse("trainer/recipes/tiny/lora.yaml", tmp_path, "--pruning_method", "magnitude")
    with pytest.raises(ValueError, match="dataset_name is required"):
        parse_args(["--config", "trainer/recipes/tiny/lora.yaml", "--output_dir", str(tmp_path)])


@pytest.mark.parametrize("recipe", sorted(Path("trainer/recipes").rglob("*.yaml")), ids=lambda p: p.name)
def test_a_cited_results_file_exists_or_the_figure_is_marked_unmeasured(recipe):
    header = " ".join(line.lstrip("# ") for line in recipe.read_text().splitlines() if line.startswith("#"))
    for cited in re.findall(r"benchmarks/results/[\w.-]+\w", header):
        assert Path(cited).is_file() or "not measured" in header.lower(), f"{recipe} cites {cited}, which is missing"
