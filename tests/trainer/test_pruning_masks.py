import json

import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open
from transformers import AutoModelForImageTextToText

from dataset_builder.prompts import PROMPT_TEMPLATES
from trainer.models.families import get_family
from trainer.pruning.masks import (
    MASKS_FILE,
    REPORT_FILE,
    SavedMasks,
    apply_masks,
    canonical_name,
    load_masks,
    mask_sparsity,
    save_masks,
)
from trainer.pruning.methods import PruningConfig, collect_targets, compute_masks
from trainer.tiny.build import build_tiny_model


LNV = get_family("llava-next-video")
CORPUS = [*PROMPT_TEMPLATES, "A new building was built in the north-east.", "A road was widened in the south."]


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return build_tiny_model("llava-next-video", tmp_path_factory.mktemp("tiny-lnv"), corpus=CORPUS)


def _load(path):
    return AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)


def _lora(model, seed=0):
    torch.manual_seed(seed)
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=LNV.lora_target_modules,
        init_lora_weights=False,  # random B: the adapter changes the logits
    )
    return get_peft_model(model, config)


def _random_masks(shapes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.rand(shape, generator=generator) > 0.3 for name, shape in shapes.items()}


def test_round_trip_is_exact_and_bit_packed(tmp_path):
    # Sizes that are not multiples of 8 exercise the padding of the last packed byte.
    masks = _random_masks({"a.q_proj": (7, 13), "b.up_proj": (64, 64), "c.down_proj": (3, 1)})
    save_masks(masks, tmp_path, {"method": "magnitude", "target_sparsity": 0.3, "threshold": 0.01})
    loaded = load_masks(tmp_path)
    assert loaded.keys() == masks.keys()
    for name, mask in masks.items():
        assert loaded[name].dtype == torch.bool and torch.equal(loaded[name], mask), name
    with safe_open(str(tmp_path / MASKS_FILE), framework="pt") as f:
        for name, mask in masks.items():
            packed = f.get_tensor(name)
            assert packed.dtype == torch.uint8 and packed.numel() == (mask.numel() + 7) // 8
        assert json.loads(f.metadata()["shapes"]) == {n: list(m.shape) for n, m in masks.items()}
    assert sorted(p.name for p in tmp_path.iterdir()) == [REPORT_FILE, MASKS_FILE]  # no temporary files left


def test_saved_masks_are_what_the_folder_holds_packed(tmp_path):
    masks = _random_masks({"a.q_proj": (7, 13), "b.up_proj": (64, 64)})
    written = save_masks(masks, tmp_path, {"method": "magnitude", "target_sparsity": 0.3})
    read = SavedMasks.read(tmp_path)
    report = json.loads((tmp_path / REPORT_FILE).read_text())
    for saved in (written, read):
        assert saved.folder == tmp_path and saved.report == report
        assert saved.shapes == {"a.q_proj": [7, 13], "b.up_proj": [64, 64]}
        assert all(bits.dtype == torch.uint8 for bits in saved.packed.values())  # 8 weights per byte until unpacked
        unpacked = saved.unpack()
        assert unpacked.keys() == masks.keys() and all(torch.equal(unpacked[n], masks[n]) for n in masks)
    with pytest.raises(FileNotFoundError, match=MASKS_FILE):
        SavedMasks.read(tmp_path / "empty")


def test_report_states_the_sparsity_reached_per_module(tmp_path):
    masks = {"x": torch.tensor([[True, False], [False, False]]), "y": torch.ones(2, 3, dtype=torch.bool)}
    save_masks(masks, tmp_path, {"method": "magnitude", "target_sparsity": 0.3, "threshold": 0.5})
    report = json.loads((tmp_path / REPORT_FILE).read_text())
    assert report["method"] == "magnitude" and report["target_sparsity"] == 0.3 and report["threshold"] == 0.5
    assert report["per_module_sparsity"] == {"x": 0.75, "y": 0.0}
    assert report["sparsity_reached"] == pytest.approx(3 / 10)
    assert report["n_pruned"] == 3 and report["n_weights"] == 10
    assert mask_sparsity(masks)[0] == pytest.approx(0.3)


def test_load_returns_none_without_masks_and_rejects_foreign_files(tmp_path):
    assert load_masks(tmp_path) is None
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2, dtype=torch.uint8)}, str(tmp_path / MASKS_FILE), metadata={"format": "other"})
    with pytest.raises(ValueError, match="format"):
        load_masks(tmp_path)
    with pytest.raises(ValueError, match="torch.bool"):
        save_masks({"x": torch.ones(2, 2)}, tmp_path / "out", {})


def test_canonical_names_are_the_same_with_and_without_peft(tiny_path):
    plain = set(collect_targets(_load(tiny_path), LNV))
    wrapped = _lora(_load(tiny_path))
    assert set(collect_targets(wrapped, LNV)) == plain
    peft_names = [n for n, _ in wrapped.named_modules() if n.endswith("q_proj.base_layer")]
    assert peft_names and all(canonical_name(n) in plain for n in peft_names)
    assert canonical_name("base_model.model.model.language_model.layers.0.mlp.up_proj.base_layer") == (
        "model.language_model.layers.0.mlp.up_proj"
    )


def test_apply_masks_zeroes_the_base_layer_under_peft_and_leaves_lora_alone(tiny_path):
    model = _lora(_load(tiny_path))
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    name = "model.language_model.layers.1.self_attn.q_proj"
    base = model.base_model.model.model.language_model.layers[1].self_attn.q_proj.base_layer.weight
    masks = _random_masks({name: tuple(base.shape)})
    assert (base[~masks[name]] != 0).all()
    apply_masks(model, masks)
    assert (base[~masks[name]] == 0).all()
    assert (base[masks[name]] != 0).all()
    for n, p in model.named_parameters():
        if "lora_" in n:
            assert torch.equal(p, lora_before[n]), n


def test_apply_masks_refuses_unknown_names_and_wrong_shapes(tiny_path):
    model = _load(tiny_path)
    with pytest.raises(ValueError, match="match no module.*language_model.layers.9"):
        apply_masks(model, {"model.language_model.layers.9.self_attn.q_proj": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(ValueError, match="shape"):
        apply_masks(model, {"model.language_model.layers.0.self_attn.q_proj": torch.ones(2, 2, dtype=torch.bool)})


def test_adapter_plus_masks_reload_gives_bit_identical_logits(tiny_path, tmp_path):
    inputs = {"input_ids": torch.randint(10, 200, (2, 16)), "attention_mask": torch.ones(2, 16, dtype=torch.long)}
    base = _load(tiny_path)
    masks, metadata = compute_masks(base, PruningConfig(pruning_method="magnitude", pruning_sparsity=0.05), LNV)
    apply_masks(base, masks)
    trained = _lora(base).eval()
    with torch.no_grad():
        expected = trained(**inputs).logits
    trained.save_pretrained(tmp_path)
    save_masks(masks, tmp_path, metadata)

    fresh = _load(tiny_path)
    apply_masks(fresh, load_masks(tmp_path))
    reloaded = PeftModel.from_pretrained(fresh, tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits, expected)

    # Without the masks the reload is not the trained model: the masks must travel with the adapter.
    unmasked = PeftModel.from_pretrained(_load(tiny_path), tmp_path).eval()
    with torch.no_grad():
        assert not torch.equal(unmasked(**inputs).logits, expected)
    assert not any("mask" in k for k in _adapter_keys(tmp_path))


def _adapter_keys(folder):
    with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as f:
        return list(f.keys())


def test_packbits_layout_is_numpy_packbits_of_the_flattened_mask(tmp_path):
    mask = torch.tensor([[True, False, True], [True, True, False], [False, False, True]])
    save_masks({"m": mask}, tmp_path, {})
    with safe_open(str(tmp_path / MASKS_FILE), framework="pt") as f:
        packed = f.get_tensor("m").numpy()
    assert np.array_equal(packed, np.packbits(mask.numpy().reshape(-1)))
