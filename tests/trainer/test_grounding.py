"""Grounding scores on hand-made cases: micro/macro precision, recall, F1 of the change kinds a caption names."""

import pytest

from trainer.evaluation.grounding import grounding_scores, true_kinds


WORDS = {"road": "road_built", "building": "building_built", "forest": "forest_cleared", "lake": "water_expanded"}


def keyword_kinds(text: str) -> set[str]:
    """A hand-made extractor, so the counting is checked independently of the real wording rules."""
    return {kind for word, kind in WORDS.items() if word in text.lower()} or {"no_change"}


def test_true_kinds_and_no_change():
    assert true_kinds([]) == {"no_change"}
    assert true_kinds(None) == {"no_change"}
    assert true_kinds([{"kind": "road_built"}, {"kind": "road_built", "size": "small"}]) == {"road_built"}
    with pytest.raises(ValueError, match="change 0 has no 'kind'"):
        true_kinds([{"location": "north"}])


def test_hand_computed_micro_and_macro():
    predictions = [
        "A new road and a building.",  # truth {road, building}: tp 2
        "A road appears.",  # truth {road, forest}: tp 1, fn 1
        "A lake grew.",  # truth no change: fp 1 (water), fn 1 (no_change)
        "Nothing changed.",  # truth no change: tp 1
    ]
    changes = [
        [{"kind": "road_built"}, {"kind": "building_built"}],
        [{"kind": "road_built"}, {"kind": "forest_cleared"}],
        [],
        [],
    ]
    got = grounding_scores(predictions, changes, extract=keyword_kinds)
    tp, fp, fn = 4, 1, 2
    assert got["grounding_precision"] == pytest.approx(tp / (tp + fp))
    assert got["grounding_recall"] == pytest.approx(tp / (tp + fn))
    p, r = tp / (tp + fp), tp / (tp + fn)
    assert got["grounding_f1"] == pytest.approx(2 * p * r / (p + r))
    # per-row P: 1, 1, 0, 1; R: 1, 0.5, 0, 1; F1: 1, 2/3, 0, 1
    assert got["grounding_precision_macro"] == pytest.approx(3 / 4)
    assert got["grounding_recall_macro"] == pytest.approx(2.5 / 4)
    assert got["grounding_f1_macro"] == pytest.approx((1 + 2 / 3 + 0 + 1) / 4)
    assert got["grounding_exact_match"] == pytest.approx(2 / 4)
    assert got["grounding_rows"] == 4
    per_kind = got["grounding_per_kind"]
    assert per_kind["no_change"] == {"tp": 1, "fp": 0, "fn": 1, "precision": 1.0, "recall": 0.5, "f1": 2 / 3}
    assert per_kind["water_expanded"]["fp"] == 1 and per_kind["forest_cleared"]["fn"] == 1


def test_perfect_and_all_wrong():
    perfect = grounding_scores(["a road"], [[{"kind": "road_built"}]], extract=keyword_kinds)
    assert (perfect["grounding_precision"], perfect["grounding_recall"], perfect["grounding_f1"]) == (1.0, 1.0, 1.0)
    wrong = grounding_scores(["nothing"], [[{"kind": "road_built"}]], extract=keyword_kinds)
    assert (wrong["grounding_precision"], wrong["grounding_recall"], wrong["grounding_f1"]) == (0.0, 0.0, 0.0)


def test_count_mismatch_is_an_error():
    with pytest.raises(ValueError, match="2 predictions but 1 change lists"):
        grounding_scores(["a", "b"], [[]], extract=keyword_kinds)


def test_default_extractor_is_the_dataset_builders():
    changes = pytest.importorskip("dataset_builder.changes")
    text = "Nothing changed between the two images."
    got = grounding_scores([text], [[]])
    assert got["grounding_rows"] == 1
    assert got["grounding_f1"] == (1.0 if changes.extract_change_kinds(text) == {"no_change"} else 0.0)


def test_majority_answer_names_the_most_common_kinds_and_is_hand_computed():
    from trainer.evaluation.grounding import majority_baseline

    road, forest = {"kind": "road_built"}, {"kind": "forest_cleared"}
    # road on 3 rows, no_change on 2 (an empty list or None), forest on 1: 6 true kinds over 5 rows
    changes = [[road], [road], [road, forest], [], None]
    got = majority_baseline(changes)
    # "road" alone: tp 3, fp 2, fn 3 -> F1 6/11; "road + no_change": tp 5, fp 5, fn 1 -> F1 10/16 (the best);
    # all three: tp 6, fp 9, fn 0 -> F1 12/21
    assert got["kinds"] == ["road_built", "no_change"]
    assert got["grounding_f1"] == pytest.approx(10 / 16)
    assert got["grounding_precision"] == pytest.approx(5 / 10) and got["grounding_recall"] == pytest.approx(5 / 6)
    assert got["grounding_rows"] == 5
    # the same numbers as scoring a model that always writes that answer
    always = grounding_scores(["a road; nothing else changed"] * 5, changes, extract=lambda _: set(got["kinds"]))
    assert always["grounding_f1"] == got["grounding_f1"]
    with pytest.raises(ValueError, match="no row"):
        majority_baseline([])
