"""geollava-export: the streamed merge is PEFT's merge of the masked base; the merged model predicts the same."""

import json

import numpy as np
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor

import trainer.export
from dataset_builder.prompts import PROMPT_TEMPLATES
from tests.serving.helpers import CORPUS, random_masks
from tests.trainer.helpers import tiny_base_and_adapter
from trainer.evaluation.generation import generate_batch
from trainer.export import EXPORT_FILE, export_merged, main
from trainer.models.loading import load_for_inference
from trainer.pruning.masks import apply_masks, load_masks, save_masks
from trainer.pruning.pruned_copy import StreamingUnsupported


FAMILIES = ("llava-next-video", "video-llava", "llava-onevision", "qwen2.5-vl", "ccexpert")


def reference_merge(base, adapter, *, sparse=False) -> dict[str, torch.Tensor]:
    """PEFT's own merge of the masked base (the function the adapter computes), as a state dict."""
    model = AutoModelForImageTextToText.from_pretrained(base)
    masks = load_masks(adapter)
    apply_masks(model, masks)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    if sparse:
        apply_masks(merged, masks)
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}


@pytest.fixture(params=FAMILIES)
def release(request, release_of):
    return release_of(request.param)


def test_streamed_merge_is_the_masked_base_plus_the_update(release):
    merged = AutoModelForImageTextToText.from_pretrained(release.merged)  # alone: no PEFT, no masks
    got, want = merged.state_dict(), reference_merge(release.base, release.adapter)
    assert got.keys() == want.keys()
    base = AutoModelForImageTextToText.from_pretrained(release.base).state_dict()
    changed = 0
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype, name
        torch.testing.assert_close(got[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
        if not torch.equal(base[name], tensor):
            changed += 1
        else:  # every tensor neither the masks nor the adapter touch is the base's, bit for bit
            assert torch.equal(got[name], base[name]), name
    masks = load_masks(release.adapter)
    assert changed >= len(masks) > 0
    report = json.loads((release.merged / EXPORT_FILE).read_text())
    assert report["merged_by"] == "streaming the safetensors shards" and report["masked_modules"] == len(masks)
    assert report["lora_modules"] > 0 and report["pruning"]["method"] == "random" and report["deviation"] is None
    # what servers load beside the weights: the processor with the chat template inference uses
    processor = AutoProcessor.from_pretrained(release.merged)
    _, reference, _ = load_for_inference(release.base, release.adapter)
    assert processor.chat_template == reference.chat_template and processor.chat_template
    assert (release.merged / "generation_config.json").is_file()
    assert not (release.merged / "adapter_config.json").exists()


def test_merged_model_predicts_what_base_adapter_and_masks_predict(release):
    rng = np.random.default_rng(1)
    questions = [PROMPT_TEMPLATES[i] for i in range(3)]
    frames = [[rng.integers(0, 255, (30, 26, 3), dtype=np.uint8) for _ in range(2)] for _ in range(3)]
    merged = load_for_inference(release.merged)
    adapted = load_for_inference(release.base, release.adapter)
    plain = load_for_inference(release.base)
    texts = [generate_batch(*loaded, questions, frames, max_new_tokens=10) for loaded in (merged, adapted, plain)]
    assert texts[0] == texts[1]
    assert texts[1] != texts[2]  # the adapter and the masks change what the model says


def test_sparse_export_prunes_again_and_measures_the_deviation(tmp_path, capsys):
    base, adapter = tiny_base_and_adapter("llava-next-video", tmp_path, CORPUS)
    masks = random_masks(base, "llava-next-video")
    save_masks(masks, adapter, {"method": "random", "target_sparsity": 0.3})
    out = tmp_path / "sparse"
    assert main(["--adapter", str(adapter), "--out", str(out), "--sparse", "true"]) == 0
    printed = capsys.readouterr().out
    got = AutoModelForImageTextToText.from_pretrained(out)
    want = reference_merge(base, adapter, sparse=True)
    dense = reference_merge(base, adapter)
    removed = norm = 0.0
    for name, module in got.named_modules():
        if name in masks:
            weight = module.weight.detach()
            assert (weight[~masks[name]] == 0).all(), name
            torch.testing.assert_close(weight, want[f"{name}.weight"], rtol=1e-5, atol=1e-6)
            removed += float(dense[f"{name}.weight"][~masks[name]].double().square().sum())
            norm += float(dense[f"{name}.weight"].double().square().sum())
    deviation = json.loads((out / EXPORT_FILE).read_text())["deviation"]
    assert deviation["overall"] == pytest.approx((removed / norm) ** 0.5, rel=1e-4) and deviation["overall"] > 0
    assert f"{deviation['overall']:.3e} overall" in printed and deviation["max_module"] in printed


def test_bf16_base_stays_bf16_and_peft_merges_what_streaming_cannot(tmp_path, monkeypatch):
    base, adapter = tiny_base_and_adapter("qwen2.5-vl", tmp_path, CORPUS)
    AutoModelForImageTextToText.from_pretrained(base, dtype=torch.bfloat16).save_pretrained(tmp_path / "bf16")
    AutoProcessor.from_pretrained(base).save_pretrained(tmp_path / "bf16")
    save_masks(random_masks(base, "qwen2.5-vl"), adapter, {"method": "random", "target_sparsity": 0.3})
    streamed = export_merged(adapter, tmp_path / "streamed", tmp_path / "bf16")
    assert streamed.dtype == "bfloat16"

    def unsupported(folder):
        raise StreamingUnsupported("forced for the test")

    monkeypatch.setattr(trainer.export, "read_adapter", unsupported)
    loaded = export_merged(adapter, tmp_path / "loaded", tmp_path / "bf16")
    assert loaded.merged_by == "loading the model" and loaded.dtype == "bfloat16" and loaded.masked_modules > 0
    a = load_file(tmp_path / "streamed" / "model.safetensors")
    b = load_file(tmp_path / "loaded" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == torch.bfloat16 == b[key].dtype, key
        # PEFT adds the update in bf16, the stream in fp32 then rounds once: at most one bf16 step apart
        torch.testing.assert_close(a[key].float(), b[key].float(), rtol=2**-7, atol=1e-3, msg=key)


def test_export_refusals(tmp_path, capsys):
    base, adapter = tiny_base_and_adapter("llava-next-video", tmp_path, CORPUS)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    assert main(["--adapter", str(adapter), "--out", str(tmp_path / "taken")]) == 1
    assert "exists" in capsys.readouterr().err
    assert main(["--adapter", str(base), "--out", str(tmp_path / "m")]) == 1
    assert "adapter_config.json" in capsys.readouterr().err
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": None}))
    assert main(["--adapter", str(adapter), "--out", str(tmp_path / "m")]) == 1
    assert "give --model" in capsys.readouterr().err
    assert main(["--adapter", str(adapter), "--model", str(base), "--out", str(tmp_path / "m")]) == 0
    assert not (tmp_path / "m" / "pruning_masks.safetensors").exists()
