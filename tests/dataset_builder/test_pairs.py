from datetime import datetime, timedelta, timezone
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from dataset_builder.fmow import FmowImage, parse_timestamp
from dataset_builder.pairs import dataset_split, find_pairs
from dataset_builder.prompts import PROMPT_TEMPLATES, choose_template


def _image(index: int, when: datetime) -> FmowImage:
    return FmowImage(
        "val",
        "barn",
        "barn_3",
        f"barn_3_{index}",
        index,
        Path(f"/x/barn_3_{index}_rgb.jpg"),
        when,
        when.isoformat(),
        100,
        0.5,
        "USA",
        0,
    )


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=6000), min_size=0, max_size=8, unique=True), st.randoms())
def test_pairing_rule_properties(days, rnd):
    start = datetime(2002, 1, 1, tzinfo=timezone.utc)
    images = [_image(i, start + timedelta(days=d, hours=rnd.randint(0, 23))) for i, d in enumerate(days)]
    rnd.shuffle(images)  # the index T is not time order; input order must not matter
    pairs = find_pairs(images, 365)
    ordered = sorted(images, key=lambda im: im.timestamp)
    assert all(p.gap_days >= 365 and p.first.timestamp < p.second.timestamp for p in pairs)
    firsts = [p.first.stem for p in pairs]
    seconds = [p.second.stem for p in pairs]
    assert len(firsts) == len(set(firsts)) and len(seconds) == len(set(seconds))
    # exactly the consecutive neighbours whose gap passes: an intermediate image closer than 365 days breaks a chain
    expected = [(a.stem, b.stem) for a, b in zip(ordered, ordered[1:]) if (b.timestamp - a.timestamp).days >= 365]
    assert [(p.first.stem, p.second.stem) for p in pairs] == expected


def test_intermediate_image_breaks_the_chain_as_in_the_sheet():
    # val/airport_hangar_17: (3: 2002-06 -> 5: 2010-11), then (2: 2011-09 -> 6: 2013-02); 5 -> 2 is 303 days.
    times = {
        3: "2002-06-01T10:00:00Z",
        5: "2010-11-20T10:00:00Z",
        2: "2011-09-19T10:00:00.244Z",
        6: "2013-02-01T10:00:00Z",
    }
    images = [_image(i, parse_timestamp(t)) for i, t in times.items()]
    pairs = find_pairs(images)
    assert [p.id for p in pairs] == ["barn_3_3-barn_3_5", "barn_3_2-barn_3_6"]
    assert all(p.split == "test" for p in pairs)


def test_exactly_365_days_is_a_pair_and_364_is_not():
    a = _image(0, parse_timestamp("2013-09-09T10:52:00Z"))
    assert len(find_pairs([a, _image(1, parse_timestamp("2014-09-09T11:45:00Z"))])) == 1
    assert find_pairs([a, _image(1, parse_timestamp("2014-09-08T09:00:00Z"))]) == []


def test_timestamps_with_fractional_seconds_and_sheet_form():
    assert parse_timestamp("2012-09-08T16:07:23.244Z").microsecond == 244000
    assert parse_timestamp("2012-09-08 16:07:23.000") == parse_timestamp("2012-09-08T16:07:23Z")


def test_split_names_and_template_choice_are_deterministic():
    assert (dataset_split("train"), dataset_split("val"), dataset_split("seq")) == ("train", "test", "seq")
    ids = [f"barn_{i}_0-barn_{i}_1" for i in range(60)]
    choices = [choose_template(i) for i in ids]
    assert choices == [choose_template(i) for i in ids]
    assert set(choices) == set(range(len(PROMPT_TEMPLATES)))


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 3000)), min_size=1, max_size=6, unique_by=lambda t: t[0]),
    st.integers(200, 3000),
)
def test_oversize_images_never_appear_and_are_dropped_before_pairing(tmp_path_factory, images, limit):
    import shutil

    from fmow_fixtures import jpeg_bytes, write_image

    from dataset_builder.fmow import scan_fmow

    root = tmp_path_factory.mktemp("sizes")
    start = datetime(2003, 1, 1, tzinfo=timezone.utc)
    base = jpeg_bytes(0, (16, 16))
    for index, (day, padding) in enumerate(images):
        # a COM segment after SOI pads the file to a chosen size; the JPEG stays valid
        data = base[:2] + b"\xff\xfe" + (padding + 2).to_bytes(2, "big") + b"x" * padding + base[2:]
        when = (start + timedelta(days=day)).strftime("%Y-%m-%dT%H:%M:%SZ")
        write_image(root, "train", "barn", 0, index, when, data=data)
    scan = scan_fmow(root, ["train"], limit)
    usable = scan.locations.get(("train", "barn_0"), [])
    pairs = find_pairs(usable)
    assert all(p.first.size_bytes <= limit and p.second.size_bytes <= limit for p in pairs)
    assert len(scan.dropped.get("oversize", [])) == sum(1 for p in root.rglob("*_rgb.jpg") if p.stat().st_size > limit)
    kept = sorted((im for im in usable), key=lambda im: im.timestamp)
    expected = [(a.stem, b.stem) for a, b in zip(kept, kept[1:]) if (b.timestamp - a.timestamp).days >= 365]
    assert [(p.first.stem, p.second.stem) for p in pairs] == expected
    shutil.rmtree(root)
