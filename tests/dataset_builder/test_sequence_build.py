import json
import math
from datetime import datetime, timedelta, timezone
from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from datasets import Features, load_dataset
from fmow_fixtures import write_sequence_tree
from hypothesis import given, settings
from hypothesis import strategies as st

from dataset_builder.build import BuildConfig, build, build_fingerprint
from dataset_builder.fmow import FmowImage, scan_fmow
from dataset_builder.prompts import SEQUENCE_QUESTION, VIDEO_TOKEN
from dataset_builder.rows import sequence_features
from dataset_builder.sequences import find_sequence, sequence_changes, subsample_indices
from dataset_builder.synthetic.describe import describe_sequence
from dataset_builder.synthetic.synth import SynthConfig, generate_tree
from model_cards.validate import validate_card


def _build(fmow, out, **kw):
    options = {"frame_size": 32, "shard_rows": 4, "sample_size": 3, "no_videos": True, **kw}
    return build(BuildConfig(fmow_root=str(fmow), out=str(out), **options))


def _image(index: int, when: datetime) -> FmowImage:
    stem = f"barn_3_{index}"
    return FmowImage("val", "barn", "barn_3", stem, index, Path(f"/x/{stem}_rgb.jpg"), when, when.isoformat(), 9, 0.5,
                     "USA", 0)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=1, max_value=60), st.integers(min_value=2, max_value=12))
def test_subsampling_keeps_the_rule_s_indices(n, k):
    kept = subsample_indices(n, k)
    if n <= k:
        assert kept == list(range(n))
        return
    # floor(i (n - 1) / (K - 1) + 1/2), exactly
    assert kept == [math.floor(Fraction(i * (n - 1), k - 1) + Fraction(1, 2)) for i in range(k)]
    assert kept[0] == 0 and kept[-1] == n - 1 and len(set(kept)) == k == len(kept) and kept == sorted(kept)


def test_subsampling_by_hand():
    assert subsample_indices(10, 4) == [0, 3, 6, 9]
    assert subsample_indices(6, 4) == [0, 2, 3, 5]  # 0, 5/3 + 1/2, 10/3 + 1/2, 5 -> 0, 2, 3, 5
    assert subsample_indices(41, 8) == [0, 6, 11, 17, 23, 29, 34, 40]
    with pytest.raises(ValueError, match="max_frames 1"):
        subsample_indices(5, 1)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=6000), min_size=0, max_size=14), st.randoms())
def test_the_rule_sorts_by_time_then_t_and_needs_three_views(days, rnd):
    start = datetime(2002, 1, 1, tzinfo=timezone.utc)
    images = [_image(i, start + timedelta(days=d)) for i, d in enumerate(days)]  # equal days: ties
    rnd.shuffle(images)
    sequence = find_sequence(images, 5)
    if len(images) < 3:
        assert sequence is None
        return
    ordered = sorted(images, key=lambda im: (im.timestamp, im.index))
    assert [v.stem for v in sequence.views] == [ordered[i].stem for i in subsample_indices(len(images), 5)]
    assert sequence.n_views == len(images) and sequence.split == "test" and sequence.key == "test/barn_3"


def test_sequence_changes_take_each_kept_interval_s_diff():
    start = datetime(2002, 1, 1, tzinfo=timezone.utc)
    views = tuple(_image(i, start + timedelta(days=400 * i)) for i in range(3))
    road = {"kind": "road_built", "location": "north", "size": "small"}
    truth = {"barn_3_0-barn_3_1": [road], "barn_3_1-barn_3_2": [], "barn_3_0-barn_3_2": [road]}
    assert sequence_changes(views, truth) == [
        {**road, "start": views[0].timestamp_text, "end": views[1].timestamp_text}
    ]
    assert sequence_changes(views[1:], truth) == []


@pytest.fixture(scope="module")
def sequence_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("sequences")
    expected = write_sequence_tree(root / "fmow")
    report = _build(root / "fmow", root / "out", annotator="none", sequences=True, max_frames=4)
    return root, report, expected


def test_the_rule_on_a_tree_of_every_case(sequence_build):
    root, report, expected = sequence_build
    ds = load_dataset(str(root / "out"), "sequences")
    assert {s: sorted(ds[s]["id"]) for s in ds} == {"train": ["barn_0", "barn_2", "dam_3"], "test": ["barn_4"]}
    for split in ds:
        for row in ds[split]:
            # the frames are the kept views, in time order: each view is a gray level that names it
            levels = [round(float(np.asarray(frame).mean())) for frame in row["frames"]]
            assert levels == pytest.approx(expected[row["id"]], abs=3), row["id"]
            assert [f.size for f in row["frames"]] == [(32, 32)] * len(levels)
            assert row["timestamps"] == sorted(row["timestamps"], key=lambda t: t[:19])
    barn_2 = next(r for r in ds["train"] if r["id"] == "barn_2")
    # a tie in time is broken by T (2 before 10, not file order); each timestamp is kept as written
    assert barn_2["timestamps"] == ["2011-01-01T00:00:00.000Z", "2011-01-01T00:00:00Z", "2013-06-01T00:00:00Z"]
    dam = next(r for r in ds["train"] if r["id"] == "dam_3")
    assert dam["timestamps"] == [f"{year}-07-01T12:00:00Z" for year in (2002, 2005, 2008, 2011)]
    sequences = report["sequences"]
    assert sequences["locations_too_few_views"] == 1  # barn_1: 2 usable views after the oversize drop
    assert (sequences["found"], sequences["subsampled"], sequences["not_annotated"]) == (4, 1, 0)
    assert sequences["rows_per_split"] == {"train": 3, "test": 1} and sequences["failed"] == []
    train = sequences["per_split"]["train"]
    assert train["frames_per_row"] == {"min": 3, "median": 4.0, "mean": 3.67, "max": 4, "histogram": {"3": 1, "4": 2}}
    assert train["years_spanned"]["max"] == 9.0 and train["subsampled"] == 1
    # the same drops as the pairs, reported the same way; msrgb files are no views
    assert report["images_dropped"]["oversize"] == 1 and report["images_dropped"]["malformed_json"] == 1
    assert report["msrgb_ignored"] == 8
    assert json.loads((root / "out" / "build_report.json").read_text())["sequences"] == sequences


def test_rows_hold_the_contract_columns(sequence_build):
    root, _, _ = sequence_build
    ds = load_dataset(str(root / "out"), "sequences", split="train")
    assert ds.features == sequence_features()  # no ground truth beside this tree: no changes column
    row = next(r for r in ds if r["id"] == "barn_0")
    assert (row["category"], row["country_code"], row["gsd"]) == ("barn", "USA", 0.5)
    assert row["frames"][0].format == "JPEG"
    assert row["conversations"] == [
        {"from": "human", "value": f"{SEQUENCE_QUESTION}\n{VIDEO_TOKEN}"},
        {"from": "gpt", "value": ""},
    ]


def test_the_card_describes_the_config_and_validates(sequence_build):
    root, report, _ = sequence_build
    text = (root / "out" / "README.md").read_text()
    meta = validate_card(text, "dataset")
    configs = {c["config_name"]: c for c in meta["configs"]}
    assert configs["sequences"]["data_files"] == [
        {"split": "train", "path": "data/sequences/train-*"},
        {"split": "test", "path": "data/sequences/test-*"},
    ]
    info = next(i for i in meta["dataset_info"] if i["config_name"] == "sequences")
    assert {s["name"]: s["num_examples"] for s in info["splits"]} == report["sequences"]["rows_per_split"]
    assert Features._from_yaml_list(info["features"]) == sequence_features()
    assert 'load_dataset("<org>/geollava", "sequences")' in text
    assert "## The `sequences` config" in text and "floor(i · (n − 1) / (K − 1) + 1/2)" in text
    assert "| train | 3 | 1 | 3 / 4.0 / 4 |" in text and "| test | 1 | 0 | 3 / 3.0 / 3 |" in text
    assert "Locations with 1 or 2 usable views (no row): 1" in text


@pytest.fixture(scope="module")
def synthetic_builds(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthseq")
    fmow = root / "fmow"
    generate_tree(SynthConfig(out=str(fmow), locations=16, seed=4, image_size=64, oversize_fraction=0.1))
    plain = _build(fmow, root / "plain", no_videos=False)
    with_sequences = _build(fmow, root / "seq", no_videos=False, sequences=True, max_frames=3)
    return root, plain, with_sequences


def test_the_pairs_configs_are_byte_identical_with_and_without_sequences(synthetic_builds):
    root, plain, with_sequences = synthetic_builds
    files = {}
    for name in ("plain", "seq"):
        folder = root / name
        files[name] = {
            str(p.relative_to(folder)): p.read_bytes()
            for p in folder.rglob("*")
            if p.is_file() and "sequences" not in p.parts and not p.name.startswith(".") and p.suffix != ".md"
            and p.name != "build_report.json"
        }  # fmt: skip
    assert files["plain"] == files["seq"]
    assert any(name.startswith("data/sample_10k/") for name in files["plain"])
    metas = {name: yaml.safe_load((root / name / "README.md").read_text().split("---")[1]) for name in files}
    for key in ("configs", "dataset_info"):
        entries = {name: {e["config_name"]: e for e in meta[key]} for name, meta in metas.items()}
        assert set(entries["seq"]) == {"default", "sample_10k", "sequences"} and set(entries["plain"]) == {
            "default",
            "sample_10k",
        }
        assert {k: entries["seq"][k] for k in ("default", "sample_10k")} == entries["plain"]
    assert "sequences" not in plain and plain["pairs_per_split"] == with_sequences["pairs_per_split"]
    assert "sequences" not in (root / "plain" / "README.md").read_text()


def test_synthetic_rows_carry_each_change_with_its_interval(synthetic_builds):
    root, _, report = synthetic_builds
    truth = {}
    for split in ("train", "val"):
        for line in (root / "fmow" / "groundtruth" / f"{split}.jsonl").read_text().splitlines():
            location = json.loads(line)
            truth[location["location_id"]] = location
    ds = load_dataset(str(root / "seq"), "sequences")
    assert sum(ds[s].num_rows for s in ds) == report["sequences"]["found"] > 3
    assert ds["train"].features == sequence_features(with_changes=True)
    subsampled = 0
    for split in ds:
        for row in ds[split]:
            location = truth[row["id"]]
            by_time = sorted(location["images"], key=lambda stem: location["images"][stem]["timestamp"])
            stems = [next(s for s in by_time if location["images"][s]["timestamp"] == t) for t in row["timestamps"]]
            subsampled += len(stems) < len(by_time)
            expected = [
                {**change, "start": a_ts, "end": b_ts}
                for a, b, a_ts, b_ts in zip(stems, stems[1:], row["timestamps"], row["timestamps"][1:], strict=False)
                for change in location["pairs"][f"{a}-{b}"]["changes"]
            ]
            assert row["changes"] == expected
            assert row["conversations"][1]["value"] == describe_sequence(location, stems, row["timestamps"])
    assert subsampled == report["sequences"]["subsampled"] > 0  # max_frames 3 composed some changes over a gap


def test_a_sequences_build_needs_a_location_with_three_views(tmp_path):
    generate_tree(SynthConfig(out=str(tmp_path / "fmow"), locations=4, seed=0, image_size=32, two_dates=True))
    with pytest.raises(RuntimeError, match="--sequences: no location .* has 3 usable views"):
        _build(tmp_path / "fmow", tmp_path / "out", sequences=True)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_frames": 2}, "--max_frames 2: must be at least 3"),
        ({"sequences": True, "annotator": "import:{tmp}"}, "--sequences with --annotator 'import:"),
    ],
)
def test_bad_sequence_options_name_the_field_and_value(tmp_path, options, message):
    options = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in options.items()}
    with pytest.raises(ValueError, match=message):
        BuildConfig(fmow_root=str(tmp_path), out=str(tmp_path / "o"), **options)


def test_the_sequence_options_leave_a_pairs_only_fingerprint_alone(tmp_path):
    write_sequence_tree(tmp_path)
    scan = scan_fmow(tmp_path, ["train", "val"], 10**6)
    plain = BuildConfig(fmow_root=str(tmp_path), out=str(tmp_path / "o"))
    other_k = BuildConfig(fmow_root=str(tmp_path), out=str(tmp_path / "o"), max_frames=5)
    on = BuildConfig(fmow_root=str(tmp_path), out=str(tmp_path / "o"), sequences=True)
    on_other_k = BuildConfig(fmow_root=str(tmp_path), out=str(tmp_path / "o"), sequences=True, max_frames=5)
    prints = [build_fingerprint(cfg, scan, {}) for cfg in (plain, other_k, on, on_other_k)]
    assert prints[0] == prints[1] and len(set(prints)) == 3


def test_a_sequence_shard_holds_as_many_frames_as_a_pair_shard(synthetic_builds):
    root, _, _ = synthetic_builds
    shards = sorted((root / "seq" / "data" / "sequences").glob("train-*.parquet"))
    rows = [pq.ParquetFile(path).metadata.num_rows for path in shards]
    assert len(rows) > 1 and rows[:-1] == [2] * (len(rows) - 1)  # --shard_rows 4 pairs of 2 frames: 2 rows of 3
