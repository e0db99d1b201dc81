import json

import pytest

from dataset_builder.annotation.base import AnnotationRequest
from dataset_builder.changes import CHANGE_KINDS, LOCATIONS, extract_change_kinds, extract_locations, true_kinds
from dataset_builder.synthetic.describe import SyntheticAnnotator, describe_corpus, describe_pair
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
