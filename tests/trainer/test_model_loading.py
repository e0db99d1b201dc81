"""Model loading: LoRA lands in the language model only, vision parts frozen and never quantized (4-bit and 8-bit)."""

import bitsandbytes as bnb
import pytest
import torch
from torch import nn

from dataset_builder.prompts import PROMPT_TEMPLATES
from trainer.models.families import get_family
from trainer.pruning.masks import load_masks
from trainer.pruning.methods import PruningConfig
from trainer.tiny.build import build_tiny_model
from trainer.training.config import GeoModelConfig
from trainer.training.model_setup import bitsandbytes_config_from_options, full_modules, load_model


CORPUS = [*PROMPT_TEMPLATES, "A new building was built.", "USER: ASSISTANT:"]
FAMILY = "llava-next-video"


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return build_tiny_model(FAMILY, tmp_path_factory.mktemp("lnv"), image_size=32, corpus=CORPUS)


def _args(path, **kwargs):
    return GeoModelConfig(model_name_or_path=str(path), use_peft=True, lora_r=4, lora_alpha=8, **kwargs)


def _vision(name):
    return any(part in name for part in ("vision_tower", "multi_modal_projector"))


def test_lora_targets_the_language_model_only(tiny_path):
    loaded = load_model(_args(tiny_path))
    lora = [n for n in loaded.trainable_names if "lora_" in n]
    assert lora, "no LoRA parameters"
    assert all("language_model" in n for n in lora)
    assert not any(_vision(n) for n in loaded.trainable_names)
    # Attention and MLP projections of every LM layer.
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert any(f".{proj}.lora_A" in n for n in lora), proj
    assert loaded.trainable_parameters == sum(p.numel() for p in loaded.model.parameters() if p.requires_grad)
    assert loaded.family.name == FAMILY and loaded.quantization is None


def test_modules_to_save_and_projector(tiny_path):
    args = _args(tiny_path, lora_modules_to_save=["lm_head"], train_projector=True)
    assert full_modules(args, get_family(FAMILY)) == ["lm_head", "multi_modal_projector"]
    loaded = load_model(args)
    names = loaded.trainable_names
    assert any("lm_head.modules_to_save" in n for n in names)
    assert any("multi_modal_projector.modules_to_save" in n for n in names)
    assert not any("vision_tower" in n for n in names)


def test_full_finetune_freezes_vision(tiny_path):
    loaded = load_model(GeoModelConfig(model_name_or_path=str(tiny_path), use_peft=False))
    for name, parameter in loaded.model.named_parameters():
        assert parameter.requires_grad == (not _vision(name)), name


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_language_model_unquantized_vision(tiny_path, bits):
    args = _args(tiny_path, **{f"load_in_{bits}bit": True})
    quant = bitsandbytes_config_from_options(args, get_family(FAMILY))
    # Full in-memory prefixes: a bare "vision_tower" silently matches nothing in transformers 5.
    assert "model.vision_tower" in quant.llm_int8_skip_modules
    assert "model.multi_modal_projector" in quant.llm_int8_skip_modules
    if bits == 4:
        assert quant.bnb_4bit_quant_type == "nf4" and quant.bnb_4bit_use_double_quant
    loaded = load_model(args)
    packed = bnb.nn.Linear4bit if bits == 4 else bnb.nn.Linear8bitLt
    lm, vision = [], []
    for name, module in loaded.model.named_modules():
        if isinstance(module, nn.Linear) and "lora_" not in name:
            (vision if _vision(name) else lm).append((name, module))
    assert vision and all(not isinstance(m, packed) and m.weight.dtype == torch.float32 for _, m in vision)
    base_layers = [m for n, m in lm if n.endswith("base_layer")]
    assert base_layers and all(isinstance(m, packed) for m in base_layers)
    assert loaded.quantization == ("nf4" if bits == 4 else "int8")


def test_quantized_pruning_uses_a_pruned_copy(tiny_path, tmp_path):
    pruning = PruningConfig(pruning_method="magnitude", pruning_sparsity=0.05)
    loaded = load_model(_args(tiny_path, load_in_4bit=True), pruning_config=pruning, pruned_dir=tmp_path / "pruned")
    assert loaded.base_path == str(tmp_path / "pruned")
    assert (tmp_path / "pruned" / "pruning_masks.safetensors").is_file()
    # The copy's masks come back with the model, for the pruning callback.
    saved, given = load_masks(tmp_path / "pruned"), loaded.pruned_masks.unpack()
    assert loaded.pruned_masks.folder == tmp_path / "pruned" and saved.keys() == given.keys()
    assert all(torch.equal(saved[n], given[n]) for n in saved)
    assert load_model(_args(tiny_path, load_in_4bit=True)).pruned_masks is None
    with pytest.raises(ValueError, match="pruned_dir"):
        load_model(_args(tiny_path, load_in_4bit=True), pruning_config=pruning)


def test_config_validation(tiny_path):
    with pytest.raises(ValueError, match="family 'nope'"):
        GeoModelConfig(model_name_or_path=str(tiny_path), family="nope")
    with pytest.raises(ValueError, match="on_overlong 'cut'"):
        GeoModelConfig(model_name_or_path=str(tiny_path), on_overlong="cut")
    with pytest.raises(ValueError, match="use_peft"):
        GeoModelConfig(model_name_or_path=str(tiny_path), load_in_4bit=True)
    with pytest.raises(ValueError, match="family 'video-llava'"):
        load_model(_args(tiny_path, family="video-llava"))
