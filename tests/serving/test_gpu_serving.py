"""The GPU check's serving steps (benchmarks/gpu_serving.py, in gpu_check.py) on the CPU, dry; no vLLM: a skip."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("gpu_serving", ROOT / "benchmarks" / "gpu_serving.py")
gpu_serving = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_serving)
spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)


def test_without_vllm_the_vllm_step_is_skipped_with_a_message(tmp_path, monkeypatch, release_of):
    monkeypatch.setenv(gpu_serving.VLLM_ENV, str(tmp_path / "no-such-venv" / "bin" / "vllm"))
    assert gpu_serving.vllm_executable() is None
    step = gpu_serving.vllm_eval(release_of("llava-next-video").merged, tmp_path, tmp_path / "eval")
    assert step["ok"] and "no vLLM" in step["skipped"] and gpu_serving.VLLM_ENV in step["skipped"]
    assert not (tmp_path / "eval").exists()


@pytest.mark.slow
def test_the_dry_mode_runs_the_export_and_a_served_evaluation(tmp_path, release_of, split_dir):
    exported = gpu_serving.export_7b(tmp_path, dry_run=True, lora_r=4)
    assert exported["ok"] and exported["name"].endswith("(dry run)"), exported
    assert 0 < exported["peak_rss_gib"] <= exported["largest_shard_gib"] + exported["adapter_gib"] + 1
    assert (Path(exported["merged"]) / "geollava_export.json").is_file()
    step = gpu_serving.vllm_eval(release_of("llava-next-video").merged, split_dir, tmp_path / "eval", True, rows=3)
    assert step["ok"] and step["rows"] == 3 and step["server_seconds_per_row"] > 0, step


def test_eval_and_predict_import_without_the_client_libraries():
    # the GPU node's wheelhouse leaves openai and av out: its in-process eval and predict steps must still import
    code = "import sys; sys.modules.update(openai=None, av=None)\n"
    code += "import trainer.evaluation.run_eval, trainer.evaluation.predict"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=300)


@pytest.mark.slow
def test_the_gpu_check_runs_the_serving_steps_in_dry_mode(tmp_path):
    steps = "data,train,serve,export_7b"
    assert gpu_check.main(["--dry_run", "true", "--train_steps", "3", "--eval_rows", "4", "--steps", steps,
                           "--out_dir", str(tmp_path)]) == 0  # fmt: skip
    result = json.loads((tmp_path / "gpu_chain.json").read_text())
    by_key = {step["key"]: step for step in result["steps"]}
    assert [s["status"] for s in result["steps"]] == ["ok"] * 4, result
    served, exported = by_key["serve"]["checks"], by_key["export_7b"]["checks"]
    assert served["rows"] == 4 and served["masked_modules"] > 0 and served["server_seconds_per_row"] > 0
    assert "transformers serve" in by_key["serve"]["name"] and "(tiny config)" in by_key["export_7b"]["name"]
    assert 0 < exported["peak_rss_gib"] <= exported["largest_shard_gib"] + exported["adapter_gib"] + 1
