"""geollava-eval under `accelerate launch --num_processes 2` (gloo, CPU) writes what one process writes, byte for byte.

Run as a script by ``accelerate launch``, this file is the worker: the real ``geollava-eval`` entry point.
"""

import json
import shutil
import sys

import pytest

from tests.serving.helpers import tiny_split
from tests.trainer.helpers import launch_two_processes
from trainer.evaluation import run_eval


EVAL = ["--split", "test", "--max_new_tokens", "8", "--batch_size", "2", "--meteor", "false"]
LAUNCH = ["--config_file", "trainer/recipes/accelerate_configs/cpu_2proc.yaml"]


def without_timings(metrics: dict) -> dict:
    """The metrics less what two runs of the same predictions differ in: time, the folder, the process count."""
    out = {k: v for k, v in metrics.items() if k != "timings_s"}
    drop = {"generation_seconds", "rows_per_s", "out", "processes"}
    out["run"] = {k: v for k, v in metrics["run"].items() if k not in drop}
    return out


@pytest.mark.slow
def test_two_process_eval_equals_one_process_eval(release_of, tmp_path):
    release = release_of("llava-next-video")
    data = tiny_split(tmp_path, n=7, seed=2)
    model = {"model": release.base, "adapter": release.adapter, "dataset": data}
    one = tmp_path / "one"
    args = [f"--{k}={v}" for k, v in model.items()]
    assert run_eval.main([*args, "--out", str(one), *EVAL]) == 0

    two = tmp_path / "two"
    options = {**model, "out": two, **dict(zip(EVAL[::2], EVAL[1::2]))}
    launch_two_processes(__file__, LAUNCH, {k.lstrip("-"): v for k, v in options.items()}, {}, timeout=600)
    assert (two / "predictions.jsonl").read_bytes() == (one / "predictions.jsonl").read_bytes()
    assert not list(two.glob("predictions.part-*"))
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert without_timings(a) == without_timings(b)
    assert b["run"]["processes"] == 2 and b["run"]["rows_generated"] == 7 and a["run"]["processes"] == 1

    # an interrupted run left a rank's part: the next run keeps its rows and captions only the others
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(two / "generation_config.json", resumed)
    lines = (one / "predictions.jsonl").read_text().splitlines()
    (resumed / "predictions.part-00001-of-00002.jsonl").write_text(lines[2] + "\n" + lines[3] + "\n" + lines[4][:9])
    options["out"] = resumed
    launch_two_processes(__file__, LAUNCH, {k.lstrip("-"): v for k, v in options.items()}, {}, timeout=600)
    assert (resumed / "predictions.jsonl").read_bytes() == (one / "predictions.jsonl").read_bytes()
    metrics = json.loads((resumed / "metrics.json").read_text())
    assert metrics["run"]["rows_reused"] == 2 and metrics["run"]["rows_generated"] == 5


if __name__ == "__main__":
    sys.exit(run_eval.main(sys.argv[1:]))
