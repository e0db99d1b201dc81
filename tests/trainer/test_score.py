"""geollava-score: every key, bad rows reported by line and counted, atomic output, non-zero exit when hopeless."""

import json

import pytest

from trainer.evaluation import metrics
from trainer.evaluation.score import main


ROWS = [
    {"id": "a", "prediction": "A new road was built in the north.", "references": ["A road was built in the north."]},
    {"id": "b", "prediction": "Nothing changed.", "reference": "No change is visible.", "category": "farm"},
    {
        "id": "c",
        "prediction": "Trees were cleared.",
        "references": ["A forest was cleared.", "Trees were removed.", "The trees are gone."],
        "category": "farm",
    },
    {"id": "d", "prediction": "", "references": ["A lake grew."], "category": "lake"},
]


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_cli_scores_every_metric(tmp_path, capsys):
    # METEOR (one JVM start) is exercised once per session, in the geollava-eval end-to-end test
    pred = _write(tmp_path / "p.jsonl", ROWS)
    out = tmp_path / "m" / "metrics.json"
    assert main(["--predictions", str(pred), "--out", str(out), "--meteor", "false"]) == 0
    result = json.loads(out.read_text())
    keys = ["rouge1", "rouge2", "rougeL", "sentence_bleu2", "sbert_cosine", "bertscore_f1", "sacrebleu"]
    keys += ["bleu1", "bleu2", "bleu3", "bleu4", "rougeL_coco", "cider_d"]
    for key in keys:
        assert isinstance(result[key], float), key
        assert 0.0 <= result[key] <= (10.0 if key == "cider_d" else 1.0), key
    assert "s_m" not in result and result["unavailable"]["s_m"] == "S*m needs METEOR"
    # the paper's macro mean of per-row values, the empty prediction counted as a real (zero) output
    preds = [r["prediction"] for r in ROWS]
    refs = [r.get("references") or [r["reference"]] for r in ROWS]
    assert result["rougeL"] == pytest.approx(sum(metrics.rouge_scores(preds, refs)["rougeL"]) / 4)
    assert result["n_rows"] == 4 and result["empty_predictions"] == 1 and result["n_skipped"] == 0
    assert result["per_category"]["farm"]["n"] == 2 and result["per_category"]["lake"]["rougeL"] == 0.0
    assert result["models"]["bertscore_f1"]["model"] == "all-MiniLM-L6-v2"
    assert "num_layers=6" in result["models"]["bertscore_f1"]["detail"]
    assert result["libraries"]["rouge-score"] and result["libraries"]["pycocoevalcap"]
    # no 'changes' anywhere: no grounding numbers, and the output says why
    assert "grounding_f1" not in result and "changes" in result["unavailable"]["grounding_f1"]
    assert not list(out.parent.glob(".metrics.json.*"))  # atomic write left no temp file
    printed = capsys.readouterr().out
    assert "scored 4 rows (0 skipped)" in printed and "meteor               not computed" in printed


def test_bad_rows_are_skipped_named_and_counted(tmp_path, caplog):
    rows = [
        ROWS[0],
        "{not json",
        {"id": "x1", "references": ["a"]},
        {"id": "x2", "prediction": "a", "references": []},
        {"id": "x3", "prediction": "a", "references": ["ok", ""]},
        {"id": "x4", "prediction": ["a", "b"], "references": ["a"]},
        {"id": "a", "prediction": "again", "references": ["a"]},
        {"prediction": "no id", "references": ["a"]},
        ROWS[1],
    ]
    pred = _write(tmp_path / "p.jsonl", rows)
    out = tmp_path / "metrics.json"
    assert main(["--predictions", str(pred), "--out", str(out), "--meteor", "false", "--model_metrics", "false"]) == 0
    result = json.loads(out.read_text())
    assert result["n_rows"] == 2 and result["n_skipped"] == 7
    reasons = {s["line"]: s["reason"] for s in result["skipped"]}
    assert "not valid JSON" in reasons[2]
    assert reasons[3] == "no 'prediction'"
    assert reasons[4] == "empty list of references"
    assert "1 of 2 references are empty strings" in reasons[5]
    assert "must be one string" in reasons[6]
    assert "duplicate id" in reasons[7]
    assert reasons[8] == "no 'id'"
    assert "line 3 (id 'x1'): skipped: no 'prediction'" in caplog.text
    assert "sbert_cosine" not in result and "turned off" in result["unavailable"]["sbert_cosine"]


def test_references_file_unknown_and_missing_ids(tmp_path):
    pred = _write(tmp_path / "p.jsonl", [{"id": "a", "prediction": "a road"}, {"id": "zz", "prediction": "b"}])
    refs = _write(
        tmp_path / "r.jsonl",
        [{"id": "a", "references": ["a road"], "category": "c"}, {"id": "b", "references": ["x"]}],
    )
    out = tmp_path / "metrics.json"
    args = ["--predictions", str(pred), "--references", str(refs), "--out", str(out)]
    assert main([*args, "--meteor", "false", "--model_metrics", "false"]) == 0
    result = json.loads(out.read_text())
    assert result["n_rows"] == 1 and result["rouge1"] == 1.0
    reasons = sorted(s["reason"] for s in result["skipped"])
    assert reasons == ["in the references file but has no prediction", "unknown id: not in the references file"]


def test_nothing_scorable_exits_non_zero_and_names_the_problem(tmp_path, capsys):
    pred = _write(tmp_path / "p.jsonl", [{"id": "a", "prediction": "x"}])
    out = tmp_path / "metrics.json"
    assert main(["--predictions", str(pred), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no row can be scored" in err and "line 1: no 'references'" in err
    assert not out.exists()


def test_config_validation_names_the_field(tmp_path, capsys):
    assert main(["--predictions", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "m.json")]) == 2
    assert "--predictions: no such file" in capsys.readouterr().err


def test_grounding_when_rows_carry_changes(tmp_path):
    pytest.importorskip("dataset_builder.changes")
    rows = [
        {"id": "a", "prediction": "Nothing changed.", "references": ["No change."], "changes": []},
        {"id": "b", "prediction": "Nothing changed.", "references": ["A road."], "changes": [{"kind": "road_built"}]},
        {"id": "c", "prediction": "x", "references": ["y"]},
    ]
    pred = _write(tmp_path / "p.jsonl", rows)
    out = tmp_path / "metrics.json"
    assert main(["--predictions", str(pred), "--out", str(out), "--meteor", "false", "--model_metrics", "false"]) == 0
    result = json.loads(out.read_text())
    assert result["grounding_rows"] == 2 and "1 scored rows have no 'changes'" in result["grounding_note"]
    assert 0.0 <= result["grounding_f1"] <= 1.0
