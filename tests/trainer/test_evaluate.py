"""geollava-eval end to end on a tiny adapter and a tiny Hub-layout split: every metric, report, plots, resume."""

import json

import numpy as np
import pytest
from datasets import Dataset
from PIL import Image as PILImage

from dataset_builder.prompts import PROMPT_TEMPLATES, human_turn
from dataset_builder.rows import features
from tests.trainer.helpers import tiny_base_and_adapter
from trainer.evaluation.run_eval import main, row_prompt_and_references


CAPTIONS = [
    "The first image shows farmland. The second image shows a new building in the north-east.",
    "Both images show the same forest. Nothing changed.",
    "A road was widened in the south. A new building appeared.",
    "The lake expanded to the west.",
    "The forest was cleared for construction.",
]
CORPUS = [*PROMPT_TEMPLATES, *CAPTIONS]
CHANGES = [
    [{"kind": "building_built", "location": "north-east", "size": "small"}],
    [],
    [
        {"kind": "road_widened", "location": "south", "size": "small"},
        {"kind": "building_built", "location": "", "size": ""},
    ],
    [{"kind": "water_expanded", "location": "west", "size": "large"}],
    [{"kind": "forest_cleared", "location": "centre", "size": "large"}],
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    base, adapter = tiny_base_and_adapter("llava-next-video", root, CORPUS)

    rng = np.random.default_rng(0)
    n = len(CAPTIONS)
    rows = {
        "id": [f"farm_{i}_0-farm_{i}_1" for i in range(n)],
        "category": ["farm", "forest", "farm", "lake", "forest"],
        "frames": [
            [PILImage.fromarray(rng.integers(0, 255, (24 + i, 28, 3), dtype=np.uint8)) for _ in range(2)]
            for i in range(n)
        ],
        "conversations": [
            [{"from": "human", "value": human_turn(i % 6)}, {"from": "gpt", "value": CAPTIONS[i]}] for i in range(n)
        ],
        "changes": CHANGES,
    }
    data = root / "dataset"
    (data / "data" / "default").mkdir(parents=True)
    Dataset.from_dict(
        rows, features=features(columns=("id", "category", "frames", "conversations", "changes"))
    ).to_parquet(data / "data" / "default" / "test-00000-of-00001.parquet")
    (data / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: test\n"
        "    path: data/default/test-*.parquet\n---\n# tiny\n"
    )
    return base, adapter, data


def test_eval_end_to_end_every_metric_report_plots_and_resume(tiny_run, tmp_path, capsys):
    base, adapter, data = tiny_run
    out = tmp_path / "eval"
    args = ["--model", str(base), "--adapter", str(adapter), "--dataset", str(data), "--split", "test"]
    args += ["--batch_size", "2", "--max_new_tokens", "12", "--out", str(out)]
    assert main(args) == 0
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == [f"farm_{i}_0-farm_{i}_1" for i in range(5)]
    for r, caption, changes in zip(records, CAPTIONS, CHANGES, strict=True):
        assert r["references"] == [caption] and r["changes"] == changes
        assert "<video>" not in r["prompt"] and r["prompt"] in PROMPT_TEMPLATES
        assert isinstance(r["prediction"], str)

    metrics = json.loads((out / "metrics.json").read_text())
    for key in ["rouge1", "rouge2", "rougeL", "sentence_bleu2", "sbert_cosine", "bertscore_f1", "sacrebleu"]:
        assert isinstance(metrics[key], float), key
    for key in ["bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rougeL_coco", "cider_d", "s_m"]:
        assert isinstance(metrics[key], float), key
    assert metrics["s_m"] == pytest.approx(
        (metrics["bleu4"] + metrics["meteor"] + metrics["rougeL_coco"] + metrics["cider_d"]) / 4
    )
    assert metrics["models"]["levircc"]["meteor"].startswith("METEOR 1.5")
    try:
        import dataset_builder.changes  # noqa: F401
    except ImportError:  # the extractor is another engineer's module; until it lands, the output says why
        assert "dataset_builder.changes" in metrics["unavailable"]["grounding_f1"]
    else:
        assert 0 <= metrics["grounding_f1"] <= 1 and metrics["grounding_rows"] == 5
    assert metrics["n_rows"] == 5 and metrics["run"]["rows_generated"] == 5 and metrics["run"]["decoding"] == "greedy"
    assert set(metrics["per_category"]) == {"farm", "forest", "lake"}
    report = (out / "report.md").read_text()
    assert "Video-LLaVA 100K LoRA" in report and "CCExpert-7B" in report and "this run" in report
    assert f"| lake | 1 | {metrics['per_category']['lake']['rougeL']:.3f} |" in report
    assert f"| **this run** | {metrics['rouge1']:.3f} | {metrics['rouge2']:.3f} |" in report
    for png in (
        "metrics_vs_paper.png",
        "levircc_vs_ccexpert.png",
        "rougeL_per_category.png",
        "prediction_lengths.png",
    ):
        with PILImage.open(out / png) as image:
            assert image.format == "PNG" and image.width > 100
        assert f"]({png})" in report

    # resume: nothing is generated again, the predictions are untouched
    before = (out / "predictions.jsonl").read_text()
    assert main([*args, "--meteor", "false", "--model_metrics", "false"]) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert again["run"]["rows_generated"] == 0 and again["run"]["rows_reused"] == 5
    assert (out / "predictions.jsonl").read_text() == before
    assert again["rougeL"] == metrics["rougeL"]


def test_eval_resumes_after_a_torn_line_and_limit(tiny_run, tmp_path):
    base, adapter, data = tiny_run
    out = tmp_path / "eval"
    args = ["--model", str(base), "--adapter", str(adapter), "--dataset", str(data), "--out", str(out)]
    args += ["--max_new_tokens", "6", "--meteor", "false", "--model_metrics", "false"]
    assert main([*args, "--limit", "2"]) == 0
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 2
    (out / "predictions.jsonl").write_text(lines[0] + "\n" + lines[1][:15])  # an interrupted write
    assert main([*args, "--limit", "3"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["rows_reused"] == 1 and metrics["run"]["rows_generated"] == 2 and metrics["n_rows"] == 3
    assert [json.loads(x)["id"] for x in (out / "predictions.jsonl").read_text().splitlines()] == [
        f"farm_{i}_0-farm_{i}_1" for i in (0, 1, 2)
    ]


def test_resume_with_other_settings_is_refused(tiny_run, tmp_path, capsys):
    base, adapter, data = tiny_run
    out = tmp_path / "eval"
    args = ["--model", str(base), "--dataset", str(data), "--out", str(out), "--limit", "1"]
    args += ["--max_new_tokens", "4", "--meteor", "false", "--model_metrics", "false"]
    assert main(args) == 0  # the base model alone
    assert main([*args, "--adapter", str(adapter)]) == 1
    assert "adapter: None -> " in capsys.readouterr().err
    assert main([*args, "--adapter", str(adapter), "--resume", "false"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["rows_generated"] == 1 and metrics["run"]["adapter"] == str(adapter)


def test_beam_search_is_recorded_and_resumed_only_with_the_same_beams(tiny_run, tmp_path, capsys):
    base, adapter, data = tiny_run
    out = tmp_path / "eval"
    args = ["--model", str(base), "--adapter", str(adapter), "--dataset", str(data), "--out", str(out)]
    args += ["--limit", "2", "--max_new_tokens", "5", "--meteor", "false", "--model_metrics", "false"]
    assert main([*args, "--num_beams", "3"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["decoding"] == "beam search (3 beams)" and metrics["run"]["num_beams"] == 3
    assert json.loads((out / "generation_config.json").read_text())["num_beams"] == 3
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 2

    assert main(args) == 1  # greedy would mix two decodings in one predictions.jsonl
    assert "num_beams: 3 -> 1" in capsys.readouterr().err

    # a record written before --num_beams existed was greedy: resuming it greedily is accepted
    record = json.loads((out / "generation_config.json").read_text())
    del record["num_beams"]
    (out / "generation_config.json").write_text(json.dumps(record))
    assert main(args) == 0
    assert json.loads((out / "metrics.json").read_text())["run"]["rows_reused"] == 2


def test_row_checks_name_the_field():
    frames = [object(), object()]
    good = {"conversations": [{"from": "human", "value": human_turn(0)}, {"from": "gpt", "value": "x"}]}
    assert row_prompt_and_references({**good, "frames": frames}) == (PROMPT_TEMPLATES[0], ["x"])
    levir = {**good, "frames": frames, "references": ["a", "b", "", "c", "d"]}
    assert row_prompt_and_references(levir)[1] == ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="'frames' must hold 2 images, got 1"):
        row_prompt_and_references({**good, "frames": frames[:1]})
    with pytest.raises(ValueError, match="gpt turn is empty"):
        row_prompt_and_references(
            {"frames": frames, "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": ""}]}
        )
    with pytest.raises(ValueError, match="'conversations' must hold"):
        row_prompt_and_references({"frames": frames, "conversations": []})


def test_bad_options_exit_non_zero(tiny_run, tmp_path, capsys):
    base, _, data = tiny_run
    assert main(["--model", str(base), "--dataset", str(data), "--out", str(tmp_path), "--limit", "0"]) == 2
    assert "--limit must be >= 1, got 0" in capsys.readouterr().err
    assert main(["--model", str(base), "--dataset", str(data), "--out", str(tmp_path), "--num_beams", "0"]) == 2
    assert "--num_beams must be >= 1, got 0" in capsys.readouterr().err
    empty = tmp_path / "empty"
    assert main(["--model", str(base), "--dataset", str(data), "--out", str(empty), "--split", "nope"]) == 1
    assert "geollava-eval: error:" in capsys.readouterr().err
