import json
import re

import pytest

from dataset_builder.annotation.base import AnnotationRequest
from dataset_builder.changes import CHANGE_KINDS, LOCATIONS, extract_change_kinds, extract_locations, true_kinds
from dataset_builder.prompts import month_of
from dataset_builder.synthetic.describe import SyntheticAnnotator, describe_corpus, describe_pair, describe_sequence
from dataset_builder.synthetic.synth import SynthConfig, generate_tree


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate_tree(SynthConfig(out=str(root), locations=30, seed=1, image_size=64, oversize_fraction=0))
    return root


def _locations(tree):
    return [json.loads(line) for line in (tree / "groundtruth" / "train.jsonl").read_text().splitlines()]


def test_captions_name_exactly_the_true_kinds_and_places(tree):
    n = 0
    for loc in _locations(tree):
        for pair_id, pair in loc["pairs"].items():
            caption = describe_pair(loc, pair_id)
            assert extract_change_kinds(caption) == true_kinds(pair["changes"]), caption
            assert {c["location"] for c in pair["changes"]} <= extract_locations(caption)
            n += 1
    assert n > 20


def test_describer_is_deterministic_and_varied(tree):
    locs = _locations(tree)
    captions = [describe_pair(loc, pid) for loc in locs for pid in loc["pairs"]]
    assert captions == [describe_pair(loc, pid) for loc in locs for pid in loc["pairs"]]
    assert len(set(captions)) > 0.8 * len(captions)
    lengths = sorted(len(c.split()) for c in captions)
    assert lengths[0] >= 20 and lengths[-1] <= 100
    assert 25 <= lengths[len(lengths) // 2] <= 60, "the median caption should be 25-60 words"


def test_wording_follows_content_not_chance():
    """The same ground truth under other pair ids gets at most 2 x 2 x 2 wordings; other content changes the text."""
    objects = [{"kind": "land_cover", "value": "farmland"}, {"kind": "water", "location": "west"}]
    change = {"kind": "water_expanded", "location": "west", "size": "large"}
    texts = set()
    for k in range(60):
        a, b = f"x_0_{k}", f"x_0_{k + 100}"
        loc = {"location_id": "x_0", "images": {a: {"objects": objects}, b: {"objects": objects}}}
        loc["pairs"] = {f"{a}-{b}": {"changes": [change]}}
        texts.add(describe_pair(loc, f"{a}-{b}"))
        assert "west" in texts.copy().pop() and "lake" in texts.copy().pop()
    assert 2 <= len(texts) <= 8
    assert all(extract_change_kinds(t) == {"water_expanded"} for t in texts)


def test_corpus_covers_the_describers_vocabulary(tree):
    corpus = describe_corpus(1500, seed=0)
    vocab = {w for c in corpus for w in c.split()}
    assert len(vocab) < 300, "a small closed vocabulary"
    for words in (
        {w for c in describe_corpus(300, seed=9) for w in c.split()},
        {w for loc in _locations(tree) for pid in loc["pairs"] for w in describe_pair(loc, pid).split()},
    ):
        assert words <= vocab, words - vocab
    text = " ".join(corpus)
    assert all(loc in extract_locations(text) for loc in LOCATIONS)
    assert extract_change_kinds(text) == set(CHANGE_KINDS)


def test_synthetic_annotator(tree):
    loc = _locations(tree)[0]
    pair_id = next(iter(loc["pairs"]), None)
    requests = [
        AnnotationRequest(id=pair_id, image_paths=(tree, tree), metadata={"split": "train"}),
        AnnotationRequest(id="x_1_0-x_1_1", image_paths=(tree, tree), metadata={"split": "train"}),
    ]
    results = list(SyntheticAnnotator(tree).annotate(requests))
    assert results[0].status == "ok" and results[0].text == describe_pair(loc, pair_id)
    assert results[1].status == "missing" and "x_1_0-x_1_1" in results[1].reason


INTERVAL = re.compile(r"Between (\d{4}-\d{2}) and (\d{4}-\d{2}), ([^.]*)\.")


def _sequences(tree):
    """Every location with 3 dates or more: all its views, and its first, a middle and its last view."""
    for loc in _locations(tree):
        stems = sorted(loc["images"], key=lambda s: loc["images"][s]["timestamp"])
        if len(stems) >= 3:
            yield loc, stems
            yield loc, [stems[0], stems[len(stems) // 2], stems[-1]]


def test_sequence_captions_give_each_interval_its_months_and_kinds(tree):
    n = changed = 0
    for loc, stems in _sequences(tree):
        timestamps = [loc["images"][s]["timestamp"] for s in stems]
        caption = describe_sequence(loc, stems, timestamps)
        steps = [loc["pairs"][f"{a}-{b}"]["changes"] for a, b in zip(stems, stems[1:], strict=False)]
        assert extract_change_kinds(caption) == true_kinds([c for step in steps for c in step]), caption
        # the first and the last view, with their months, then one sentence per interval with a change, in order
        first, last = caption.split(". ")[:2]
        assert month_of(timestamps[0]) in first and month_of(timestamps[-1]) in last
        expected = [
            (month_of(timestamps[i]), month_of(timestamps[i + 1]), {c["kind"] for c in step})
            for i, step in enumerate(steps)
            if step
        ]
        found = [(a, b, extract_change_kinds(text)) for a, b, text in INTERVAL.findall(caption)]
        assert found == expected, caption
        n, changed = n + 1, changed + bool(expected)
    assert n > 10 and changed > 0


def test_several_changes_of_one_interval_share_its_sentence():
    objects = [{"kind": "land_cover", "value": "farmland"}]
    stems = ["x_0_2", "x_0_0", "x_0_1"]
    road = {"kind": "road_built", "location": "north", "size": "small"}
    house = {"kind": "building_built", "location": "east", "size": "small"}
    loc = {
        "location_id": "x_0",
        "images": {s: {"objects": objects} for s in stems},
        "pairs": {"x_0_2-x_0_0": {"changes": [road, house]}, "x_0_0-x_0_1": {"changes": []}},
    }
    caption = describe_sequence(loc, stems, ["2016-03-02T10:00:00Z", "2017-08-15T10:00:00Z", "2019-01-30T10:00:00Z"])
    assert caption.startswith(("The first image, from 2016-03, shows", "The earliest image, taken in 2016-03, shows"))
    ((start, end, text),) = INTERVAL.findall(caption)
    assert (start, end) == ("2016-03", "2017-08") and extract_change_kinds(text) == {"road_built", "building_built"}
    assert {"north", "east"} <= extract_locations(text)


def test_a_sequence_with_no_change_says_so():
    objects = [{"kind": "land_cover", "value": "grassland"}, {"kind": "water", "location": "west"}]
    stems = [f"x_0_{i}" for i in range(4)]
    loc = {
        "location_id": "x_0",
        "images": {s: {"objects": objects} for s in stems},
        "pairs": {f"{a}-{b}": {"changes": []} for a, b in zip(stems, stems[1:], strict=False)},
    }
    caption = describe_sequence(loc, stems, [f"201{i}-05-05T00:00:00Z" for i in range(4)])
    assert caption.endswith("across the 4 dates.") and not INTERVAL.findall(caption)
    assert extract_change_kinds(caption) == {"no_change"}


def test_synthetic_annotator_answers_a_sequence_from_its_location(tree):
    loc, stems = next(_sequences(tree))
    timestamps = tuple(loc["images"][s]["timestamp"] for s in stems)
    request = AnnotationRequest(
        id=f"train/{loc['location_id']}",
        image_paths=tuple(tree for _ in stems),
        metadata={"split": "train", "location_id": loc["location_id"], "stems": stems},
        timestamps=timestamps,
    )
    unknown = AnnotationRequest(
        id="train/x_9",
        image_paths=(tree, tree, tree),
        metadata={"split": "train", "location_id": "x_9", "stems": ["x_9_0", "x_9_1", "x_9_2"]},
        timestamps=("2010-01-01T00:00:00Z",) * 3,
    )
    ok, missing = SyntheticAnnotator(tree).annotate([request, unknown])
    assert ok.status == "ok" and ok.text == describe_sequence(loc, stems, list(timestamps))
    assert missing.status == "missing" and "train/x_9" in missing.reason
