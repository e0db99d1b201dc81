"""`make gpu-check` (benchmarks/gpu_check.py) here, without a GPU: it fails at once saying so, and its whole chain runs
on the CPU in its dry mode, so that it works unchanged on a GPU machine."""

import importlib.util
import json
import re
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
    assert "no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_the_makefile_target_runs_the_check():
    makefile = (ROOT / "Makefile").read_text()
    target = re.search(r"^gpu-check:.*\n\t(.+)$", makefile, re.M)
    assert target and target.group(1).endswith("benchmarks/gpu_check.py")


@pytest.mark.slow
def test_the_chain_runs_on_the_cpu_in_dry_mode(tmp_path):
    argv = ["--dry_run", "true", "--train_steps", "3", "--eval_rows", "4", "--out_dir", str(tmp_path)]
    assert gpu_check.main(argv) == 0
    result = json.loads((tmp_path / "gpu_chain.json").read_text())
    names = [step["name"] for step in result["steps"]]
    assert names == [
        "synthetic data + geollava-build",
        "geollava-train: tiny QLoRA NF4 + 5 % pruning",
        "geollava-eval --device cpu",
        "geollava-predict --device cpu",
        "the Space's describe()",
    ]
    assert result["ok"] and result["dry_run"] and all(step["ok"] for step in result["steps"])
    trained = result["steps"][1]["checks"]
    assert trained["quantization"] == "nf4" and trained["pruned_exactly"] and trained["adapter_names_the_real_base"]
    assert result["steps"][2]["checks"]["rows"] == 4
    assert result["steps"][4]["checks"]["model_on"] == "cpu"
    assert "| geollava-train: tiny QLoRA NF4 + 5 % pruning | ok |" in (tmp_path / "gpu_chain.md").read_text()
