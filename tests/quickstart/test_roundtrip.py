"""upload.roundtrip, the quickstart's load-back check: equal when the Hub holds what was pushed, named when not.

The adapter is loaded back by its card's snippet, on a base pushed with `geollava-push base` and named by its Hub id.
"""

import json

import pytest

from dataset_builder.build import BuildConfig, build
from dataset_builder.prompts import PROMPT_TEMPLATES
from dataset_builder.synthetic.synth import SynthConfig, generate_tree
from model_cards.render import main as card_main
from upload.push import main as push_main
from upload.roundtrip import RoundTripError, check_adapter, check_dataset, run_in_fresh_process


REPOS = {"dataset": "geo-org/roundtrip-data", "model": "geo-org/roundtrip-lora"}
BASE_REPO = "geo-org/roundtrip-tiny-base"


def _dataset(root, seed):
    fmow, out = str(root / "fmow"), str(root / "dataset")
    generate_tree(SynthConfig(out=fmow, locations=12, seed=seed, image_size=64, oversize_fraction=0, min_dates=3))
    build(BuildConfig(fmow_root=fmow, out=out, frame_size=32, sample_size=4, sequences=True))
    return root / "dataset"


def _adapter(base, out, seed, base_id=BASE_REPO):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from trainer.models.families import get_family
    from trainer.pruning.masks import apply_masks, save_masks

    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_pretrained(base)
    weight = model.model.language_model.layers[0].mlp.down_proj.weight
    masks = {"model.language_model.layers.0.mlp.down_proj": weight.abs() > weight.abs().median()}
    apply_masks(model, masks)
    targets = get_family("llava-next-video").lora_target_modules
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=targets, init_lora_weights=False))
    peft_model.peft_config["default"].base_model_name_or_path = base_id  # as geollava-train records a Hub base
    peft_model.save_pretrained(out)
    AutoProcessor.from_pretrained(base).save_pretrained(out)  # the card's snippet loads the processor from the repo
    save_masks(masks, out, {"method": "magnitude", "target_sparsity": 0.5})
    assert card_main(["model", str(out), "--repo-id", REPOS["model"]]) == 0
    return out


@pytest.fixture(scope="module")
def pushed(hub_server, tmp_path_factory):
    from trainer.tiny.build import build_tiny_model

    root = tmp_path_factory.mktemp("roundtrip")
    dataset = _dataset(root / "a", seed=3)
    base = build_tiny_model("llava-next-video", root / "base", image_size=32, corpus=list(PROMPT_TEMPLATES))
    assert card_main(["base", str(base), "--repo-id", BASE_REPO]) == 0
    assert push_main(["base", str(base), "--repo-id", BASE_REPO]) == 0
    adapter = _adapter(base, root / "adapter", seed=0)
    assert push_main(["dataset", str(dataset), "--repo-id", REPOS["dataset"]]) == 0
    assert push_main(["model", str(adapter), "--repo-id", REPOS["model"]]) == 0
    return root, dataset, base, adapter


def test_a_base_push_carries_the_model_and_its_card_not_the_builders_notes(pushed):
    from huggingface_hub import HfApi, ModelCard

    files = set(HfApi().list_repo_files(BASE_REPO))
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= files
    assert "tiny_model.json" not in files  # it records the local folder it was built in
    card = ModelCard.load(BASE_REPO)
    assert {"tiny", "random-weights"} <= set(card.data.tags) and card.data.library_name == "transformers"
    assert "**random weights**" in card.text and f'from_pretrained("{BASE_REPO}")' in card.text


def test_a_fresh_process_loads_back_what_was_pushed(pushed, tmp_path):
    root, dataset, base, adapter = pushed
    report = run_in_fresh_process(
        REPOS, dataset, adapter, BASE_REPO, env={}, hf_home=tmp_path / "empty_home", log_path=tmp_path / "verify.log"
    )
    from datasets import load_dataset

    assert list(report)[:3] == ["default", "sample_10k", "sequences"]  # every config the card lists
    for config in ("default", "sample_10k", "sequences"):
        local = load_dataset(str(dataset), config)
        assert report[config] == {split: local[split].num_rows for split in local}
    assert report["adapter_tensors_identical"] is True and report["masks"] == 1
    assert report["loaded_by"] == "the card's snippet" and report["base_model"] == BASE_REPO
    # the fresh process downloaded into its own empty cache, the base included
    assert any((tmp_path / "empty_home").rglob("adapter_model.safetensors"))
    assert any((tmp_path / "empty_home").rglob("models--geo-org--roundtrip-tiny-base"))
    with pytest.raises(ValueError, match="must be empty"):
        run_in_fresh_process(REPOS, dataset, adapter, BASE_REPO, env={}, hf_home=tmp_path / "empty_home", log_path="x")


def test_a_different_adapter_or_dataset_is_named(pushed, tmp_path):
    root, dataset, base, adapter = pushed
    other = _adapter(base, tmp_path / "other_adapter", seed=1)
    with pytest.raises(RoundTripError, match=r"tensor \S+lora_\S+ differs from .*other_adapter"):
        check_adapter(REPOS["model"], other, BASE_REPO)
    other_data = _dataset(tmp_path / "b", seed=4)
    with pytest.raises(RoundTripError, match=r"geo-org/roundtrip-data \(default, \w+\): '(id|conversations)' differs"):
        check_dataset(REPOS["dataset"], other_data)
    with pytest.raises(RoundTripError, match=r"\(sequences, \w+\): '(id|conversations)' differs"):
        check_dataset(REPOS["dataset"], other_data, configs=["sequences"])


def test_a_failed_check_stops_the_fresh_process_with_its_reason(pushed, tmp_path):
    root, dataset, base, _ = pushed
    other = _adapter(base, tmp_path / "other_adapter", seed=1)
    with pytest.raises(RoundTripError, match="round trip failed") as err:
        run_in_fresh_process(REPOS, dataset, other, BASE_REPO, env={}, hf_home=tmp_path / "h", log_path=tmp_path / "l")
    assert "differs from" in str(err.value) and "differs from" in (tmp_path / "l").read_text()


def test_an_adapter_whose_card_names_no_hub_base_is_refused(pushed, tmp_path):
    # trained on a local folder: its card says so, has no snippet, and the Hub user could not load it
    root, dataset, base, _ = pushed
    local = _adapter(base, tmp_path / "local_base_adapter", seed=0, base_id=str(base))
    assert json.loads((local / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)
    text = (local / "README.md").read_text()
    assert "The base model is a local folder" in text and "<base model>" not in text
    assert f"geollava-push base {base} --repo-id geo-org/base" in text
    assert push_main(["model", str(local), "--repo-id", "geo-org/roundtrip-local-base"]) == 0
    with pytest.raises(RoundTripError, match="names no base_model"):
        check_adapter("geo-org/roundtrip-local-base", local, base)
