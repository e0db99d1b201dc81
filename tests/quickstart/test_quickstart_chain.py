"""`make quickstart`'s chain at test size (`--profile ci`): every stage, artifact and round trip; no quality bar."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dataset_builder.synthetic.synth import SynthConfig


ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import quickstart  # noqa: E402  (scripts/ is not a package)
import quickstart_report  # noqa: E402


STAGES = ["setup", "synth", "build", "base", "eval_base", "train", "eval_trained", "cards", "hub"]


def _quickstart(out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "scripts" / "quickstart.py"), "--profile", "ci", "--out", str(out), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=800)


def _stage_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("[") and "/10]" in line.split()[0]]


@pytest.mark.slow
def test_quickstart_chain_at_test_size_then_a_rerun_reuses_it(tmp_path):
    out = tmp_path / "quickstart"
    first = _quickstart(out, "--fresh")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    lines = _stage_lines(first.stdout)
    assert [line.split()[0] for line in lines] == [f"[{i}/10]" for i in range(1, 11)]
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
        "dataset": "geollava-org/geollava",
        "model": "geollava-org/geollava-tiny-lora",
        "space": "geollava-org/geollava-demo",
    }
    # what the fresh process loaded from the loopback Hub equals what was pushed
    round_trip = report["hub_round_trip"]
    assert round_trip["adapter_tensors_identical"] is True and round_trip["masks"] > 0
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
    assert "ROUGE-L" in first.stdout and f"ADAPTER_ID={out / 'adapter'} make demo" in first.stdout
    assert not list(out.glob("**/.*.tmp")), "no half-written file is left behind"

    # a second run reuses every stage whose inputs did not change, and pushes and reports again
    second = _quickstart(out)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    states = [line.split()[-3] for line in _stage_lines(second.stdout)]
    assert states == ["reused"] * 7 + ["done"] * 3
    again = json.loads((out / "report.json").read_text())
    assert again["metrics"] == report["metrics"]
    assert again["stage_seconds"]["train"] == report["stage_seconds"]["train"]  # a reused stage keeps its time


def test_profiles_name_their_recipes_and_keep_the_default_contract():
    default = quickstart.PROFILES["default"]
    assert default.out == ROOT / "outputs" / "quickstart" and default.recipe.name == "qlora_prune.yaml"
    assert quickstart.PROFILES["long"].recipe.name == "lora_prune_deep.yaml"
    for name, profile in quickstart.PROFILES.items():
        assert profile.recipe.is_file(), name
        assert profile.out.parent == ROOT / "outputs", name
    assert quickstart.PROFILES["long"].base["num_layers"] == 6
    for name in ("simple", "long-simple"):
        assert quickstart.PROFILES[name].synth["two_dates"] is True, name
        SynthConfig(out="x", **quickstart.PROFILES[name].synth)  # the flags geollava-synth is given are valid
    assert quickstart.PROFILES["long-simple"].base == quickstart.PROFILES["long"].base
    # the 5-minute default's bars (training taught the model to see the change); long-simple: grounding F1 >= 0.80
    assert default.bars == {
        "grounding_f1_min": 0.3,
        "grounding_f1_vs_base": 2.5,
        "rougeL_min": 0.6,
        "rougeL_gain": 0.4,
    }
    assert quickstart.PROFILES["long-simple"].bars["grounding_f1_min"] == 0.8
    assert quickstart.PROFILES["ci"].bars == {}


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
    checked = quickstart_report.check_bars(
        bars, {"grounding_f1": 0.1, "rougeL": 0.05}, {"grounding_f1": 0.3, "rougeL": 0.5}
    )
    assert [(c["bar"], c["met"]) for c in checked] == [
        ("trained grounding F1 >= 0.3", True),
        ("trained grounding F1 >= 2.5x the base's", True),
        ("trained ROUGE-L >= 0.6", False),
        ("trained ROUGE-L >= the base's + 0.4", True),
    ]
    assert checked[1]["target"] == pytest.approx(0.25) and checked[3]["target"] == pytest.approx(0.45)
    # a metric that was not computed meets no bar
    assert not quickstart_report.check_bars({"grounding_f1_min": 0.3}, {}, {})[0]["met"]


def test_the_sequences_profile_builds_trains_and_evaluates_the_sequences_config(tmp_path):
    profile = quickstart.PROFILES["sequences"]
    assert profile.config == "sequences" and profile.recipe.name == "sequences_lora_prune.yaml"
    assert profile.synth["min_dates"] == 3  # every synthetic location makes a sequences row
    assert profile.bars == {"temporal_f1_gain": 0.05, "temporal_f1_vs_majority": 0.01}
    job = quickstart.Job(profile, tmp_path)
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
