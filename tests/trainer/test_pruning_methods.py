import logging

import pytest
import torch
from torch import nn
from transformers import AutoModelForImageTextToText

from dataset_builder.prompts import PROMPT_TEMPLATES
from trainer.models.families import get_family
from trainer.models.loading import bitsandbytes_config
from trainer.pruning.masks import apply_masks, mask_sparsity
from trainer.pruning.methods import (
    PruningConfig,
    collect_input_norms,
    collect_targets,
    compute_masks,
    exact_threshold,
    magnitude_masks,
    sampled_threshold,
    wanda_masks,
)
from trainer.tiny.build import build_tiny_model


CORPUS = [*PROMPT_TEMPLATES, "A new building was built in the north-east.", "A road was widened in the south."]
LNV = get_family("llava-next-video")
LM_PROJECTIONS = tuple(f"self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "o_proj")) + tuple(
    f"mlp.{p}" for p in ("gate_proj", "up_proj", "down_proj")
)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return build_tiny_model("llava-next-video", tmp_path_factory.mktemp("tiny-lnv"), corpus=CORPUS)


@pytest.fixture(scope="module")
def tiny_qwen_path(tmp_path_factory):
    return build_tiny_model("qwen2.5-vl", tmp_path_factory.mktemp("tiny-qwen"), corpus=CORPUS)


def _load(path):
    return AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)


# ---- config ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"pruning_method": "l1"}, "pruning_method"),
        ({"pruning_method": "magnitude", "pruning_sparsity": 0.0}, "pruning_sparsity"),
        ({"pruning_method": "magnitude", "pruning_sparsity": 1.0}, "pruning_sparsity"),
        ({"pruning_start_step": -1}, "pruning_start_step"),
        ({"pruning_threshold_sample_size": 0}, "pruning_threshold_sample_size"),
        ({"pruning_reapply_every": -2}, "pruning_reapply_every"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        PruningConfig(**kwargs)


def test_config_fields_do_not_clash_with_trl():
    from dataclasses import fields

    from trl import ModelConfig, SFTConfig

    ours = {f.name for f in fields(PruningConfig)}
    assert not ours & {f.name for f in fields(SFTConfig)}
    assert not ours & {f.name for f in fields(ModelConfig)}
    assert PruningConfig(callbacks="a,b").callbacks == ["a", "b"]


# ---- targets and exclusions -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("fixture", ["tiny_path", "tiny_qwen_path"])
def test_targets_are_the_lm_linear_layers_only(fixture, request):
    model = _load(request.getfixturevalue(fixture))
    family = get_family("llava-next-video" if fixture == "tiny_path" else "qwen2.5-vl")
    targets = collect_targets(model, family)
    n_layers = model.config.text_config.num_hidden_layers
    expected = {f"model.language_model.layers.{i}.{p}" for i in range(n_layers) for p in LM_PROJECTIONS}
    assert set(targets) == expected
    for name in targets:
        assert not any(name.startswith(v) for v in family.vision_modules)
    # The vision tower has linear layers of its own (q/k/v too): they exist and are not targets.
    vision_linears = [
        n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith(family.vision_modules)
    ]
    assert vision_linears and not set(vision_linears) & set(targets)


def test_pruning_leaves_everything_but_targets_untouched(tiny_path):
    model = _load(tiny_path)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks, _ = compute_masks(model, PruningConfig(pruning_method="magnitude", pruning_sparsity=0.10), LNV)
    apply_masks(model, masks)
    target_weights = {f"{n}.weight" for n in masks}
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == target_weights  # every target lost weights; embeddings, lm_head, vision, projector did not
    for name in ("lm_head.weight", "model.language_model.embed_tokens.weight"):
        assert torch.equal(dict(model.named_parameters())[name], before[name])


@pytest.mark.parametrize("sparsity", [0.01, 0.05, 0.10, 0.5])
def test_magnitude_reaches_the_exact_sparsity_with_a_global_threshold(tiny_path, sparsity):
    model = _load(tiny_path)
    targets = collect_targets(model, LNV)
    weights = {n: m.weight for n, m in targets.items()}
    total = sum(w.numel() for w in weights.values())
    masks, threshold = magnitude_masks(weights, sparsity)
    n_pruned = sum(int((~m).sum()) for m in masks.values())
    assert n_pruned == round(sparsity * total)
    everything = torch.cat([w.detach().abs().reshape(-1) for w in weights.values()])
    assert threshold == float(everything.kthvalue(round(sparsity * total)).values)
    # Global, not per layer: layers end up at different sparsities, and every pruned weight is below every kept one.
    _, per_module = mask_sparsity(masks)
    assert max(per_module.values()) > min(per_module.values())
    pruned_max = max(float(w.detach().abs()[~masks[n]].max()) for n, w in weights.items())
    kept_min = min(float(w.detach().abs()[masks[n]].min()) for n, w in weights.items())
    assert pruned_max <= threshold < kept_min


def test_ties_in_bf16_still_give_the_exact_count():
    generator = torch.Generator().manual_seed(0)
    weights = {f"l{i}": (torch.randn(256, 512, generator=generator) * (0.01 + 0.01 * i)).bfloat16() for i in range(4)}
    total = sum(w.numel() for w in weights.values())
    k = round(0.05 * total)
    threshold = exact_threshold(weights, 0.05, 100_000)
    assert sum(int((w.abs().float() <= threshold).sum()) for w in weights.values()) > k  # bf16 repeats magnitudes
    masks, found = magnitude_masks(weights, 0.05, sample_size=100_000)
    assert found == threshold
    assert sum(int((~m).sum()) for m in masks.values()) == k
    for name, mask in masks.items():
        magnitude = weights[name].abs().float()
        assert (magnitude[~mask] <= threshold).all() and (magnitude[mask] >= threshold).all()


# ---- threshold accuracy on a model-sized weight set -----------------------------------------------------------------
@pytest.fixture(scope="module")
def big_weights():
    """16.8 M weights in 12 layers of different scales and shapes: big enough that the global quantile matters."""
    generator = torch.Generator().manual_seed(0)
    shapes = [(1024, 1024), (1024, 2048), (2048, 1024)] * 4
    return {
        f"model.language_model.layers.{i}.proj": torch.randn(shape, generator=generator) * (0.01 + 0.02 * i)
        for i, shape in enumerate(shapes)
    }


@pytest.mark.parametrize("sparsity", [0.01, 0.05, 0.10])
def test_sampled_threshold_is_within_a_tenth_of_a_percent_and_exact_threshold_is_exact(big_weights, sparsity):
    everything = torch.cat([w.abs().reshape(-1) for w in big_weights.values()])
    total = everything.numel()
    k = round(sparsity * total)
    reference = float(everything.kthvalue(k).values)

    exact = exact_threshold(big_weights, sparsity, sample_size=200_000)
    assert exact == reference
    assert int((everything <= exact).sum()) == k

    sampled = sampled_threshold(big_weights, sparsity, sample_size=1_000_000)
    reached = float((everything <= sampled).sum()) / total
    # Stated tolerance: +-0.1 % absolute (the standard error at 1 M samples is <= 0.03 %).
    assert abs(reached - sparsity) < 1e-3, (reached, sparsity)
    assert sampled != reference or sparsity == 0  # the estimate is an estimate: exactness comes from the refinement


def test_exact_threshold_widens_a_missed_bracket(big_weights, caplog):
    small = dict(list(big_weights.items())[:2])
    everything = torch.cat([w.abs().reshape(-1) for w in small.values()])
    reference = float(everything.kthvalue(round(0.05 * everything.numel())).values)
    with caplog.at_level(logging.WARNING, logger="trainer.pruning.methods"):
        # No safety margin: with this seed the first bracket misses the 5 % quantile and must widen (twice).
        found = exact_threshold(small, 0.05, sample_size=2000, seed=2, sigmas=0.0)
    assert found == reference
    assert sum("widening" in r.message for r in caplog.records) >= 1


# ---- wanda ----------------------------------------------------------------------------------------------------------
def test_wanda_scores_weight_times_input_norm_per_output_row():
    weight = torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]])
    norms = torch.tensor([10.0, 1.0, 1.0, 1.0])
    masks = wanda_masks({"w": weight}, {"w": norms}, 0.5)
    # Row 0 scores 10, 2, 3, 4: the large input channel saves the smallest weight, magnitude alone would not.
    assert masks["w"].tolist() == [[True, False, False, True], [True, True, False, False]]
    magnitude, _ = magnitude_masks({"w": weight}, 0.25)
    assert not magnitude["w"][0, 0]


def test_collect_input_norms_equals_the_l2_norm_of_the_inputs():
    layer = nn.Linear(4, 3)
    model = nn.Sequential(layer)
    batches = [torch.randn(2, 5, 4), torch.randn(1, 7, 4)]

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x):
            return self.inner(x)

    wrapper = Wrapper().train()
    norms = collect_input_norms(wrapper, {"inner.0": layer}, [{"x": b} for b in batches])
    expected = torch.cat([b.reshape(-1, 4) for b in batches]).norm(dim=0)
    torch.testing.assert_close(norms["inner.0"], expected)
    assert wrapper.training  # mode restored
    assert not layer._forward_hooks  # hooks removed


def test_wanda_on_a_model_prunes_each_row_equally(tiny_path):
    model = _load(tiny_path)
    batch = {"input_ids": torch.randint(10, 200, (2, 12)), "attention_mask": torch.ones(2, 12, dtype=torch.long)}
    masks, meta = compute_masks(model, PruningConfig(pruning_method="wanda", pruning_sparsity=0.25), LNV, [batch])
    assert meta["comparison_group"] == "per-output-row"
    for name, mask in masks.items():
        per_row = (~mask).sum(dim=1)
        assert (per_row == round(0.25 * mask.shape[1])).all(), name
    with pytest.raises(ValueError, match="calibration"):
        compute_masks(model, PruningConfig(pruning_method="wanda", pruning_sparsity=0.25), LNV, None)


# ---- quantized bases ------------------------------------------------------------------------------------------------
def _bnb_4bit():
    """The project's own QLoRA config (NF4, double quantization; vision and lm_head kept), fp32 compute on CPU."""
    return bitsandbytes_config(LNV, compute_dtype=torch.float32)


def test_pruning_a_packed_4bit_base_raises(tiny_path):
    model = AutoModelForImageTextToText.from_pretrained(tiny_path, quantization_config=_bnb_4bit())
    with pytest.raises(TypeError, match="Params4bit.*prune_before_quantization"):
        collect_targets(model, LNV)
    with pytest.raises(TypeError, match="quantized"):
        compute_masks(model, PruningConfig(pruning_method="magnitude", pruning_sparsity=0.05), LNV)
    targets = collect_targets(model, LNV, require_full_precision=False)
    name, layer = next(iter(targets.items()))
    with pytest.raises(TypeError, match="Params4bit"):
        magnitude_masks({name: layer.weight}, 0.05)
    with pytest.raises(TypeError, match="Params4bit"):
        apply_masks(model, {name: torch.ones(layer.out_features, layer.in_features, dtype=torch.bool)})


def test_config_parses_from_yaml_and_flags_with_trl(tmp_path):
    from trl import ModelConfig, SFTConfig, TrlParser

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("output_dir: out\nbf16: false\npruning_method: magnitude\npruning_sparsity: 0.05\n")
    parser = TrlParser((PruningConfig, SFTConfig, ModelConfig))
    pruning, sft, _ = parser.parse_args_and_config(
        ["--config", str(recipe), "--pruning_sparsity", "0.1", "--callbacks", "pruning"]
    )
    assert (pruning.pruning_method, pruning.pruning_sparsity, pruning.callbacks) == ("magnitude", 0.1, ["pruning"])
    assert sft.output_dir == "out"


def test_lora_and_modules_to_save_copies_are_not_targets(tiny_path):
    from peft import LoraConfig, get_peft_model

    saved = "model.language_model.layers.0.mlp.down_proj"
    config = LoraConfig(r=4, target_modules=r".*language_model.*\.(q_proj|v_proj)", modules_to_save=[saved])
    model = get_peft_model(_load(tiny_path), config)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert any(".lora_A." in n for n in names) and any("modules_to_save" in n for n in names)
    targets = collect_targets(model, LNV)
    assert saved not in targets  # its trainable copy and frozen original are both left alone
    assert "model.language_model.layers.0.self_attn.q_proj" in targets  # the LoRA layer's base_layer is
    assert all("lora_" not in n and "modules_to_save" not in n for n in targets)
    assert type(targets["model.language_model.layers.0.self_attn.q_proj"]) is nn.Linear
