"""geollava-card model: the model card from the adapter's own files, validated offline."""

import json

import pytest
import yaml
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results
from safetensors.torch import save_file

from model_cards.render import main as card_main
from model_cards.render import render_model_card
from model_cards.validate import validate_card


@pytest.fixture
def adapter(tmp_path):
    """A minimal adapter folder: config, weights, run summary, pruning.json (no real model needed for the card)."""
    import torch

    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": "llava-hf/LLaVA-NeXT-Video-7B-hf", "r": 8, "lora_alpha": 16})
    )
    save_file({"w": torch.zeros(2)}, folder / "adapter_model.safetensors")
    summary = {
        "model": {"family": "llava-next-video", "quantization": "4bit-nf4", "lora_r": 8, "lora_alpha": 16},
        "training": {"learning_rate": 2e-4, "per_device_train_batch_size": 2, "max_steps": 500},
        "data": {"dataset_config": "sample_10k", "rows": 10000},
        "timings": {"train": 12.34},
        "versions": {"torch": "2.14.1", "peft": "0.21.2"},
    }
    (folder / "run_summary.json").write_text(json.dumps(summary))
    (folder / "pruning.json").write_text(
        json.dumps({"method": "magnitude", "target_sparsity": 0.05, "sparsity_reached": 0.0501})
    )
    return folder


def _front_matter(text: str) -> dict:
    return yaml.safe_load(text.split("---\n")[1])


def test_model_card_metadata_and_model_index(adapter, tmp_path):
    metrics = tmp_path / "metrics.json"
    values = {"rougeL": 0.61, "bertscore_f1": 0.77, "cider_d": 1.2, "s_m": 0.5, "not_a_metric": 3.0, "bleu4": None}
    metrics.write_text(json.dumps(values))
    argv = ["model", str(adapter), "--repo-id", "geo-org/lora", "--metrics", str(metrics)]
    assert card_main([*argv, "--dataset-repo-id", "geo-org/geollava"]) == 0
    text = (adapter / "README.md").read_text()
    meta = _front_matter(text)
    assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "image-text-to-text"
    assert meta["base_model"] == "llava-hf/LLaVA-NeXT-Video-7B-hf"
    assert meta["datasets"] == ["geo-org/geollava"]
    assert {"pruned", "qlora"} <= set(meta["tags"])
    _, results = model_index_to_eval_results(meta["model-index"])
    assert {r.metric_type: r.metric_value for r in results} == {
        "rougeL": 0.61,
        "bertscore_f1": 0.77,
        "cider_d": 1.2,
        "s_m": 0.5,
    }
    assert 'PeftModel.from_pretrained(base, "geo-org/lora")' in text and "apply_masks(" in text
    assert "| learning_rate | `0.0002` |" in text and "| family | `llava-next-video` |" in text
    assert "| training time (s) | `12.3` |" in text and "| versions | `torch 2.14.1, peft 0.21.2` |" in text
    assert "| base model | `llava-hf/LLaVA-NeXT-Video-7B-hf` |" in text
    assert "5.0 % magnitude pruning" in text and "0.0501" in text
    assert ModelCard(text).data.to_dict()["library_name"] == "peft"


def test_a_sequences_evaluation_names_its_config_and_temporal_scores(adapter, tmp_path):
    metrics = tmp_path / "metrics.json"
    values = {"rougeL": 0.7, "temporal_f1": 0.3, "temporal_majority": {"temporal_f1": 0.2}}
    values["run"] = {"config": "sequences"}
    metrics.write_text(json.dumps(values))
    _, results = model_index_to_eval_results(
        _front_matter(render_model_card(adapter, "geo-org/lora", metrics, "geo-org/geollava"))["model-index"]
    )
    assert {r.metric_type: r.metric_value for r in results} == {"rougeL": 0.7, "temporal_f1": 0.3}
    assert {(r.dataset_config, r.dataset_name) for r in results} == {("sequences", "GeoLLaVA sequences (test)")}


def test_model_card_tolerates_missing_inputs(tmp_path):
    folder = tmp_path / "bare"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/local/path/base", "r": 4}))
    text = render_model_card(folder, "geo-org/bare")
    meta = validate_card(text, "model")
    assert "base_model" not in meta  # a local path is not a Hub id
    assert "model-index" not in meta
    assert "No evaluation was given" in text and "pruning" not in meta.get("tags", [])
    assert "| r | `4` |" in text


def test_card_cli_rejects_bad_arguments(adapter, tmp_path, capsys):
    assert card_main(["model", str(adapter), "--repo-id", "no-slash"]) == 1
    assert "repo_id" in capsys.readouterr().err
    assert card_main(["model", str(adapter), "--repo-id", "a/b", "--metrics", str(tmp_path / "nope.json")]) == 1
    assert "metrics" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{not json")
    assert card_main(["model", str(adapter), "--repo-id", "a/b", "--metrics", str(tmp_path / "bad.json")]) == 1
    assert "bad.json" in capsys.readouterr().err
    assert not (adapter / "README.md").exists()


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("---\nfoo: [unclosed\n---\n", "does not parse"),
        ("no front matter\n", "does not parse"),
        ("---\nlibrary_name: [peft]\n---\n", "library_name"),
        ("---\nbase_model: not a hub id!\n---\n", "base_model"),
        ("---\npipeline_tag: Image Text\n---\n", "pipeline_tag"),
        ("---\nmodel-index:\n- name: x\n  results:\n  - task: {}\n---\n", "model.index"),
    ],
)
def test_validate_rejects_bad_model_cards(text, field):
    with pytest.raises(ValueError, match=field):
        validate_card(text, "model")
