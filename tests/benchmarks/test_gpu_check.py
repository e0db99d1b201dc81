"""`make gpu-check` (benchmarks/gpu_check.py) here, without a GPU: it fails at once saying why, its runner isolates
each step and rewrites the results after each, and its steps run on the CPU in its dry mode (the wheelhouse's plan and
size checked, a deliberately failing step leaving the others' results), so that it works unchanged on a GPU node."""

import importlib.util
import json
import logging
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch


ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)


def test_without_cuda_it_fails_clearly_and_writes_nothing(tmp_path, capsys):
    assert not torch.cuda.is_available()
    assert gpu_check.main(["--out_dir", str(tmp_path / "results")]) == 1
    err = capsys.readouterr().err
    assert "no CUDA device" in err and "nothing was run" in err
    assert not (tmp_path / "results").exists()


def test_a_driver_older_than_the_cuda_build_is_named_as_such_not_as_no_device(tmp_path, capsys, monkeypatch):
    # nvidia-smi as it answers on a node whose driver predates torch's CUDA 13.0 build (torch then sees no device)
    smi = ("535.104.05", ["NVIDIA H100 80GB HBM3 (81559 MiB)"], None)
    monkeypatch.setattr(gpu_check, "driver_and_gpus", lambda: smi)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert gpu_check.main(["--out_dir", str(tmp_path / "results")]) == 1
    captured = capsys.readouterr()
    assert "GPUs: NVIDIA H100 80GB HBM3 (81559 MiB)" in captured.out  # the preflight names driver and GPU first
    assert captured.err.startswith("gpu-check: driver 535.104.05 is older than CUDA 13.0 needs (>= 580)")
    assert "no CUDA device" not in captured.err and "nothing was run" in captured.err
    assert not (tmp_path / "results").exists()


def test_what_stops_cuda_is_said_in_words():
    problem = gpu_check.cuda_problem
    assert problem("2.11.0+cu130", "13.0", "535.104.05", False, None) == (
        "driver 535.104.05 is older than CUDA 13.0 needs (>= 580): use a torch built for a CUDA this driver runs "
        "(nvidia-smi shows the highest), or a newer driver"
    )
    assert problem("2.11.0+cu130", "13.0", "580.159.04", True, None) is None
    assert problem("2.11.0+cu126", "12.6", "535.104.05", True, None) is None  # any 12.x runs on >= 525
    assert "built without CUDA" in problem("2.11.0+cpu", None, None, False, None)
    assert problem("2.11.0+cu130", "13.0", None, False, "nvidia-smi is not on the PATH") == (
        "no CUDA device: nvidia-smi is not on the PATH"
    )
    assert "torch sees none although driver 580.159.04" in problem("2.11.0+cu130", "13.0", "580.159.04", False, None)


def _make(*args):
    proc = subprocess.run(["make", "-n", "gpu-check", *args], cwd=ROOT, capture_output=True, text=True, check=True)
    return proc.stdout


def test_the_makefile_runs_the_check_from_the_venv_or_from_a_given_interpreter_without_installing_the_stack():
    assert _make().strip().splitlines()[-1] == ".venv/bin/python benchmarks/gpu_check.py"
    node = _make("PYTHON=/opt/torch/.venv/bin/python3", "WHEELS=.gpu-wheels")
    assert node.strip() == "PYTHON=/opt/torch/.venv/bin/python3 WHEELS=.gpu-wheels scripts/gpu_check.sh"
    assert "pip install" not in node  # an offline node never reaches the registries
    target = re.search(r"^gpu-wheels:.*\n\t(.+)$", (ROOT / "Makefile").read_text(), re.M)
    assert target and target.group(1).endswith("benchmarks/gpu_wheels.py --out $(or $(WHEELS),.gpu-wheels)")


# ---- the runner: each step in its own try, the results on disk after each ------------------------------------------
def _chain(tmp_path, results_dir):
    check = gpu_check.GpuCheckConfig(dry_run=True)
    return gpu_check.Chain(check, "cpu", tmp_path / "work", results_dir, gpu_check.cuda_report())


def test_one_failing_step_leaves_the_others_and_the_results_are_on_disk_after_each_step(tmp_path):
    results_dir = tmp_path / "results"
    chain = _chain(tmp_path, results_dir)
    seen_on_disk = {}

    def ok(chain):
        print("printed by the first step")
        logging.getLogger("trainer.something").info("logged by the first step")
        return {"value": 1}

    def fails(chain):
        raise RuntimeError("this step breaks")

    def reads_the_results(chain):
        written = json.loads((results_dir / "gpu_chain.json").read_text())
        seen_on_disk.update({s["key"]: s["status"] for s in written["steps"]})
        return {"first_returned": chain.outputs["first"]["value"]}

    def exits(chain):
        sys.exit(2)  # what HfArgumentParser does on a bad option

    def checks_wrong(chain):
        raise gpu_check.CheckFailed("rows differ", {"rows": 3})

    def skips(chain):
        raise gpu_check.StepSkipped("gradio not importable here")

    def hangs(chain):
        time.sleep(30)

    Step = gpu_check.Step
    steps = [
        Step("first", "a step that passes", ok),
        Step("broken", "a step that fails", fails),
        Step("after", "needs the broken one", ok, needs=("broken",)),
        Step("reader", "runs anyway", reads_the_results, needs=("first",)),
        Step("exits", "calls sys.exit", exits),
        Step("wrong", "checks something wrong", checks_wrong),
        Step("skips", "cannot run here", skips),
        Step("hangs", "runs past its limit", hangs, timeout_s=0.5),
        Step("last", "the last step", ok),
    ]
    header = gpu_check.results_header(chain.check, chain.cuda)
    result = gpu_check.run_steps(steps, chain, header, tmp_path / "logs", console=sys.stdout)
    status = {s["key"]: s["status"] for s in result["steps"]}
    assert status == {
        "first": "ok",
        "broken": "failed",
        "after": "skipped",
        "reader": "ok",
        "exits": "failed",
        "wrong": "failed",
        "skips": "skipped",
        "hangs": "failed",
        "last": "ok",
    }
    # while "reader" ran, the file already held the first two steps' outcomes and marked it running
    assert seen_on_disk == {
        "first": "ok",
        "broken": "failed",
        "after": "skipped",
        "reader": "running",
        **dict.fromkeys(["exits", "wrong", "skips", "hangs", "last"], "pending"),
    }
    steps_by_key = {s["key"]: s for s in result["steps"]}
    assert steps_by_key["reader"]["checks"] == {"first_returned": 1}
    assert steps_by_key["after"]["reason"] == "needs broken, which did not pass"
    assert "RuntimeError: this step breaks" in steps_by_key["broken"]["traceback"]
    assert steps_by_key["wrong"]["checks"] == {"rows": 3}
    assert steps_by_key["hangs"]["error"].startswith("StepTimeout: ran past its limit")
    assert result["failed"] == 4 and not result["ok"]
    on_disk = json.loads((results_dir / "gpu_chain.json").read_text())
    assert on_disk["failed"] == 4 and [s["status"] for s in on_disk["steps"]] == list(status.values())
    assert "| a step that fails | failed |" in (results_dir / "gpu_chain.md").read_text()
    first_log = (tmp_path / "logs" / "00-first.log").read_text()
    assert "printed by the first step" in first_log and "logged by the first step" in first_log
    assert "RuntimeError: this step breaks" in (tmp_path / "logs" / "01-broken.log").read_text()
    assert not (tmp_path / "logs" / "02-after.log").exists()  # skipped: never started


# ---- the dry mode: the same steps on the CPU ----------------------------------------------------------------------
TINY_CHAIN = ["--dry_run", "true", "--train_steps", "3", "--eval_rows", "4"]


@pytest.mark.slow
def test_the_chain_runs_on_the_cpu_in_dry_mode(tmp_path):
    steps = "preflight,wheelhouse,data,train,eval,score,predict,space"  # gpu_train's dry run: the next test
    assert gpu_check.main([*TINY_CHAIN, "--steps", steps, "--out_dir", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "gpu_chain.json").read_text())
    names = [step["name"] for step in result["steps"]]
    assert names == [
        "preflight: packages, torch, CUDA, driver",
        "wheelhouse: the node's plan and the size limit",
        "synthetic data + geollava-build",
        "geollava-train: tiny QLoRA NF4 + 5 % pruning",
        "geollava-eval --device cpu",
        "geollava-score --device cpu (tiny encoder)",
        "geollava-predict --device cpu",
        "the Space's describe()",
    ]
    assert result["ok"] and result["dry_run"] and all(step["ok"] for step in result["steps"])
    checks = {step["key"]: step["checks"] for step in result["steps"]}
    assert checks["preflight"]["missing"] == [] and checks["preflight"]["other_version"] == []
    assert checks["wheelhouse"]["fits"] and checks["wheelhouse"]["total_mb"] <= 60
    trained = checks["train"]
    assert trained["quantization"] == "nf4" and trained["pruned_exactly"] and trained["adapter_names_the_real_base"]
    assert checks["eval"]["rows"] == 4
    assert checks["score"]["encoder_device"] == "cpu" and checks["score"]["one_shared_pass"]
    assert checks["space"]["model_on"] == "cpu"
    assert "| geollava-train: tiny QLoRA NF4 + 5 % pruning | ok |" in (tmp_path / "gpu_chain.md").read_text()
    assert len(list((tmp_path / "gpu_logs").glob("*.log"))) == len(names)


@pytest.mark.slow
def test_a_deliberately_failing_step_leaves_the_other_results_and_the_7b_benchmark_still_runs(tmp_path):
    argv = [*TINY_CHAIN, "--tiny_recipe", str(tmp_path / "no-such-recipe.yaml"), "--out_dir", str(tmp_path)]
    assert gpu_check.main(argv) == 1  # one failed step
    result = json.loads((tmp_path / "gpu_chain.json").read_text())
    status = {step["key"]: step["status"] for step in result["steps"]}
    assert status == {
        "preflight": "ok",
        "wheelhouse": "ok",
        "data": "ok",
        "train": "failed",
        "eval": "skipped",
        "score": "skipped",
        "predict": "skipped",
        "space": "skipped",
        "gpu_train": "ok",
    }
    by_key = {step["key"]: step for step in result["steps"]}
    assert "no-such-recipe.yaml" in by_key["train"]["traceback"]
    assert "no-such-recipe.yaml" in (tmp_path / by_key["train"]["log"]).read_text()
    assert by_key["wheelhouse"]["checks"]["fits"]  # the size check holds
    trained_7b = json.loads((tmp_path / "gpu_train.json").read_text())
    assert trained_7b["complete"] and [r["recipe"] for r in trained_7b["recipes"]] == ["h100_lora", "qlora_prune5"]
    assert all(r["losses_finite"] for r in trained_7b["recipes"])
