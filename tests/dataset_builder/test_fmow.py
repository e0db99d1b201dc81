import json
from datetime import timezone

import pytest
from fmow_fixtures import MESSY_DROPPED, MESSY_SKIPPED, MESSY_USABLE, jpeg_bytes, write_image, write_messy_tree

from dataset_builder.fmow import DROP_REASONS, parse_timestamp, scan_fmow


def test_every_bad_input_is_dropped_once_with_its_reason_and_the_counts_add_up(tmp_path):
    scan = scan_fmow(write_messy_tree(tmp_path / "fmow"), ["train", "val"], 1_000_000)
    assert {k: len(v) for k, v in scan.dropped.items()} == MESSY_DROPPED
    assert {k: len(v) for k, v in scan.skipped.items()} == MESSY_SKIPPED
    assert scan.images_usable == MESSY_USABLE
    assert scan.images_seen == scan.images_usable + sum(len(v) for v in scan.dropped.values())
    assert scan.msrgb_ignored == 1
    assert scan.empty_locations == ["train/park/park_3"]
    # each dropped entry names its file
    assert "dam_1_1_rgb.jpg" in scan.dropped["oversize"][0] and "2000004 > 1000000" in scan.dropped["oversize"][0]
    assert "park_2_1_rgb.jpg" in scan.dropped["corrupt_image"][0]
    assert "park_2_x_rgb.jpg" in scan.dropped["bad_name"][0]
    assert any("yesterday" in entry for entry in scan.dropped["bad_timestamp"])
    assert set(scan.dropped) <= set(DROP_REASONS)
    usable = {im.stem for images in scan.locations.values() for im in images}
    assert "dam_1_1" not in usable and "barn_0_0" in usable


def test_the_size_limit_is_inclusive_and_applies_before_anything_else(tmp_path):
    root = tmp_path / "fmow"
    small = write_image(root, "train", "barn", 0, 0, "2010-01-01T00:00:00Z")
    limit = small.stat().st_size
    write_image(root, "train", "barn", 0, 1, "2012-01-01T00:00:00Z", data=jpeg_bytes(5, (80, 80)))
    scan = scan_fmow(root, ["train"], limit)
    assert [im.stem for im in scan.locations[("train", "barn_0")]] == ["barn_0_0"]
    assert len(scan.dropped["oversize"]) == 1


def test_metadata_is_kept_and_bad_types_become_missing(tmp_path):
    root = tmp_path / "fmow"
    write_image(root, "val", "barn", 0, 0, "2010-01-01T00:00:00Z", meta={"gsd": "1.25", "cloud_cover": 12})
    bad = {"gsd": None, "country_code": 7, "cloud_cover": "?"}
    write_image(root, "val", "barn", 0, 1, "2012-01-01T00:00:00", meta=bad)
    a, b = sorted(scan_fmow(root, ["val"], 10**6).locations[("val", "barn_0")], key=lambda im: im.index)
    assert (a.gsd, a.country_code, a.cloud_cover, a.index, a.category) == (1.25, "USA", 12, 0, "barn")
    assert (b.gsd, b.country_code, b.cloud_cover) == (None, None, None)
    assert b.timestamp.tzinfo == timezone.utc and b.timestamp_text == "2012-01-01T00:00:00"


def test_not_an_fmow_tree_says_what_was_expected(tmp_path):
    (tmp_path / "photos").mkdir()
    with pytest.raises(FileNotFoundError, match=r"not an fMoW-rgb tree.*train/.*_rgb\.jpg"):
        scan_fmow(tmp_path, ["train", "val"], 10**6)


def test_a_missing_split_is_skipped_with_a_warning(tmp_path, caplog):
    write_image(tmp_path, "train", "barn", 0, 0, "2010-01-01T00:00:00Z")
    scan = scan_fmow(tmp_path, ["train", "val"], 10**6)
    assert scan.images_usable == 1 and "split 'val' skipped" in caplog.text


def test_a_json_that_is_not_an_object_is_malformed(tmp_path):
    write_image(tmp_path, "train", "barn", 0, 0, None, json_text=json.dumps(["2010-01-01T00:00:00Z"]))
    scan = scan_fmow(tmp_path, ["train"], 10**6)
    assert len(scan.dropped["malformed_json"]) == 1 and scan.images_usable == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2012-04-02T10:32:22Z", (2012, 4, 2, 10, 32, 22, 0)),
        ("2012-09-08T16:07:23.244Z", (2012, 9, 8, 16, 7, 23, 244000)),
        ("2012-09-08 16:07:23.000", (2012, 9, 8, 16, 7, 23, 0)),
        ("2015-01-01T00:00:00+02:00", (2014, 12, 31, 22, 0, 0, 0)),
        ("2015-01-01T00:00:00.5-0130", (2015, 1, 1, 1, 30, 0, 500000)),
        ("2012-09-08T16:07:23.2449999Z", (2012, 9, 8, 16, 7, 23, 244999)),
    ],
)
def test_timestamps(text, expected):
    t = parse_timestamp(text).astimezone(timezone.utc)
    assert (t.year, t.month, t.day, t.hour, t.minute, t.second, t.microsecond) == expected


@pytest.mark.parametrize(
    "text", [None, "", "yesterday", "2012-13-01T00:00:00Z", 20120101, "2012-01-01", "2012-01-01T25:00:00Z"]
)
def test_bad_timestamps_raise(text):
    with pytest.raises(ValueError):
        parse_timestamp(text)
