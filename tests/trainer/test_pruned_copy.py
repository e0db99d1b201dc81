"""The pruned copy: tensor by tensor from the safetensors shards, the same masks and weights as pruning the loaded
model, in the checkpoint's own dtype, every other byte unchanged; the loaded path where streaming cannot work; NF4
after pruning keeps the zeros; the masks are returned as well as saved."""

import json
import logging
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from dataset_builder.prompts import PROMPT_TEMPLATES
from trainer.models.families import get_family
from trainer.models.loading import bitsandbytes_config
from trainer.pruning.masks import MASKS_FILE, apply_masks, load_masks, mask_sparsity
from trainer.pruning.methods import PruningConfig, collect_targets, compute_masks, magnitude_masks
from trainer.pruning.pruned_copy import (
    CheckpointWeights,
    StreamingUnsupported,
    checkpoint_entries,
    prune_before_quantization,
    read_header,
    target_entries,
)
from trainer.tiny.build import build_tiny_model


CORPUS = [*PROMPT_TEMPLATES, "A new building was built in the north-east.", "A road was widened in the south."]
CONFIG = PruningConfig(pruning_method="magnitude", pruning_sparsity=0.05, pruning_threshold_sample_size=20_000)
LNV = get_family("llava-next-video")


def _tiny(root, family, dtype=torch.float32, max_shard_size=None):
    path = build_tiny_model(
        family, root / f"{family}-src", image_size=64 if family == "qwen2.5-vl" else 32, corpus=CORPUS
    )
    if dtype == torch.float32 and max_shard_size is None:
        return path
    out = root / f"{family}-{str(dtype)[6:]}"
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype)
    model.save_pretrained(out, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    for extra in path.iterdir():  # processor and tokenizer files
        if not (out / extra.name).exists() and not extra.name.endswith(".safetensors"):
            shutil.copy(extra, out / extra.name)
    return out


def _same(masks, other):
    return masks.keys() == other.keys() and all(torch.equal(masks[n], other[n]) for n in masks)


def _tensors(folder):
    tensors = {}
    for shard in sorted(folder.glob("*.safetensors")):
        if shard.name != MASKS_FILE:
            tensors.update(load_file(shard))
    return tensors


@pytest.mark.parametrize(
    ("family", "dtype", "shard"),
    [
        ("llava-next-video", torch.float32, None),
        ("llava-next-video", torch.bfloat16, "200KB"),  # bf16 ties, several shards and an index
        ("qwen2.5-vl", torch.bfloat16, None),  # another on-disk key layout (model.layers.*)
        ("ccexpert", torch.float32, None),
    ],
)
def test_streaming_equals_pruning_the_loaded_model(family, dtype, shard, tmp_path):
    source = _tiny(tmp_path, family, dtype, shard)
    if shard:
        assert len(list(source.glob("*.safetensors"))) > 1 and (source / "model.safetensors.index.json").is_file()
    copy = prune_before_quantization(source, CONFIG, tmp_path / "pruned", get_family(family))
    out = copy.path
    report = json.loads((out / "pruning.json").read_text())
    assert report["pruned_by"].startswith("streaming") and report["dtype"] == {torch.float32: "F32"}.get(dtype, "BF16")

    loaded = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype)
    expected, metadata = compute_masks(loaded, CONFIG, get_family(family))
    masks = load_masks(out)
    assert masks.keys() == expected.keys()
    assert all(torch.equal(masks[n], expected[n]) for n in masks)  # the reloaded masks are the in-memory ones
    # What the callback receives: the masks and the report saved, and where.
    assert _same(copy.masks.unpack(), masks) and copy.masks.folder == out and copy.masks.report == report
    assert report["threshold"] == metadata["threshold"]
    n_weights = sum(m.numel() for m in masks.values())
    assert report["n_pruned"] == round(0.05 * n_weights) == sum(int((~m).sum()) for m in masks.values())

    # Byte for byte what save_pretrained writes of the loaded model with the masks applied, in the same dtype.
    apply_masks(loaded, masks)
    reloaded = AutoModelForImageTextToText.from_pretrained(out, dtype=dtype)
    for (name, a), (_, b) in zip(loaded.state_dict().items(), reloaded.state_dict().items(), strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    before, after = _tensors(source), _tensors(out)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert after.keys() == before.keys() and all(after[k].dtype == before[k].dtype for k in before)
    assert len(changed) == len(masks)  # only the targets' tensors differ
    assert (out / "processor_config.json").is_file() or (out / "preprocessor_config.json").is_file()
    if shard:
        assert (out / "model.safetensors.index.json").read_bytes() == (
            source / "model.safetensors.index.json"
        ).read_bytes()


def test_lazy_weights_read_one_tensor_per_access(tmp_path):
    source = _tiny(tmp_path, "llava-next-video")
    entries = checkpoint_entries(source)
    model = AutoModelForImageTextToText.from_pretrained(source)
    targets = collect_targets(model, LNV)
    found = target_entries(model, targets, entries)
    weights = CheckpointWeights(found)
    assert weights.numels() == {n: layer.weight.numel() for n, layer in targets.items()}
    for name, layer in targets.items():
        assert torch.equal(weights[name], layer.weight.detach())
    streamed, threshold = magnitude_masks(weights, 0.1, sample_size=10_000)
    in_memory, same = magnitude_masks({n: t.weight for n, t in targets.items()}, 0.1, sample_size=10_000)
    assert threshold == same and all(torch.equal(streamed[n], in_memory[n]) for n in streamed)


def test_header_offsets_cover_the_file_exactly(tmp_path):
    source = _tiny(tmp_path, "llava-next-video")
    entries = read_header(source / "model.safetensors")
    spans = sorted((e.start, e.end) for e in entries.values())
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert spans[-1][1] == (source / "model.safetensors").stat().st_size


def test_a_target_missing_from_the_shards_is_named(tmp_path):
    source = _tiny(tmp_path, "llava-next-video")
    entries = checkpoint_entries(source)
    model = AutoModelForImageTextToText.from_pretrained(source)
    key = "language_model.model.layers.0.mlp.up_proj.weight"
    del entries[key]
    with pytest.raises(StreamingUnsupported, match="layers.0.mlp.up_proj"):
        target_entries(model, collect_targets(model, LNV), entries)


def test_without_safetensors_the_model_is_loaded_in_its_own_dtype(tmp_path, caplog):
    source = tmp_path / "bin"
    shutil.copytree(_tiny(tmp_path, "llava-next-video", torch.bfloat16), source)
    state = load_file(source / "model.safetensors")
    (source / "model.safetensors").unlink()
    torch.save(state, source / "pytorch_model.bin")
    with caplog.at_level(logging.WARNING, logger="trainer.pruning.pruned_copy"):
        copy = prune_before_quantization(source, CONFIG, tmp_path / "pruned", LNV)
    assert "loading it whole" in caplog.text
    out = copy.path
    report = json.loads((out / "pruning.json").read_text())
    assert report["pruned_by"] == "loading the model" and report["dtype"] == "torch.bfloat16"
    assert AutoModelForImageTextToText.from_pretrained(out).dtype == torch.bfloat16
    assert report["n_pruned"] == round(0.05 * report["n_weights"])
    masks = load_masks(out)
    assert copy.masks.folder == out and copy.masks.report == report
    assert _same(copy.masks.unpack(), masks)  # the masks returned are the masks saved


# ---- then quantized: NF4 keeps the zeros ----------------------------------------------------------------------------
def _bnb_4bit():
    """The project's own QLoRA config (NF4, double quantization; vision and lm_head kept), fp32 compute on CPU."""
    return bitsandbytes_config(LNV, compute_dtype=torch.float32)


def test_prune_before_quantization_then_nf4_keeps_exact_zeros(tmp_path):
    import bitsandbytes.functional as bnbf

    tiny_path = _tiny(tmp_path, "llava-next-video")
    # 30 %: at 5 % the pruned weights are so small that NF4 rounds most of them to 0 anyway, a weaker check.
    config = PruningConfig(pruning_method="magnitude", pruning_sparsity=0.3)
    copy = prune_before_quantization(tiny_path, config, tmp_path / "pruned", LNV)
    out = copy.path
    assert (out / "config.json").is_file() and (out / "processor_config.json").is_file()
    report = json.loads((out / "pruning.json").read_text())
    assert report["source"] == str(tiny_path) and report["method"] == "magnitude"
    masks = load_masks(out)
    assert _same(copy.masks.unpack(), masks)  # the masks returned are the masks saved
    assert math.isclose(report["sparsity_reached"], mask_sparsity(masks)[0])

    def dequantized(path):
        model = AutoModelForImageTextToText.from_pretrained(path, quantization_config=_bnb_4bit())
        layers = collect_targets(model, LNV, require_full_precision=False)
        assert all(type(layer.weight).__name__ == "Params4bit" for layer in layers.values())
        return {
            n: bnbf.dequantize_4bit(m.weight.data, m.weight.quant_state).reshape(masks[n].shape)
            for n, m in layers.items()
        }

    pruned, dense = dequantized(out), dequantized(tiny_path)
    full_targets = collect_targets(AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32), LNV)
    for name, mask in masks.items():
        assert (full_targets[name].weight[~mask] == 0).all()
        assert (pruned[name][~mask] == 0).all(), name  # NF4 has an exact zero code
        assert (dense[name][~mask] != 0).sum() > 0.5 * (~mask).sum(), name  # unpruned, most are not 0 in NF4
        # Each 64-weight block keeps its absmax (the largest weight is never pruned): kept weights get the codes
        # they get without pruning.
        assert torch.equal(pruned[name][mask], dense[name][mask]), name

    # The same request reuses the copy and returns its masks; another one refuses to overwrite it.
    again = prune_before_quantization(tiny_path, config, out, LNV)
    assert again.path == out and _same(again.masks.unpack(), masks)
    with pytest.raises(FileExistsError, match="pruned the same way"):
        prune_before_quantization(tiny_path, PruningConfig(pruning_method="magnitude", pruning_sparsity=0.1), out, LNV)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind


def test_a_wanda_copy_is_calibrated_on_the_device_it_is_given(tmp_path):
    source = _tiny(tmp_path, "llava-next-video")
    config = PruningConfig(pruning_method="wanda", pruning_sparsity=0.25)
    batch = {"input_ids": torch.randint(10, 200, (2, 12)), "attention_mask": torch.ones(2, 12, dtype=torch.long)}
    copy = prune_before_quantization(source, config, tmp_path / "pruned", LNV, calibration=[batch], device="cpu")
    report = json.loads((copy.path / "pruning.json").read_text())
    assert report["pruned_by"] == "loading the model"
    assert report["pruned_on"] == "cpu" and report["calibrated_on"] == "cpu"
    for name, mask in copy.masks.unpack().items():  # Wanda: the same count pruned in every row
        assert ((~mask).sum(dim=1) == round(0.25 * mask.shape[1])).all(), name
