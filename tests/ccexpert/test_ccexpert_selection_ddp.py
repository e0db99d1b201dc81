"""CCExpert stage III under `accelerate launch --num_processes 2` (gloo, CPU): only the main process selects and saves.

Run as a script by ``accelerate launch``, this file is the worker: the real ``trainer.sft.main`` with
``BestBySmCallback._evaluate`` and ``_save`` wrapped to leave one marker file per call and rank.
"""

import json
import os
import sys
from pathlib import Path

import pytest

import trainer.sft
from tests.trainer.helpers import launch_two_processes
from trainer.evaluation.selection import BestBySmCallback


ROOT = Path(__file__).resolve().parents[2]


def _record(method_name: str):
    original = getattr(BestBySmCallback, method_name)

    def wrapped(self, *args, **kwargs):
        rank = int(os.environ.get("RANK", "0"))
        marks = Path(os.environ["GEOLLAVA_RANK_DIR"])
        n = len(list(marks.glob(f"{method_name}-rank{rank}-*")))
        (marks / f"{method_name}-rank{rank}-{n}").write_text("")
        return original(self, *args, **kwargs)

    setattr(BestBySmCallback, method_name, wrapped)


def test_sharded_parameters_are_refused():
    import torch

    class Zero3Parameter(torch.nn.Parameter):
        ds_status = "NOT_AVAILABLE"

    model = torch.nn.Linear(2, 2)
    model.weight = Zero3Parameter(torch.zeros(2, 2))
    callback = BestBySmCallback([{"id": "a"}], None, "ccexpert", "best")
    with pytest.raises(RuntimeError, match="sharded"):
        callback.on_train_begin(None, None, None, model=model)
    callback.on_train_begin(None, None, None, model=torch.nn.Linear(2, 2))  # whole parameters: fine


@pytest.mark.slow
def test_two_processes_evaluate_and_save_on_the_main_process_only(tmp_path):
    from datasets import load_dataset

    from dataset_builder.levircc import main as build_levircc
    from dataset_builder.synthetic.synth import main as synth_main
    from trainer.tiny.build import build_tiny_model

    synth_main(["--format", "levir-cc", "--out", str(tmp_path / "levir"), "--pairs", "12", "--seed", "3"])
    build_levircc(["--root", str(tmp_path / "levir"), "--out", str(tmp_path / "ds")])
    base = build_tiny_model("ccexpert", tmp_path / "base", image_size=32, corpus=["what difference happened"])
    marks, out = tmp_path / "marks", tmp_path / "s3"
    marks.mkdir()
    options = {"config": "trainer/recipes/ccexpert/tiny_stage3.yaml", "model_name_or_path": base}
    options |= {"dataset_name": tmp_path / "ds", "output_dir": out, "max_steps": 4, "per_device_train_batch_size": 2}
    options |= {"selection_every_steps": 2, "selection_max_rows": 4, "disable_tqdm": "true"}
    launch = ["--config_file", "trainer/recipes/accelerate_configs/cpu_2proc.yaml"]
    launch_two_processes(__file__, launch, options, {"GEOLLAVA_RANK_DIR": str(marks)}, timeout=400)

    marked = sorted(p.name for p in marks.iterdir())
    evaluations = [m for m in marked if m.startswith("_evaluate-")]
    assert evaluations == ["_evaluate-rank0-0", "_evaluate-rank0-1"], marked  # steps 2 and 4, rank 0 only
    assert not [m for m in marked if "rank1" in m]
    assert any(m.startswith("_save-rank0") for m in marked)
    selection = json.loads((out / "best" / "selection.json").read_text())
    assert [h["step"] for h in selection["history"]] == [2, 4]
    n_validation = len(load_dataset(str(tmp_path / "ds"), split="validation"))
    assert len((out / "best" / "val_predictions.jsonl").read_text().splitlines()) == min(4, n_validation)
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["distributed"]["world_size"] == 2 and summary["distributed"]["ranks_agree"]


if __name__ == "__main__":
    _record("_evaluate")
    _record("_save")
    sys.exit(trainer.sft.main(sys.argv[1:]))
