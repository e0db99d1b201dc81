"""The GPU check's serving steps (benchmarks/gpu_serving.py) on the CPU: the dry mode runs both; no vLLM, a skip."""

import importlib.util
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("gpu_serving", ROOT / "benchmarks" / "gpu_serving.py")
gpu_serving = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_serving)


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
