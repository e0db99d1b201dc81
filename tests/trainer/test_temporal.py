"""The dated-change parser on fixed strings; temporal_f1 and its majority answer against hand-computed values."""

import json

import pytest

from dataset_builder.changes import extract_dated_changes
from trainer.evaluation.score import main as score_main
from trainer.evaluation.temporal import (
    event_scores,
    majority_events,
    match_events,
    month,
    row_truth,
    temporal_majority,
    temporal_scores,
    temporal_set,
    true_events,
)


CAPTION = (
    "The first image, from 2016-03, shows fields. The last image, from 2019-01, shows houses beside a road. "
    "Between 2016-03 and 2017-08, a new road was built across the north and a small group of new buildings was "
    "built in the east. Between 2017-08 and 2019-01, the lake in the west receded, leaving a small area dry."
)


def _event(kind, start, end):
    return {"kind": kind, "start": start, "end": end}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            CAPTION,
            [
                _event("building_built", "2016-03", "2017-08"),
                _event("road_built", "2016-03", "2017-08"),
                _event("water_shrunk", "2017-08", "2019-01"),
            ],
        ),
        # days are dropped: intervals are months
        (
            "Between 2016-03-02 and 2017-08-15, trees were cut down in the north.",
            [_event("forest_cleared", "2016-03", "2017-08")],
        ),
        # the end of the sentence ends the clause: the road is in no interval
        ("Between 2016-03 and 2017-08, nothing changed. A new road was built in the south.", []),
        # two clauses in one sentence: each kind takes the clause before it
        (
            "Between 2016-03 and 2017-08 the road in the east was widened, and between 2017-08 and 2019-01 "
            "buildings in the north were torn down.",
            [_event("road_widened", "2016-03", "2017-08"), _event("building_demolished", "2017-08", "2019-01")],
        ),
        ("Between 2016-03 and 2017-08, no new buildings were built.", []),
        # the two dates in either order
        (
            "between 2019-01 and 2016-03 the water in the north expanded over a small area",
            [_event("water_expanded", "2016-03", "2019-01")],
        ),
        ("No change is visible across the 3 dates.", []),
        ("Between 2016-13 and 2017-08, a new road was built.", []),
        ("A new road was built between 2016-03 and 2017-08.", []),
        ("", []),
    ],
)
def test_extract_dated_changes_on_fixed_strings(text, expected):
    assert extract_dated_changes(text) == expected


STAMPS = ["2016-03-02T10:00:00Z", "2017-08-15T10:00:00Z", "2019-01-30T10:00:00Z"]


def _change(kind, i, stamps=STAMPS):
    return {"kind": kind, "location": "north", "size": "small", "start": stamps[i], "end": stamps[i + 1]}


def test_true_events_are_months_and_one_per_kind_and_interval():
    changes = [_change("building_built", 1), _change("building_built", 1), _change("road_built", 0)]
    assert true_events(changes) == [("road_built", "2016-03", "2017-08"), ("building_built", "2017-08", "2019-01")]
    assert month("2017-08-15T10:00:00.123Z") == "2017-08"
    with pytest.raises(ValueError, match="needs 'kind', 'start' and 'end'"):
        true_events([{"kind": "road_built", "location": "north", "size": "small"}])
    with pytest.raises(ValueError, match="no month 13"):
        month("2017-13-01")


def test_temporal_scores_equal_hand_computed_values():
    same_month = ["2015-06-01T00:00:00Z", "2016-03-02T00:00:00Z", "2016-03-20T00:00:00Z", "2017-08-15T00:00:00Z"]
    rows = [
        # road right (tp); the lake's interval holds the truth but skips the shown 2017-08 (fp); 2 missed (fn 2)
        (
            "Between 2016-03 and 2017-08, a new road was built across the north. Between 2016-03 and 2019-01, the "
            "lake in the west receded, leaving a small area dry.",
            [_change("road_built", 0), _change("building_built", 0), _change("water_shrunk", 1)],
            STAMPS,
        ),
        ("No change is visible across the 3 dates.", [], STAMPS),  # tp (no change)
        ("Between 2016-03 and 2017-08, trees were cut down in the north.", [], STAMPS),  # fp 1, fn 1 (no change)
        # two frames in one month: 2016-03 is no date strictly inside 2016-03..2017-08 (tp)
        ("Between 2016-03 and 2017-08, trees were cut down.", [_change("forest_cleared", 2, same_month)], same_month),
        ("A new building was built.", [_change("building_built", 0)], STAMPS),  # no dated event: fp 1, fn 1
    ]
    predictions, changes, stamps = zip(*rows, strict=True)
    scores = temporal_scores(predictions, [true_events(c) for c in changes], stamps)
    assert scores["temporal_counts"] == {"tp": 3, "fp": 3, "fn": 4}
    assert scores["temporal_precision"] == pytest.approx(3 / 6)
    assert scores["temporal_recall"] == pytest.approx(3 / 7)
    assert scores["temporal_f1"] == pytest.approx(6 / 13)
    assert scores["temporal_rows"] == 5


def test_matching_is_one_to_one_and_the_tightest_prediction_chooses_first():
    shown = ["2016-03", "2016-03", "2017-08"]
    truth = [("road_built", "2016-03", "2016-03"), ("road_built", "2016-03", "2017-08")]
    wide_first = [("road_built", "2016-03", "2017-08"), ("road_built", "2016-03", "2016-03")]
    assert match_events(wide_first, truth, shown) == (2, 0, 0)
    assert match_events([("road_built", "2016-03", "2017-08")] * 2, truth[1:], shown) == (1, 1, 0)
    assert match_events([("road_built", "2016-03", "2017-08")], [("building_built", *truth[1][1:])], shown) == (
        0,
        1,
        1,
    )


def test_majority_answer_equals_hand_computed_values():
    changes = [
        [_change("building_built", 0)],
        [_change("building_built", 1), _change("road_built", 1)],
        [_change("building_built", 0)],
        [],
    ]
    truths = [true_events(c) for c in changes]
    majority = temporal_majority(truths, [STAMPS] * 4, changes)
    # k=0: F1 2/9; k=1 (building_built in gap 0): 4/9; k=2 (+ road_built in gap 1): 6/13, the best
    assert majority["kinds"] == ["building_built", "road_built"]
    assert majority["gaps"] == {"building_built": 0, "road_built": 1}
    assert majority["temporal_counts"] == {"tp": 3, "fp": 5, "fn": 2}
    assert majority["temporal_f1"] == pytest.approx(6 / 13)
    # the same answer on its kinds alone: tp 4, fp 4, fn 1
    assert majority["grounding_precision"] == pytest.approx(0.5)
    assert majority["grounding_f1"] == pytest.approx(8 / 13)
    # a shorter row gets the kind in its last interval
    assert majority_events(["road_built"], {"road_built": 3}, STAMPS) == [("road_built", "2017-08", "2019-01")]
    # the answer is scored by the same function as a model's events
    rendered = [majority_events(majority["kinds"], majority["gaps"], STAMPS) for _ in truths]
    assert event_scores(rendered, truths, [STAMPS] * 4)["temporal_f1"] == majority["temporal_f1"]


def test_no_change_everywhere_makes_the_empty_answer_the_majority():
    majority = temporal_majority([[], [], [true_events([_change("road_built", 0)])[0]]], [STAMPS] * 3)
    assert majority["kinds"] == [] and majority["temporal_counts"] == {"tp": 2, "fp": 1, "fn": 1}


def test_truth_comes_from_changes_else_from_a_dated_reference():
    assert row_truth([_change("road_built", 0)], ["anything"]) == ([("road_built", "2016-03", "2017-08")], "changes")
    assert row_truth(None, [CAPTION])[1] == "annotation" and len(row_truth(None, [CAPTION])[0]) == 3
    assert row_truth(None, ["No change is visible across the 3 dates."]) == ([], "annotation")
    assert row_truth(None, ["A road was built at some point."]) == (None, None)


def test_temporal_set_skips_pairs_and_says_why_when_no_row_has_dated_truth():
    assert temporal_set(["a"], [["b"]], [[]], [None]).values == {}
    unknown = temporal_set(["x"], [["A road was built at some point."]], None, [STAMPS])
    assert set(unknown.unavailable) == {"temporal_precision", "temporal_recall", "temporal_f1"}
    assert "none of the 1 sequence rows has true dated changes" in unknown.unavailable["temporal_f1"]
    mixed = temporal_set([CAPTION, "x"], [[CAPTION], ["undated"]], None, [STAMPS, STAMPS])
    assert mixed.values["temporal_f1"] == 1.0 and mixed.values["temporal_truth"] == {
        "changes": 0,
        "annotation": 1,
        "none": 1,
    }
    assert "1 sequence rows state no dated changes" in mixed.values["temporal_note"]


def test_geollava_score_reports_temporal_metrics_and_the_majority(tmp_path, capsys):
    rows = [
        {"id": "a", "prediction": CAPTION, "references": [CAPTION], "timestamps": STAMPS},
        {
            "id": "b",
            "prediction": "No change is visible across the 3 dates.",
            "references": ["No change is visible across the 3 dates."],
            "timestamps": STAMPS,
            "changes": [],
        },
        {"id": "c", "prediction": "x", "references": ["y"], "timestamps": ["2016"]},
    ]
    path = tmp_path / "predictions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "metrics.json"
    args = ["--predictions", str(path), "--out", str(out), "--meteor", "false", "--model_metrics", "false"]
    assert score_main(args) == 0
    metrics = json.loads(out.read_text())
    assert metrics["temporal_f1"] == 1.0 and metrics["temporal_rows"] == 2
    assert metrics["temporal_truth"] == {"changes": 1, "annotation": 1, "none": 0}
    assert metrics["temporal_majority"]["kinds"] == ["building_built", "road_built", "water_shrunk"]
    assert [s["id"] for s in metrics["skipped"]] == ["c"] and "timestamps" in metrics["skipped"][0]["reason"]
    assert "temporal_f1" in capsys.readouterr().out
