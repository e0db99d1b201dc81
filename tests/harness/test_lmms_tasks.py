"""The shipped lmms-eval tasks: lmms-eval indexes and loads them, and their functions score as geollava-score."""

import fnmatch
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from datasets import load_dataset
from lmms_eval.tasks import TaskManager
from lmms_eval.utils import load_yaml_config

from dataset_builder.card import render_dataset_card
from trainer.evaluation.lmms_tasks import hooks
from trainer.evaluation.lmms_tasks.cli import TASKS_DIR, main
from trainer.evaluation.metric_sets import geollava_set, levircc_set
from trainer.evaluation.run_eval import row_question_and_references
from trainer.evaluation.temporal import temporal_set
from trainer.models.families import build_messages


ROOT = TASKS_DIR.parents[2]


def test_the_one_liner_prints_the_folder_lmms_eval_indexes(capsys):
    assert main([]) == 0
    assert capsys.readouterr().out.strip() == str(TASKS_DIR)
    script = Path(sys.executable).parent / "geollava-lmms-tasks"
    printed = subprocess.run([str(script)], capture_output=True, text=True, check=True)
    assert printed.stdout.strip() == str(TASKS_DIR)
    index = TaskManager(include_path=printed.stdout.strip()).task_index
    for task in hooks.TASK_KEYS:
        assert index[task]["type"] == "task"
        assert index[task]["yaml_path"] == str(TASKS_DIR / f"{task}.yaml")


@pytest.mark.parametrize("task", sorted(hooks.TASK_KEYS))
def test_each_task_names_its_metrics_and_the_project_functions(task):
    config = load_yaml_config(str(TASKS_DIR / f"{task}.yaml"))
    assert config["task"] == task
    assert config["dataset_name"] == ("sequences" if task == "geollava_sequences" else "default")
    assert config["test_split"] == "test"
    assert [m["metric"] for m in config["metric_list"]] == list(hooks.TASK_KEYS[task])
    prefix = hooks.PREFIX[task]
    for metric in config["metric_list"]:
        assert metric["aggregation"] is getattr(hooks, f"{prefix}_{metric['metric']}")
        assert metric["higher_is_better"] is True
    assert config["process_results"] is getattr(hooks, f"process_{prefix}")
    assert config["doc_to_visual"] is getattr(hooks, f"{prefix}_doc_to_visual")
    assert config["doc_to_text"] is getattr(hooks, f"{prefix}_doc_to_text")


def test_the_definitions_ship_as_package_data():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    assert any(fnmatch.fnmatch("trainer.evaluation.lmms_tasks", pattern) for pattern in include)
    patterns = pyproject["tool"]["setuptools"]["package-data"]["*"]
    for yaml in TASKS_DIR.glob("*.yaml"):
        assert any(fnmatch.fnmatch(yaml.name, pattern) for pattern in patterns), yaml.name
    assert (TASKS_DIR / "__init__.py").is_file()
    assert pyproject["project"]["scripts"]["geollava-lmms-tasks"] == "trainer.evaluation.lmms_tasks.cli:main"


def _rows(dataset, process, predictions):
    return [process(row, [prediction]) for row, prediction in zip(dataset, predictions)]


def test_geollava_aggregations_are_the_metric_set_on_the_same_rows(geollava_dataset):
    test = load_dataset(str(geollava_dataset), "default", split="test")
    docs = [{k: v for k, v in row.items() if k != "frames"} for row in test]  # lmms-eval scores rows without media
    predictions = [f"{row_question_and_references(row)[1][0].split('.')[0]}." for row in docs]
    predictions[0] = "A new road was built in the north."
    processed = _rows(docs, hooks.process_geollava, predictions)
    assert processed[0]["rouge1"] == {
        "id": docs[0]["id"],
        "prediction": predictions[0],
        "references": row_question_and_references(docs[0])[1],
        "changes": docs[0]["changes"],
    }
    references = [row_question_and_references(row)[1] for row in docs]
    expected = geollava_set(predictions, references, [row["changes"] for row in docs]).values
    for key in hooks.TASK_KEYS["geollava"]:
        assert getattr(hooks, f"geollava_{key}")([row[key] for row in processed]) == expected[key], key

    # Real fMoW pairs have no `changes`: grounding is not computed (None), the rest is.
    without = [{k: v for k, v in row.items() if k != "changes"} for row in docs]
    processed = _rows(without, hooks.process_geollava, predictions)
    assert hooks.geollava_grounding_f1([row["grounding_f1"] for row in processed]) is None
    assert hooks.geollava_rougeL([row["rougeL"] for row in processed]) == expected["rougeL"]


def test_levircc_aggregations_are_the_metric_set_on_the_same_rows(levircc_dataset):
    test = load_dataset(str(levircc_dataset), "default", split="test")
    docs = [{k: v for k, v in row.items() if k != "frames"} for row in test]
    predictions = ["many houses are built on the bare land", *["there is no difference"] * (len(docs) - 1)]
    processed = _rows(docs, hooks.process_levircc, predictions)
    assert processed[0]["cider_d"]["references"] == docs[0]["references"]
    expected = levircc_set(predictions, [row["references"] for row in docs]).values
    for key in hooks.TASK_KEYS["geollava_levircc"]:
        assert getattr(hooks, f"levircc_{key}")([row[key] for row in processed]) == expected[key], key


def test_sequences_aggregations_are_the_metric_sets_on_the_same_rows(sequences_dataset):
    test = load_dataset(str(sequences_dataset), "sequences", split="test")
    docs = [{k: v for k, v in row.items() if k != "frames"} for row in test]
    references = [row_question_and_references(row)[1] for row in docs]
    # The first row answered with its reference (its dated changes right), the others with its first sentence.
    predictions = [references[0][0], *(f"{refs[0].split('.')[0]}." for refs in references[1:])]
    processed = _rows(docs, hooks.process_sequences, predictions)
    assert processed[0]["temporal_f1"] == {
        "id": docs[0]["id"],
        "prediction": predictions[0],
        "references": references[0],
        "changes": docs[0]["changes"],
        "timestamps": docs[0]["timestamps"],
    }
    changes, timestamps = [row["changes"] for row in docs], [row["timestamps"] for row in docs]
    expected = geollava_set(predictions, references, changes)
    expected = expected.update(temporal_set(predictions, references, changes, timestamps)).values
    assert 0 < expected["temporal_f1"] < 1, expected["temporal_f1"]
    for key in hooks.TASK_KEYS["geollava_sequences"]:
        assert getattr(hooks, f"sequences_{key}")([row[key] for row in processed]) == expected[key], key

    # Without timestamps (rows read as pairs) there is no temporal grounding: what the task scores is theirs.
    undated = _rows(
        [{k: v for k, v in row.items() if k != "timestamps"} for row in docs], hooks.process_sequences, predictions
    )
    assert hooks.sequences_temporal_f1([row["temporal_f1"] for row in undated]) is None


def test_the_sequence_question_carries_the_dates_as_the_video_families_take_them(sequences_dataset):
    row = load_dataset(str(sequences_dataset), "sequences", split="test")[0]
    question = row_question_and_references(row)[0]
    n = len(row["timestamps"])
    assert n >= 3 and len(row["frames"]) == n
    text = hooks.sequences_doc_to_text({k: v for k, v in row.items() if k != "frames"})
    # lmms-eval sends the images first, then this text: LLaVA-NeXT-Video's dated form, the project's own.
    content = build_messages("llava-next-video", question, row["frames"], dates=row["timestamps"])[0]["content"]
    assert text == content[1]["text"]
    assert text.startswith(f"Frame dates: 1) {row['timestamps'][0][:10]}, 2) {row['timestamps'][1][:10]}, 3) ")
    assert text.endswith(f". {question}") and "<video>" not in text
    frames = hooks.sequences_doc_to_visual(row)
    assert [f.mode for f in frames] == ["RGB"] * n and frames[-1].size == row["frames"][-1].size

    undated = {k: v for k, v in row.items() if k != "timestamps"}
    with pytest.raises(
        ValueError, match=r"task geollava_sequences: the dataset has no column 'timestamps': the task "
    ):
        hooks.sequences_doc_to_text(undated)
    with pytest.raises(ValueError, match=r"no column 'timestamps'"):
        hooks.sequences_doc_to_visual(undated)
    with pytest.raises(ValueError, match=rf"row '{row['id']}': 'frames' must hold one image per timestamp \({n}\)"):
        hooks.sequences_doc_to_visual({**row, "frames": row["frames"][:-1]})
    reversed_dates = {**row, "timestamps": row["timestamps"][::-1]}
    with pytest.raises(ValueError, match=rf"row '{row['id']}': 'timestamps': frames must be in time order"):
        hooks.sequences_doc_to_text(reversed_dates)


def test_the_first_row_read_names_the_task_and_the_missing_columns(geollava_dataset):
    row = load_dataset(str(geollava_dataset), "default", split="test")[0]
    assert hooks.geollava_doc_to_text(row) == row_question_and_references(row)[0]
    assert "<video>" not in hooks.geollava_doc_to_text(row)
    frames = hooks.geollava_doc_to_visual(row)
    assert [f.mode for f in frames] == ["RGB", "RGB"] and frames[0].size == row["frames"][0].size
    # lmms-eval reads questions from rows without their images, and frames at the first request
    without = {k: v for k, v in row.items() if k not in ("frames", "conversations")}
    assert hooks.geollava_doc_to_text({k: v for k, v in row.items() if k != "frames"})
    with pytest.raises(ValueError, match=r"task geollava_levircc: the dataset has no column 'conversations': "):
        hooks.levircc_doc_to_text(without)
    with pytest.raises(ValueError, match=r"task geollava: the dataset has no column 'frames': the task reads id, "):
        hooks.geollava_doc_to_visual(without)
    with pytest.raises(ValueError, match=rf"task geollava: row '{row['id']}': no reference"):
        hooks.geollava_doc_to_text({**row, "conversations": [row["conversations"][0], {"from": "gpt", "value": ""}]})
    with pytest.raises(ValueError, match=rf"task geollava_levircc: row '{row['id']}': 'frames' must hold 2 images"):
        hooks.levircc_doc_to_visual({**row, "frames": row["frames"][:1]})


def test_the_dataset_cards_command_writes_a_task_lmms_eval_loads(geollava_dataset, tmp_path):
    card = str(render_dataset_card(geollava_dataset, "some-org/geollava"))
    section = card[card.index("## Evaluate a model on it") :]
    block = section[section.index("```bash\n") + len("```bash\n") : section.index("```\n", section.index("```bash"))]
    writes_the_task = block[: block.index("transformers serve")]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["bash", "-euc", writes_the_task], cwd=tmp_path, env=env, check=True)
    config = load_yaml_config(str(tmp_path / "tasks" / "geollava_here.yaml"))
    assert config["task"] == "geollava_here" and config["dataset_path"] == "some-org/geollava"
    assert [m["metric"] for m in config["metric_list"]] == list(hooks.TASK_KEYS["geollava"])
    assert "lmms-eval --include_path tasks --tasks geollava_here" in block
    assert "geollava_sequences" not in card  # a pairs-only build has no sequences task to name


def test_a_sequences_build_s_card_names_its_task_and_the_file_to_include(sequences_dataset, tmp_path):
    card = str(render_dataset_card(sequences_dataset, "some-org/geollava"))
    section = card[card.index("## Evaluate a model on it") : card.index("## Provenance")]
    assert "the task `geollava_sequences`" in section and "`geollava_sequences.yaml` on the `include:` line" in section
    block = section[section.index("```bash\n") + len("```bash\n") :]
    block = block[: block.index("transformers serve")]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(
        ["bash", "-euc", block.replace("geollava.yaml", "geollava_sequences.yaml")], cwd=tmp_path, env=env, check=True
    )
    config = load_yaml_config(str(tmp_path / "tasks" / "geollava_here.yaml"))
    assert config["dataset_name"] == "sequences" and config["dataset_path"] == "some-org/geollava"
    assert [m["metric"] for m in config["metric_list"]] == list(hooks.TASK_KEYS["geollava_sequences"])
