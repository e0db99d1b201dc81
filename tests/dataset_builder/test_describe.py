import json

import pytest

from dataset_builder.annotate import AnnotationRequest
from dataset_builder.changes import extract_change_kinds, extract_locations, true_kinds
from dataset_builder.describe import SyntheticAnnotator, describe_corpus, describe_pair
from dataset_builder.synth import SynthConfig, generate_tree


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
    assert all(15 <= len(c.split()) <= 90 for c in captions)


def test_corpus_covers_the_describers_vocabulary():
    corpus = describe_corpus(400, seed=0)
    vocab = {w for c in corpus for w in c.split()}
    held_out = {w for c in describe_corpus(100, seed=9) for w in c.split()}
    assert len(held_out - vocab) <= 2, held_out - vocab
    assert len(vocab) < 400


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


@pytest.mark.parametrize(
    ("text", "kinds"),
    [
        ("Several new buildings appeared in the north.", {"building_built"}),
        ("There are no new buildings; nothing changed.", {"no_change"}),
        ("The old warehouses were demolished.", {"building_demolished"}),
        ("A new road crosses the field and the main road was widened.", {"road_built", "road_widened"}),
        ("Deforestation is visible in the south-west.", {"forest_cleared"}),
        ("The lake grew after the rains.", {"water_expanded"}),
        ("The reservoir has receded markedly.", {"water_shrunk"}),
        ("Part of the farmland is now a construction site.", {"field_to_construction"}),
        ("The scene remained the same.", {"no_change"}),
        ("A farm with a river.", set()),
    ],
)
def test_extract_change_kinds_on_free_text(text, kinds):
    assert extract_change_kinds(text) == kinds


def test_extract_locations():
    assert extract_locations("in the northeast and the centre, and south") == {"north-east", "center", "south"}
