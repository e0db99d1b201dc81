"""A merged model's card (base model and relation, metrics, how to serve it); pushed, it loads back alone."""

import json
from pathlib import Path

import torch
import yaml
from huggingface_hub import ModelCard, snapshot_download
from huggingface_hub.repocard_data import model_index_to_eval_results
from transformers import AutoModelForImageTextToText

from model_cards.render import main as card_main
from model_cards.validate import validate_card
from trainer.export import EXPORT_FILE
from upload.push import main as push_main
from upload.push import staged_files


def test_merged_card_names_its_base_metrics_and_how_to_serve_it(release_of, tmp_path):
    merged = release_of("llava-next-video").merged
    export = json.loads((merged / EXPORT_FILE).read_text())
    (merged / EXPORT_FILE).write_text(json.dumps({**export, "base": "llava-hf/LLaVA-NeXT-Video-7B-hf"}))
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"rougeL": 0.5, "cider_d": 1.1, "n_rows": 6}))
    try:
        argv = ["model", str(merged), "--repo-id", "geo-org/merged", "--metrics", str(metrics)]
        assert card_main([*argv, "--dataset-repo-id", "geo-org/geollava"]) == 0
    finally:
        (merged / EXPORT_FILE).write_text(json.dumps(export))
    text = (merged / "README.md").read_text()
    validate_card(text, "model")
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["base_model"] == "llava-hf/LLaVA-NeXT-Video-7B-hf" and meta["base_model_relation"] == "finetune"
    assert meta["library_name"] == "transformers" and "peft" not in meta["tags"] and "pruned" in meta["tags"]
    _, results = model_index_to_eval_results(meta["model-index"])
    assert {r.metric_type: r.metric_value for r in results} == {"rougeL": 0.5, "cider_d": 1.1}
    assert "vllm serve geo-org/merged --limit-mm-per-prompt '{\"video\": 1}'" in text
    assert 'AutoModelForImageTextToText.from_pretrained("geo-org/merged"' in text and "PeftModel" not in text
    assert "--server http://127.0.0.1:8000/v1" in text and "the pruning masks applied to the base first" in text
    assert ModelCard(text).data.to_dict()["base_model_relation"] == "finetune"


def test_ccexpert_card_says_engines_do_not_serve_it(release_of):
    merged = release_of("ccexpert").merged
    assert card_main(["model", str(merged), "--repo-id", "geo-org/cc"]) == 0
    text = (merged / "README.md").read_text()
    assert "vllm serve" not in text and "import" in text and "trainer.models" in text


def test_push_model_of_a_merged_folder_loads_back_alone(release_of, hub_server):
    merged = release_of("qwen2.5-vl").merged
    assert card_main(["model", str(merged), "--repo-id", "geo-org/merged-qwen"]) == 0
    staged = {p.as_posix() for p in staged_files("model", merged)}
    assert {"model.safetensors", "config.json", "generation_config.json", EXPORT_FILE, "README.md"} <= staged
    assert {"chat_template.jinja", "tokenizer.json", "processor_config.json"} <= staged
    assert push_main(["model", str(merged), "--repo-id", "geo-org/merged-qwen"]) == 0
    local = snapshot_download("geo-org/merged-qwen")
    assert {p.name for p in Path(local).iterdir() if p.is_file()} - {".gitattributes"} == staged
    got = AutoModelForImageTextToText.from_pretrained("geo-org/merged-qwen").state_dict()
    want = AutoModelForImageTextToText.from_pretrained(merged).state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
