"""lmms-eval's own CLI and model classes on the tiny model with each task: its scores are geollava-score's.

lmms-eval answers 0 even when the evaluation failed with a traceback, so every check reads its results file.
"""

import json

import pytest
from datasets import load_dataset
from lmms_eval.utils import load_yaml_config

from tests.harness.helpers import local_task, run_lmms_eval
from trainer.evaluation.lmms_tasks import hooks
from trainer.evaluation.lmms_tasks.cli import TASKS_DIR
from trainer.evaluation.run_eval import row_prompt_and_references
from trainer.evaluation.score import main as score_main
from trainer.tiny.build import build_tiny_model
from upload.push import main as push_main


pytestmark = pytest.mark.slow

LIMIT = 4
#: A short budget: the tiny random model rarely stops by itself.
GEN_KWARGS = ("--gen_kwargs", "max_new_tokens=24")
FAILED = "[LMMS_EVAL_REQUEST_FAILED"
HUB_REPO = "geollava-org/geollava"


def geollava_score_of_samples(run, dataset, workdir, config="default") -> dict:
    """geollava-score on lmms-eval's logged predictions, references, changes and timestamps read from the dataset."""
    test = load_dataset(str(dataset), config, split="test")
    lines = []
    for sample in run.samples:
        row = test[sample["doc_id"]]
        _, references = row_prompt_and_references(row)
        record = {"id": row["id"], "prediction": sample["filtered_resps"], "references": references}
        for column in ("changes", "timestamps"):
            if column in row:
                record[column] = row[column]
        lines.append(json.dumps(record))
    (workdir / "predictions.jsonl").write_text("\n".join(lines) + "\n")
    out = workdir / "metrics.json"
    assert score_main(["--predictions", str(workdir / "predictions.jsonl"), "--out", str(out)]) == 0
    return json.loads(out.read_text())


def check_scores_are_geollava_scores(run, task, shipped, dataset, workdir):
    assert run.results is not None, run.output[-6000:]
    scores = run.results["results"][task]
    assert run.results["n-samples"][task]["effective"] == LIMIT
    assert [sample["doc_id"] for sample in run.samples] == list(range(LIMIT))
    predictions = [sample["filtered_resps"] for sample in run.samples]
    assert all(isinstance(p, str) and p.strip() and not p.startswith(FAILED) for p in predictions), predictions
    config = load_yaml_config(str(TASKS_DIR / f"{shipped}.yaml"))["dataset_name"]
    expected = geollava_score_of_samples(run, dataset, workdir, config)
    assert expected["n_rows"] == LIMIT
    for key in hooks.TASK_KEYS[shipped]:
        assert isinstance(scores[f"{key},none"], float), (key, scores)
        assert scores[f"{key},none"] == pytest.approx(expected[key], abs=1e-6), key


def served_args(served_qwen, tiny_qwen) -> str:
    return f"model={tiny_qwen},base_url={served_qwen},api_key=EMPTY,num_concurrent=2,max_retries=1"


def test_the_shipped_geollava_task_on_its_hub_repo_id(hub_server, geollava_dataset, served_qwen, tiny_qwen, tmp_path):
    # The shipped YAML as it is: its dataset_path is the Hub repo id, here served by the loopback Hub.
    assert load_yaml_config(str(TASKS_DIR / "geollava.yaml"))["dataset_path"] == HUB_REPO
    assert push_main(["dataset", str(geollava_dataset), "--repo-id", HUB_REPO]) == 0
    args = served_args(served_qwen, tiny_qwen)
    limit = ("--limit", str(LIMIT), *GEN_KWARGS)
    run = run_lmms_eval(tmp_path, "geollava", "openai", args, *limit, include=TASKS_DIR, hub=True)
    check_scores_are_geollava_scores(run, "geollava", "geollava", geollava_dataset, tmp_path)


def test_the_levircc_task_on_a_local_folder(levircc_dataset, served_qwen, tiny_qwen, tmp_path):
    task = local_task(tmp_path / "tasks", "geollava_levircc", levircc_dataset)
    args = served_args(served_qwen, tiny_qwen)
    run = run_lmms_eval(tmp_path, task, "openai", args, "--limit", str(LIMIT), *GEN_KWARGS)
    check_scores_are_geollava_scores(run, task, "geollava_levircc", levircc_dataset, tmp_path)


def test_the_sequences_task_on_a_local_folder(sequences_dataset, served_qwen, tiny_qwen, tmp_path):
    # N dated frames a row: the served model gets them as N images, then the question with the dates.
    task = local_task(tmp_path / "tasks", "geollava_sequences", sequences_dataset)
    args = served_args(served_qwen, tiny_qwen)
    run = run_lmms_eval(tmp_path, task, "openai", args, "--limit", str(LIMIT), *GEN_KWARGS)
    check_scores_are_geollava_scores(run, task, "geollava_sequences", sequences_dataset, tmp_path)
    test = load_dataset(str(sequences_dataset), "sequences", split="test")
    assert [sample["temporal_f1"]["timestamps"] for sample in run.samples] == test["timestamps"][:LIMIT]
    assert (
        geollava_score_of_samples(run, sequences_dataset, tmp_path, "sequences")["temporal_truth"]["changes"] == LIMIT
    )


@pytest.mark.parametrize(("family", "model_class"), [("qwen2.5-vl", "qwen2_5_vl"), ("llava-onevision", "llava_hf")])
def test_the_geollava_task_on_a_local_folder_with_the_in_process_class(
    family, model_class, tiny_qwen, geollava_dataset, tmp_path
):
    # lmms-eval's own class for the family loads the folder itself: qwen2_5_vl, and llava_hf for LLaVA-OneVision.
    model = tiny_qwen if family == "qwen2.5-vl" else build_tiny_model(family, tmp_path / "model", image_size=32)
    task = local_task(tmp_path / "tasks", "geollava", geollava_dataset)
    model_args = f"pretrained={model},device=cpu,device_map=cpu"
    run = run_lmms_eval(tmp_path, task, model_class, model_args, "--limit", str(LIMIT), *GEN_KWARGS)
    check_scores_are_geollava_scores(run, task, "geollava", geollava_dataset, tmp_path)


def check_failed_before_scoring(run, task):
    assert run.results is None and not run.samples, run.output[-3000:]
    assert f"Selected Tasks: ['{task}']" in run.output
    assert "Error during evaluation: " in run.output
    # Nothing of the rows was touched: no traceback passes through the functions that read or score them.
    for name in ("doc_to_target", "process_geollava", "process_levircc", "process_sequences", "_scores"):
        assert f"in {name}\n" not in run.output, run.output[-6000:]
    assert "KeyError" not in run.output and "TypeError" not in run.output, run.output[-6000:]


def test_a_wrong_dataset_path_fails_with_the_datasets_message(tmp_path):
    missing = tmp_path / "no-such-dataset"
    task = local_task(tmp_path / "tasks", "geollava", missing)
    run = run_lmms_eval(tmp_path, task, "openai", "model=none,base_url=http://127.0.0.1:9/v1,api_key=EMPTY")
    check_failed_before_scoring(run, task)
    assert f"Couldn't find any data file at {missing}" in run.output
    assert "lmms_tasks/hooks.py" not in run.output


@pytest.mark.parametrize(
    ("shipped", "column"),
    [("geollava", "frames"), ("geollava_levircc", "conversations"), ("geollava_sequences", "timestamps")],
)
def test_a_missing_column_fails_naming_the_task_and_the_column(shipped, column, request, tmp_path):
    fixture = {"geollava": "geollava_dataset", "geollava_levircc": "levircc_dataset"}.get(shipped, "sequences_dataset")
    dataset = request.getfixturevalue(fixture)
    config = load_yaml_config(str(TASKS_DIR / f"{shipped}.yaml"))["dataset_name"]
    test = load_dataset(str(dataset), config, split="test").remove_columns(column)
    # The task's config, declared as the builds declare theirs. `datasets` keys its cache of a local folder on the
    # folder's name and this block: each case's folder has its own name.
    broken = tmp_path / f"broken_{shipped}"
    (broken / "data" / config).mkdir(parents=True)
    test.to_parquet(broken / "data" / config / "test-00000-of-00001.parquet")
    configs = f"configs:\n- config_name: {config}\n  data_files:\n  - split: test\n    path: data/{config}/test-*\n"
    (broken / "README.md").write_text(f"---\n{configs}---\n")
    task = local_task(tmp_path / "tasks", shipped, broken)
    run = run_lmms_eval(tmp_path, task, "openai", "model=none,base_url=http://127.0.0.1:9/v1,api_key=EMPTY")
    check_failed_before_scoring(run, task)
    assert f"Error during evaluation: task {shipped}: the dataset has no column '{column}'" in run.output
