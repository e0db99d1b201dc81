"""upload.roundtrip, the quickstart's load-back check: equal when the Hub holds what was pushed, named when not."""

import pytest

from dataset_builder.build import BuildConfig, build
from dataset_builder.prompts import PROMPT_TEMPLATES
from dataset_builder.synthetic.synth import SynthConfig, generate_tree
from upload.push import main as push_main
from upload.roundtrip import RoundTripError, check_adapter, check_dataset, run_in_fresh_process


REPOS = {"dataset": "geo-org/roundtrip-data", "model": "geo-org/roundtrip-lora"}


def _dataset(root, seed):
    fmow, out = str(root / "fmow"), str(root / "dataset")
    generate_tree(SynthConfig(out=fmow, locations=12, seed=seed, image_size=64, oversize_fraction=0, min_dates=3))
    build(BuildConfig(fmow_root=fmow, out=out, frame_size=32, sample_size=4, sequences=True))
    return root / "dataset"


def _adapter(base, out, seed):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from trainer.models.families import get_family
    from trainer.pruning.masks import apply_masks, save_masks

    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_pretrained(base)
    weight = model.model.language_model.layers[0].mlp.down_proj.weight
    masks = {"model.language_model.layers.0.mlp.down_proj": weight.abs() > weight.abs().median()}
    apply_masks(model, masks)
    targets = get_family("llava-next-video").lora_target_modules
    get_peft_model(model, LoraConfig(r=2, target_modules=targets, init_lora_weights=False)).save_pretrained(out)
    save_masks(masks, out, {"method": "magnitude", "target_sparsity": 0.5})
    return out


@pytest.fixture(scope="module")
def pushed(hub_server, tmp_path_factory):
    from trainer.tiny.build import build_tiny_model

    root = tmp_path_factory.mktemp("roundtrip")
    dataset = _dataset(root / "a", seed=3)
    base = build_tiny_model("llava-next-video", root / "base", image_size=32, corpus=list(PROMPT_TEMPLATES))
    adapter = _adapter(base, root / "adapter", seed=0)
    assert push_main(["dataset", str(dataset), "--repo-id", REPOS["dataset"]]) == 0
    assert push_main(["model", str(adapter), "--repo-id", REPOS["model"]]) == 0
    return root, dataset, base, adapter


def test_a_fresh_process_loads_back_what_was_pushed(pushed, tmp_path):
    root, dataset, base, adapter = pushed
    report = run_in_fresh_process(
        REPOS, dataset, adapter, base, env={}, hf_home=tmp_path / "empty_home", log_path=tmp_path / "verify.log"
    )
    from datasets import load_dataset

    assert list(report)[:3] == ["default", "sample_10k", "sequences"]  # every config the card lists
    for config in ("default", "sample_10k", "sequences"):
        local = load_dataset(str(dataset), config)
        assert report[config] == {split: local[split].num_rows for split in local}
    assert report["adapter_tensors_identical"] is True and report["masks"] == 1
    # the fresh process downloaded into its own empty cache
    assert any((tmp_path / "empty_home").rglob("adapter_model.safetensors"))
    with pytest.raises(ValueError, match="must be empty"):
        run_in_fresh_process(REPOS, dataset, adapter, base, env={}, hf_home=tmp_path / "empty_home", log_path="x")


def test_a_different_adapter_or_dataset_is_named(pushed, tmp_path):
    root, dataset, base, adapter = pushed
    other = _adapter(base, tmp_path / "other_adapter", seed=1)
    with pytest.raises(RoundTripError, match=r"tensor \S+lora_\S+ differs from .*other_adapter"):
        check_adapter(REPOS["model"], other, base)
    other_data = _dataset(tmp_path / "b", seed=4)
    with pytest.raises(RoundTripError, match=r"geo-org/roundtrip-data \(default, \w+\): '(id|conversations)' differs"):
        check_dataset(REPOS["dataset"], other_data)
    with pytest.raises(RoundTripError, match=r"\(sequences, \w+\): '(id|conversations)' differs"):
        check_dataset(REPOS["dataset"], other_data, configs=["sequences"])


def test_a_failed_check_stops_the_fresh_process_with_its_reason(pushed, tmp_path):
    root, dataset, base, _ = pushed
    other = _adapter(base, tmp_path / "other_adapter", seed=1)
    with pytest.raises(RoundTripError, match="round trip failed") as err:
        run_in_fresh_process(REPOS, dataset, other, base, env={}, hf_home=tmp_path / "h", log_path=tmp_path / "l")
    assert "differs from" in str(err.value) and "differs from" in (tmp_path / "l").read_text()
