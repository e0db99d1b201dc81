"""`make quickstart`'s chain at test size (`--profile ci`): every stage, artifact and round trip; no quality bar.

The base goes through the loopback Hub as a Hub user meets it: every stage after its push names it by its Hub id, and
the adapter's card loads it, by its snippet, with none of the project's packages importable.
"""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from dataset_builder.synthetic.synth import SynthConfig
from tests.trainer.helpers import project_logits
from upload.loopback import serve_hub
from upload.roundtrip import run_card_snippet


ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import demo  # noqa: E402  (scripts/ is not a package)
import quickstart  # noqa: E402
import quickstart_report  # noqa: E402


STAGES = ["setup", "synth", "build", "base", "push_base", "eval_base", "train", "eval_trained", "cards", "hub"]
BASE_ID = "geollava-org/tiny-llava-next-video"
INPUT_IDS = [[1, 5, 9, 12, 7, 3]]


def _quickstart(out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "scripts" / "quickstart.py"), "--profile", "ci", "--out", str(out), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=800)


def _stage_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("[") and "/11]" in line.split()[0]]


@pytest.mark.slow
def test_quickstart_chain_at_test_size_then_a_rerun_reuses_it(tmp_path):
    out = tmp_path / "quickstart"
    first = _quickstart(out, "--fresh")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    lines = _stage_lines(first.stdout)
    assert [line.split()[0] for line in lines] == [f"[{i}/11]" for i in range(1, 12)]
    assert all(line.split()[-3] == "done" and line.endswith(" s") for line in lines[1:])

    report = json.loads((out / "report.json").read_text())
    assert report["profile"] == "ci" and list(report["stage_seconds"]) == STAGES
    assert report["main_job_seconds"] > 0 and all(s >= 0 for s in report["stage_seconds"].values())
    rows = report["rows"]
    assert rows["train"] > 0 and rows["test"] > 0
    for which in ("base", "trained"):
        metrics = report["metrics"][which]
        assert metrics["n_rows"] == rows["test"]
        for key in ("rougeL", "grounding_f1", "grounding_precision", "grounding_recall", "bleu4", "cider_d"):
            assert isinstance(metrics[key], float) and metrics[key] >= 0, (which, key)
    # the third column: always naming the test split's most common change kinds, scored on its ground truth
    majority = report["metrics"]["majority"]
    assert majority["kinds"] and majority["grounding_rows"] == rows["test"]
    assert 0 < majority["grounding_f1"] <= 1
    assert report["bars"] == []  # the ci profile checks no quality bar
    assert report["sparsity"] == pytest.approx(0.05, abs=0.005)
    assert report["repos"] == {
        "base": BASE_ID,
        "dataset": "geollava-org/geollava",
        "model": "geollava-org/geollava-tiny-lora",
        "space": "geollava-org/geollava-demo",
    }
    # what the fresh process loaded from the loopback Hub equals what was pushed
    round_trip = report["hub_round_trip"]
    assert round_trip["adapter_tensors_identical"] is True and round_trip["masks"] > 0
    assert round_trip["loaded_by"] == "the card's snippet" and round_trip["base_model"] == BASE_ID
    assert round_trip["default"] == {"train": rows["train"], "test": rows["test"]}
    assert round_trip["sample_10k"]["test"] == rows["test"]

    files = ("metrics.json", "predictions.jsonl", "report.md", "metrics_vs_paper.png", "rougeL_per_category.png")
    for name in ("eval_base", "eval_trained"):
        for file in files:
            assert (out / name / file).stat().st_size > 0, (name, file)
    assert (out / "adapter" / "pruning_masks.safetensors").is_file()
    assert {p.name for p in (out / "cards").iterdir()} >= {"space"}
    md = (out / "report.md").read_text()
    assert md.startswith("# GeoLLaVA quickstart report (ci profile)") and "| grounding_f1 |" in md
    assert "| metric | base | trained | majority |" in md and "most common change kinds" in md
    assert "ROUGE-L" in first.stdout and f"QUICKSTART_OUT={out} make demo" in first.stdout
    assert not list(out.glob("**/.*.tmp")), "no half-written file is left behind"

    # the base is a Hub id everywhere after its push: training, the adapter, its card, the Space's settings
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == BASE_ID
    assert json.loads((out / "adapter" / "run_summary.json").read_text())["model"]["base_model"] == BASE_ID
    card = (out / "adapter" / "README.md").read_text()
    assert yaml.safe_load(card.split("---\n")[1])["base_model"] == BASE_ID and "<base model>" not in card
    assert json.loads((out / "cards" / "space" / "space_config.json").read_text())["base_model"] == BASE_ID
    assert "**random weights**" in (out / "base" / "README.md").read_text()
    # downloaded through the run's own HF cache
    assert any((out / "hf_home" / "hub" / "models--geollava-org--tiny-llava-next-video" / "snapshots").iterdir())
    assert demo.quickstart_repos(out) == report["repos"]  # what `make demo` serves

    # a second run reuses every stage whose inputs did not change, and pushes and reports again
    second = _quickstart(out)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    states = [line.split()[-3] for line in _stage_lines(second.stdout)]
    assert states == ["reused"] * 8 + ["done"] * 3
    again = json.loads((out / "report.json").read_text())
    assert again["metrics"] == report["metrics"]
    assert again["stage_seconds"]["train"] == report["stage_seconds"]["train"]  # a reused stage keeps its time

    # the adapter's card, as a Hub user copies it: its snippet against the run's loopback Hub, with only the
    # libraries it names importable, gives the logits of the project's loader on the local folders
    check = (
        "torch.set_num_threads(1)\n"
        f"assert model.peft_config['default'].base_model_name_or_path == {BASE_ID!r}\n"
        "with torch.no_grad():\n"
        f"    torch.save(model(input_ids=torch.tensor({INPUT_IDS!r})).logits, 'logits.pt')\n"
    )
    with serve_hub(out / "hub", log_path=tmp_path / "hub.log") as url:
        home = {"HF_ENDPOINT": url, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(tmp_path / "user_home")}
        run_card_snippet(card, check, tmp_path, env=home)
    assert torch.equal(torch.load(tmp_path / "logits.pt"), project_logits(out / "base", out / "adapter", INPUT_IDS))


def test_profiles_name_their_recipes_and_keep_the_default_contract():
    profiles = quickstart.PROFILES
    # --profile's names
    assert {"ci", "default", "long", "long-simple", "simple", "multi-date", "sequences"} <= set(profiles)
    default, multi = profiles["default"], profiles["multi-date"]
    assert default.out == ROOT / "outputs" / "quickstart" and default.recipe.name == "qlora_prune.yaml"
    assert profiles["long"].recipe.name == "lora_prune_deep.yaml"
    for name, profile in profiles.items():
        assert profile.recipe.is_file(), name
        assert profile.out.parent == ROOT / "outputs", name
        SynthConfig(out="x", **profile.synth)  # the flags geollava-synth is given are valid
    assert len({profile.out for profile in profiles.values()}) == len(profiles)  # each its own folder
    # the default: two dates a location (one change or none a pair), the multi-date scenes under their own name
    assert default.synth["two_dates"] is True and default.synth["locations"] == 3100
    assert "two_dates" not in multi.synth and multi.synth["locations"] == 2000
    assert (default.base, default.recipe, default.frame_size) == (multi.base, multi.recipe, multi.frame_size)
    assert dataclasses.replace(profiles["simple"], out=default.out) == default
    # long keeps the multi-date scenes with the 6-layer model; long-simple the same model on two-date scenes
    assert profiles["long"].synth == multi.synth and profiles["long"].base["num_layers"] == 6
    assert profiles["long-simple"].synth["two_dates"] is True
    assert profiles["long-simple"].base == profiles["long"].base
    # the default's bars: it sees the change (well above the base and the constant answer) and writes captions
    assert default.bars == {
        "grounding_f1_min": 0.45,
        "grounding_f1_vs_base": 2.5,
        "rougeL_min": 0.6,
        "rougeL_gain": 0.4,
        "grounding_f1_vs_majority": 0.15,
    }
    assert multi.bars == {"grounding_f1_min": 0.3, "grounding_f1_vs_base": 2.5, "rougeL_min": 0.6, "rougeL_gain": 0.4}
    assert profiles["long-simple"].bars["grounding_f1_min"] == 0.8
    assert profiles["ci"].bars == {}


def _profiles(tmp_path, text):
    path = tmp_path / "profiles.yaml"
    path.write_text(text)
    return quickstart.load_profiles(path)


def test_profiles_extend_by_merging_mappings_and_bad_files_are_named(tmp_path):
    base = (
        "a: {out: o/a, synth: {x: 1, y: 2}, frame_size: 8, base: {f: t}, recipe: r.yaml, train_overrides: [--k, '1']}"
    )
    profiles = _profiles(tmp_path, base + "\nb: {extends: a, out: o/b, synth: {y: 3}, frame_size: 16}\n")
    a, b = profiles["a"], profiles["b"]
    assert b.synth == {"x": 1, "y": 3} and b.frame_size == 16 and b.base == a.base and b.recipe == a.recipe
    assert a.out == ROOT / "o" / "a" and a.train_overrides == ("--k", "1")
    with pytest.raises(ValueError, match="profile 'b' extends 'c', which is not defined"):
        _profiles(tmp_path, base + "\nb: {extends: c}\n")
    with pytest.raises(ValueError, match=r"profile 'b': unknown field\(s\) \['frames'\]"):
        _profiles(tmp_path, base + "\nb: {extends: a, frames: 3}\n")
    with pytest.raises(ValueError, match="profile 'b': .*bars: unknown"):
        _profiles(tmp_path, base + "\nb: {extends: a, bars: {bleu_min: 1}}\n")
    with pytest.raises(ValueError, match="in a circle: b -> c -> b"):
        _profiles(tmp_path, base + "\nb: {extends: c}\nc: {extends: b}\n")


def test_bars_say_which_are_met():
    bars = {"grounding_f1_min": 0.3, "grounding_f1_vs_base": 2.5, "rougeL_min": 0.6, "rougeL_gain": 0.4}
    bars["grounding_f1_vs_majority"] = 0.15
    checked = quickstart_report.check_bars(
        bars, {"grounding_f1": 0.1, "rougeL": 0.05}, {"grounding_f1": 0.3, "rougeL": 0.5}, {"grounding_f1": 0.2}
    )
    assert [(c["bar"], c["met"]) for c in checked] == [
        ("trained grounding F1 >= 0.3", True),
        ("trained grounding F1 >= 2.5x the base's", True),
        ("trained ROUGE-L >= 0.6", False),
        ("trained ROUGE-L >= the base's + 0.4", True),
        ("trained grounding F1 >= the majority answer's + 0.15", False),
    ]
    assert checked[1]["target"] == pytest.approx(0.25) and checked[3]["target"] == pytest.approx(0.45)
    assert checked[4]["target"] == pytest.approx(0.35)
    # a metric that was not computed meets no bar: the trained one, or what the target is computed from
    assert not quickstart_report.check_bars({"grounding_f1_min": 0.3}, {}, {})[0]["met"]
    assert not quickstart_report.check_bars({"grounding_f1_vs_majority": 0.1}, {}, {"grounding_f1": 0.9})[0]["met"]


def test_the_sequences_profile_builds_trains_and_evaluates_the_sequences_config(tmp_path):
    profile = quickstart.PROFILES["sequences"]
    assert profile.config == "sequences" and profile.recipe.name == "sequences_lora_prune.yaml"
    assert profile.synth["min_dates"] == 3  # every synthetic location makes a sequences row
    assert profile.bars == {"temporal_f1_gain": 0.05, "temporal_f1_vs_majority": 0.01}
    job = quickstart.Job(profile, tmp_path)
    # its base goes through the loopback Hub like every profile's, named by its Hub id
    assert job.base_id == BASE_ID and job.repos["base"] == BASE_ID
    assert job.config_flags == {
        "build": ("--sequences",),
        "train": ("--dataset_config", "sequences"),
        "eval": ("--config", "sequences"),
    }
    assert job.eval_args()[:4] == ("--dataset", job.dataset, "--config", "sequences")
    # the pairs' profiles keep their flags and their stage fingerprints
    default = quickstart.Job(quickstart.PROFILES["default"], tmp_path)
    assert set(default.build_key) == {"synth", "frame_size", "sample_size"} and "config" in job.build_key
    assert all(not flags for flags in default.config_flags.values())
    assert default.eval_args()[:4] == ("--dataset", default.dataset, "--split", "test")
    with pytest.raises(ValueError, match="config 'levircc': choose one of"):
        _profiles(tmp_path, "a: {out: o/a, synth: {}, frame_size: 8, base: {}, recipe: r.yaml, config: levircc}\n")


def test_temporal_bars_and_the_majority_answer_on_sequences(tmp_path):
    bars = {"temporal_f1_gain": 0.05, "temporal_f1_vs_majority": 0.01}
    base, trained = {"temporal_f1": 0.1}, {"temporal_f1": 0.3}
    checked = quickstart_report.check_bars(bars, base, trained, {"temporal_f1": 0.35})
    assert [(c["bar"], c["met"], c["target"]) for c in checked] == [
        ("trained temporal F1 >= the base's + 0.05", True, pytest.approx(0.15)),
        ("trained temporal F1 >= the majority answer's + 0.01", False, pytest.approx(0.36)),
    ]
    assert not quickstart_report.check_bars(bars, base, trained)[1]["met"]  # no majority: not met
    stamps = ["2016-03-02", "2017-08-15", "2019-01-30"]
    change = {"kind": "road_built", "location": "north", "size": "small", "start": stamps[0], "end": stamps[1]}
    path = tmp_path / "predictions.jsonl"
    path.write_text("".join(json.dumps({"id": str(i), "changes": [change] * (i % 2)}) + "\n" for i in range(3)))
    temporal = {"temporal_f1": 0.4, "temporal_precision": 0.5, "temporal_recall": 1 / 3, "kinds": ["road_built"]}
    majority = quickstart_report.majority_metrics(path, {"temporal_majority": temporal})
    assert majority["kinds"] == ["no_change"] and majority["temporal_f1"] == 0.4  # kinds: grounding's answer
    assert quickstart_report.majority_metrics(path) == {k: v for k, v in majority.items() if "temporal" not in k}


def test_the_report_counts_the_rows_of_the_config_it_scored(tmp_path):
    for folder in ("eval_base", "eval_trained", "dataset"):
        (tmp_path / folder).mkdir()
    metrics = {"rougeL": 0.5, "temporal_f1": 0.2, "run": {"config": "sequences"}}
    for folder in ("eval_base", "eval_trained"):
        (tmp_path / folder / "metrics.json").write_text(json.dumps(metrics))
    (tmp_path / "eval_trained" / "predictions.jsonl").write_text(json.dumps({"id": "a_0", "changes": []}) + "\n")
    build = {"pairs_per_split": {"train": 90, "test": 10}, "sequences": {"rows_per_split": {"train": 9, "test": 3}}}
    (tmp_path / "dataset" / "build_report.json").write_text(json.dumps(build))
    report = quickstart_report.write_report(tmp_path, "sequences", {}, {}, {}, 1.0, {"model": "o/m"})
    assert report["config"] == "sequences" and report["rows"] == {"train": 9, "test": 3}
    assert "Rows (sequences config): {'train': 9, 'test': 3}." in (tmp_path / "report.md").read_text()
