import numpy as np
import pytest

from dataset_builder.changes import (
    CHANGE_KINDS,
    LOCATIONS,
    NO_CHANGE,
    PHRASES,
    PLURAL_PHRASES,
    SIZES,
    extract_change_kinds,
    extract_locations,
    location_of,
    size_of,
    true_kinds,
)
from dataset_builder.synthetic.levircc_synth import UNCHANGED, references_for


def test_every_phrase_reads_back_as_its_kind_and_place():
    for kind in CHANGE_KINDS:
        assert len(PHRASES[kind]) >= 2
        for template in PHRASES[kind]:
            for loc in LOCATIONS:
                for size in ("small", "medium-sized", "large"):
                    text = template.format(loc=loc, size=size)
                    assert extract_change_kinds(text) == {kind}, text
                    assert extract_locations(text) == {loc}, text


def test_plural_phrases_read_back():
    for kind, template in PLURAL_PHRASES.items():
        text = template.format(locs="north-west, the center and the south")
        assert extract_change_kinds(text) == {kind}, text
        assert extract_locations(text) == {"north-west", "center", "south"}


def test_levir_style_references_read_back():
    rng = np.random.default_rng(0)
    for kind in CHANGE_KINDS:
        for loc in LOCATIONS:
            for ref in references_for({"kind": kind, "location": loc, "size": "small"}, rng):
                assert extract_change_kinds(ref) == {kind}, ref
                assert extract_locations(ref) == {loc}, ref
    assert all(extract_change_kinds(ref) == {NO_CHANGE} for ref in UNCHANGED)


@pytest.mark.parametrize(
    ("text", "kinds"),
    [
        ("Several new buildings appeared in the north.", {"building_built"}),
        ("There are no new buildings; nothing changed.", {NO_CHANGE}),
        ("No new buildings were added, but a road was widened.", {"road_widened"}),
        ("The old warehouses were demolished.", {"building_demolished"}),
        ("Some houses were torn down near the river.", {"building_demolished"}),
        ("A new road crosses the field and the main road was widened.", {"road_built", "road_widened"}),
        ("Deforestation is visible in the south-west.", {"forest_cleared"}),
        ("The woodland in the east has been cleared.", {"forest_cleared"}),
        ("The lake grew after the rains.", {"water_expanded"}),
        ("The reservoir has receded markedly.", {"water_shrunk"}),
        ("The pond dried up.", {"water_shrunk"}),
        ("Part of the farmland is now a construction site.", {"field_to_construction"}),
        ("The river widened while trees were cut down on its bank.", {"water_expanded", "forest_cleared"}),
        ("Many houses are built along the road .", {"building_built"}),
        ("The scene remained the same.", {NO_CHANGE}),
        ("The two images look identical.", {NO_CHANGE}),
        ("Nothing has changed.", {NO_CHANGE}),
        ("The buildings were not demolished.", set()),
        ("A farm with a river and a road.", set()),
        ("", set()),
    ],
)
def test_extract_change_kinds_on_free_text(text, kinds):
    assert extract_change_kinds(text) == kinds


def test_extract_locations():
    assert extract_locations("in the northeast and the centre, and south") == {"north-east", "center", "south"}
    assert extract_locations("the north west corner and the middle") == {"north-west", "center"}
    assert extract_locations("Eastern Europe, westward") == set()


def test_grid_and_sizes():
    assert location_of(0.0, 0.0) == "north-west" and location_of(0.99, 0.5) == "east"
    assert location_of(0.5, 1.0) == "south" and location_of(0.5, 0.5) == "center"
    assert [size_of(f) for f in (0.04, 0.069, 0.07, 0.119, 0.12, 0.3)] == [
        "small",
        "small",
        "medium",
        "medium",
        "large",
        "large",
    ]
    assert set(SIZES) == {"small", "medium", "large"}
    assert true_kinds([]) == {NO_CHANGE} and true_kinds([{"kind": "road_built"}]) == {"road_built"}
