"""Pruning a checkpoint tensor by tensor from its safetensors shards: the same masks and weights as pruning the loaded
model, in the checkpoint's own dtype, every other byte unchanged; the loaded path where streaming cannot work."""

import json
import logging
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from dataset_builder.prompts import PROMPT_TEMPLATES
from trainer.models.masks import MASKS_FILE, apply_masks, load_masks
from trainer.tiny.build import build_tiny_model
from trainer.training.checkpoint_pruning import (
    CheckpointWeights,
    StreamingUnsupported,
    checkpoint_entries,
    read_header,
    target_entries,
)
from trainer.training.magnitude import magnitude_masks
from trainer.training.pruning import PruningConfig, collect_targets, compute_masks, prune_before_quantization


CORPUS = [*PROMPT_TEMPLATES, "A new building was built in the north-east.", "A road was widened in the south."]
CONFIG = PruningConfig(pruning_method="magnitude", pruning_sparsity=0.05, pruning_threshold_sample_size=20_000)


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
    out = prune_before_quantization(source, CONFIG, tmp_path / "pruned")
    report = json.loads((out / "pruning.json").read_text())
    assert report["pruned_by"].startswith("streaming") and report["dtype"] == {torch.float32: "F32"}.get(dtype, "BF16")

    loaded = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype)
    expected, metadata = compute_masks(loaded, CONFIG)
    masks = load_masks(out)
    assert masks.keys() == expected.keys()
    assert all(torch.equal(masks[n], expected[n]) for n in masks)  # the reloaded masks are the in-memory ones
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
    targets = collect_targets(model)
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
        target_entries(model, collect_targets(model), entries)


def test_without_safetensors_the_model_is_loaded_in_its_own_dtype(tmp_path, caplog):
    source = tmp_path / "bin"
    shutil.copytree(_tiny(tmp_path, "llava-next-video", torch.bfloat16), source)
    state = load_file(source / "model.safetensors")
    (source / "model.safetensors").unlink()
    torch.save(state, source / "pytorch_model.bin")
    with caplog.at_level(logging.WARNING, logger="trainer.training.pruning"):
        out = prune_before_quantization(source, CONFIG, tmp_path / "pruned")
    assert "loading it whole" in caplog.text
    report = json.loads((out / "pruning.json").read_text())
    assert report["pruned_by"] == "loading the model" and report["dtype"] == "torch.bfloat16"
    assert AutoModelForImageTextToText.from_pretrained(out).dtype == torch.bfloat16
    assert report["n_pruned"] == round(0.05 * report["n_weights"])
