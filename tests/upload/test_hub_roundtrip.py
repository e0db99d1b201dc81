"""Push with geollava-push to the loopback Hub, then load back with the users' own calls."""

import hashlib
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import httpx
import pytest
import torch
from datasets import load_dataset
from huggingface_hub import HfApi, ModelCard, snapshot_download

from dataset_builder.prompts import PROMPT_TEMPLATES
from model_cards.render import main as card_main
from model_cards.render import validate_card
from upload.push import main as push_main
from upload.push import staged_files


TOKEN = os.environ["HF_TOKEN"]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dataset_dir(build_small_dataset):
    return build_small_dataset("release")


BASE_ID = "geo-org/tiny-llava-next-video"


@pytest.fixture(scope="module")
def adapter_dir(hub_server, tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from trainer.models.families import get_family
    from trainer.pruning.masks import apply_masks, save_masks
    from trainer.tiny.build import build_tiny_model

    root = tmp_path_factory.mktemp("adapter")
    base = build_tiny_model("llava-next-video", root / "base", image_size=32, corpus=list(PROMPT_TEMPLATES))
    # the base on the Hub first, so the adapter's card names it and carries the lines that load it
    assert card_main(["base", str(base), "--repo-id", BASE_ID]) == 0
    assert push_main(["base", str(base), "--repo-id", BASE_ID]) == 0
    model = AutoModelForImageTextToText.from_pretrained(base)
    weight = model.model.language_model.layers[0].mlp.down_proj.weight
    masks = {"model.language_model.layers.0.mlp.down_proj": weight.abs() > weight.abs().median()}
    apply_masks(model, masks)
    peft = get_peft_model(
        model,
        LoraConfig(r=4, target_modules=get_family("llava-next-video").lora_target_modules, init_lora_weights=False),
    )
    out = root / "adapter"
    peft.save_pretrained(out)
    save_masks(masks, out, {"method": "magnitude", "target_sparsity": 0.5})
    from trainer.training.run_summary import build_summary, write_summary

    summary = build_summary(
        recipe=None,
        arguments={},
        data={"dataset_name": "geo-org/geollava", "dataset_config": "sample_10k", "split": "train", "rows": 5},
        model={"base_model": str(base), "family": "llava-next-video", "quantization": None, "lora_r": 4},
        training_args={"learning_rate": 1e-3, "max_steps": 2},
        log_history=[{"loss": 2.0, "step": 1}],
        train_metrics={},
        throughput={},
        skipped_overlong={"count": 0, "ids": []},
        pruning=None,
        timings={"train": 1.5},
    )
    write_summary(summary, out)
    (root / "metrics.json").write_text(json.dumps({"rougeL": 0.5, "cider_d": 1.25, "grounding_f1": 0.1}))
    card = ["model", str(out), "--repo-id", "geo-org/tiny-lora", "--metrics", str(root / "metrics.json")]
    assert card_main([*card, "--dataset-repo-id", "geo-org/geollava", "--base-model", BASE_ID]) == 0
    (out / "checkpoint-2").mkdir()
    (out / "checkpoint-2" / "optimizer.pt").write_bytes(b"x" * 10)
    (out / "optimizer.pt").write_bytes(b"x" * 10)
    return base, out, peft


def _commits(repo_id, repo_type):
    return HfApi().list_repo_commits(repo_id, repo_type=repo_type)


def test_dataset_push_and_load_every_config(hub_server, dataset_dir, tmp_path, capsys):
    assert card_main(["dataset", str(dataset_dir), "--repo-id", "geo-org/geollava"]) == 0
    assert push_main(["dataset", str(dataset_dir), "--repo-id", "geo-org/geollava"]) == 0
    out = capsys.readouterr().out
    assert TOKEN not in out
    for config in ("default", "sample_10k"):
        hub = load_dataset("geo-org/geollava", config, cache_dir=str(tmp_path / "cache"))
        local = load_dataset(str(dataset_dir), config, cache_dir=str(tmp_path / "local"))
        for split in local:
            assert hub[split].features == local[split].features
            assert hub[split]["id"] == local[split]["id"]
            assert hub[split]["conversations"] == local[split]["conversations"]
    assert len(_commits("geo-org/geollava", "dataset")) == 2  # the repo's first commit + exactly one push


def test_adapter_push_and_peft_load_is_bit_identical(hub_server, adapter_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from trainer.pruning.masks import apply_masks, load_masks

    _, adapter, trained = adapter_dir
    staged = {str(p) for p in staged_files("model", adapter)}
    assert "adapter_model.safetensors" in staged and "pruning_masks.safetensors" in staged
    assert not any("checkpoint" in p or "optimizer" in p for p in staged)
    assert push_main(["model", str(adapter), "--repo-id", "geo-org/tiny-lora"]) == 0
    local = snapshot_download("geo-org/tiny-lora", cache_dir=str(tmp_path / "c"))
    assert not list(Path(local).rglob("optimizer.pt"))
    card = ModelCard.load("geo-org/tiny-lora")  # the card as the Hub page would show it
    assert card.data.library_name == "peft" and card.data.datasets == ["geo-org/geollava"]
    assert card.data.base_model == BASE_ID
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {
        "rougeL": 0.5,
        "cider_d": 1.25,
        "grounding_f1": 0.1,
    }
    assert "PeftModel.from_pretrained" in card.text and "apply_masks" in card.text
    assert json.loads((Path(local) / "pruning.json").read_text())["method"] == "magnitude"
    model = AutoModelForImageTextToText.from_pretrained(BASE_ID, cache_dir=str(tmp_path / "c"))  # as the card names it
    apply_masks(model, load_masks(local))
    model = PeftModel.from_pretrained(model, "geo-org/tiny-lora", cache_dir=str(tmp_path / "c"))
    for (name, a), (_, b) in zip(model.state_dict().items(), trained.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    ids = torch.tensor([[1, 5, 9, 12]])
    with torch.no_grad():
        assert torch.equal(
            model.generate(input_ids=ids, max_new_tokens=5, do_sample=False),
            trained.generate(input_ids=ids, max_new_tokens=5, do_sample=False),
        )


def test_dry_run_sends_nothing(hub_server, dataset_dir, capsys):
    before = _log_lines(hub_server)
    assert push_main(["dataset", str(dataset_dir), "--repo-id", "geo-org/never", "--dry-run"]) == 0
    after = _log_lines(hub_server)
    assert after[len(before) :] == ["GET /_log -> 200"]  # only our own first /_log request came in between
    assert "plan: dataset" in capsys.readouterr().out
    assert not HfApi().repo_exists("geo-org/never", repo_type="dataset")


def test_push_to_a_branch(hub_server, dataset_dir):
    assert push_main(["dataset", str(dataset_dir), "--repo-id", "geo-org/branchy", "--revision", "v1"]) == 0
    refs = HfApi().list_repo_refs("geo-org/branchy", repo_type="dataset")
    assert {b.name for b in refs.branches} == {"main", "v1"}
    assert HfApi().file_exists("geo-org/branchy", "README.md", repo_type="dataset", revision="v1")
    assert not HfApi().file_exists("geo-org/branchy", "README.md", repo_type="dataset", revision="main")


def _log_lines(url):
    return json.loads(urllib.request.urlopen(f"{url}/_log").read())


def test_interrupted_push_then_rerun_is_one_complete_commit(hub_server, dataset_dir, tmp_path):
    staged = [p.as_posix() for p in staged_files("dataset", dataset_dir)]
    lfs = [p for p in staged if p.endswith((".parquet", ".mp4"))]
    assert len(lfs) >= 4
    cmd = [sys.executable, "-m", "upload.push", "dataset", str(dataset_dir), "--repo-id", "geo-org/interrupted"]
    # The server fails the third LFS upload midway through the push (507, as a full disk would).
    httpx.post(f"{hub_server}/_faults", json={"fail_lfs_put_after": 2}).raise_for_status()
    first = subprocess.run(cmd, capture_output=True, text=True)
    assert first.returncode != 0, first.stdout
    assert "push failed" in first.stderr and TOKEN not in first.stdout + first.stderr
    assert len(_commits("geo-org/interrupted", "dataset")) == 1  # the repo's initial commit, nothing half-pushed
    start = len(_log_lines(hub_server))
    second = subprocess.run(cmd, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    resent = [line for line in _log_lines(hub_server)[start:] if line.startswith("PUT /_lfs/")]
    assert 0 < len(resent) < len(lfs)  # only what the first run did not get through
    commits = _commits("geo-org/interrupted", "dataset")
    assert len(commits) == 2
    infos = {i.path: i for i in HfApi().get_paths_info("geo-org/interrupted", staged, repo_type="dataset")}
    assert set(infos) == set(staged)
    for path in lfs:
        assert infos[path].lfs.sha256 == hashlib.sha256((dataset_dir / path).read_bytes()).hexdigest(), path


def test_space_push_pull_back_and_start(hub_server, adapter_dir, tmp_path):
    space = tmp_path / "space"
    import shutil

    shutil.copytree(ROOT / "spaces_demo", space, ignore=shutil.ignore_patterns("__pycache__"))
    assert card_main(["space", str(space), "--repo-id", "geo-org/demo", "--model-repo-id", "geo-org/tiny-lora"]) == 0
    validate_card((space / "README.md").read_text(), "space")
    assert push_main(["space", str(space), "--repo-id", "geo-org/demo"]) == 0
    assert HfApi().space_info("geo-org/demo").sdk == "gradio"
    pulled = Path(snapshot_download("geo-org/demo", repo_type="space", cache_dir=str(tmp_path / "c")))
    assert (pulled / "app.py").exists() and (pulled / "requirements.txt").exists()
    from tests.space_server import serve

    base, adapter, _ = adapter_dir
    proc, url = serve(pulled / "app.py", base, adapter, tmp_path / "app.log")
    try:
        from gradio_client import Client, handle_file
        from PIL import Image

        Image.new("RGB", (40, 40), "green").save(tmp_path / "a.png")
        Image.new("RGB", (40, 40), "white").save(tmp_path / "b.png")
        client = Client(url, verbose=False)
        text, _, status = client.predict(
            handle_file(str(tmp_path / "a.png")),
            handle_file(str(tmp_path / "b.png")),
            None,
            None,
            None,
            PROMPT_TEMPLATES[0],
            8,
            api_name="/describe",
        )
        assert status.startswith("✅") and text
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_token_never_in_cards_or_pushed_files(hub_server, session_dir, dataset_dir, adapter_dir, tmp_path):
    for text in (session_dir / "hub.log").read_bytes(), (dataset_dir / "README.md").read_bytes():
        assert TOKEN.encode() not in text
    assert TOKEN.encode() not in (adapter_dir[1] / "README.md").read_bytes()
    for repo, rtype in (("geo-org/geollava", "dataset"), ("geo-org/tiny-lora", "model")):
        local = Path(snapshot_download(repo, repo_type=rtype, cache_dir=str(tmp_path / rtype)))
        for f in local.rglob("*"):
            if f.is_file():
                assert TOKEN.encode() not in f.read_bytes(), f
