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
    assert result["encoder_device"] == "cpu"  # auto, on a machine without CUDA
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


def test_one_encoder_pass_by_default_and_a_fast_precision_prints_its_measured_deviation(tmp_path, capsys, monkeypatch):
    from trainer.evaluation import shared_encoder

    pred = _write(tmp_path / "p.jsonl", ROWS)
    base = ["--predictions", str(pred), "--meteor", "false"]
    assert main([*base, "--out", str(tmp_path / "exact.json")]) == 0
    exact = json.loads((tmp_path / "exact.json").read_text())
    assert exact["precision"] == {"encoder": "fp32", "deviation_from_fp32": None}
    for key in ("bertscore_f1", "sbert_cosine"):
        assert "one encoder pass shared by bertscore_f1 and sbert_cosine" in exact["models"][key]["detail"]
    # the libraries' own values on the same rows (macro means)
    preds = [r["prediction"] for r in ROWS]
    refs = [r.get("references") or [r["reference"]] for r in ROWS]
    assert exact["bertscore_f1"] == pytest.approx(sum(metrics.bertscore_f1(preds, refs)[0]) / 4, abs=1e-6)
    assert exact["sbert_cosine"] == pytest.approx(sum(metrics.sbert_cosine(preds, refs)[0]) / 4, abs=1e-6)
    breakdown = {"encoder", "bertscore_matching", "sbert_pooling", "rouge", "bleu"}
    assert {"rouge_bleu", "sbert_cosine", "bertscore_f1", "levircc", *breakdown} <= set(exact["timings_s"])

    measured = {
        "bertscore_f1": {"max_abs": 0.061, "mean_abs": 0.038},
        "sbert_cosine": {"max_abs": 0.06, "mean_abs": 0.02},
    }
    deviation = tmp_path / "precision_deviation.json"
    deviation.write_text(
        json.dumps({"measured": "2026-12-06", "rows": 6042, "precisions": {"int8": {"deviation": measured}}})
    )
    monkeypatch.setattr(shared_encoder, "DEVIATION_FILE", deviation)
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "int8.json"), "--precision", "int8"]) == 0
    fast = json.loads((tmp_path / "int8.json").read_text())
    assert fast["precision"]["encoder"] == "int8" and fast["precision"]["deviation_from_fp32"]["deviation"] == measured
    assert (
        "at most bertscore_f1 6.1e-02, sbert_cosine 6.0e-02 on the benchmark rows"
        in fast["models"]["bertscore_f1"]["detail"]
    )
    printed = capsys.readouterr().out
    assert "encoder in int8: per-row deviation from fp32 at most bertscore_f1 6.1e-02 (mean 3.8e-02)" in printed
    assert "measured on 6042 benchmark rows on 2026-12-06" in printed


def test_precision_bf16_scores_in_bf16_and_an_unknown_precision_is_refused(tmp_path, capsys):
    pred = _write(tmp_path / "p.jsonl", ROWS[:1])
    args = ["--predictions", str(pred), "--out", str(tmp_path / "m.json"), "--meteor", "false"]
    assert main([*args, "--precision", "bf16"]) == 0
    scored = json.loads((tmp_path / "m.json").read_text())
    assert scored["precision"]["encoder"] == "bf16"
    for key in ("bertscore_f1", "sbert_cosine"):
        assert "encoder in bf16" in scored["models"][key]["detail"] and 0 < scored[key] <= 1 + 1e-6, key
    with pytest.raises(SystemExit):  # not a precision this scorer knows
        main([*args, "--precision", "fp8"])
    assert main([*args, "--bertscore_bf16", "true"]) == 2  # no alias: --precision bf16 is the flag
    assert "not used by the HfArgumentParser: ['--bertscore_bf16', 'true']" in capsys.readouterr().err


def test_a_cuda_device_this_machine_lacks_is_refused_before_scoring(tmp_path, capsys):
    pred = _write(tmp_path / "p.jsonl", ROWS)
    assert main(["--predictions", str(pred), "--out", str(tmp_path / "m.json"), "--device", "cuda"]) == 2
    assert "--device 'cuda': no such CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "m.json").exists()
