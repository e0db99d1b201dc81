import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from datasets import load_dataset
from fmow_fixtures import jpeg_bytes, write_image

from dataset_builder.build import BuildConfig, build, main
from dataset_builder.describe import describe_pair
from dataset_builder.frames import read_mp4
from dataset_builder.official_json import ImportAnnotator, read_official
from dataset_builder.synth import SynthConfig, generate_tree


def _build(fmow, out, **kw):
    return build(BuildConfig(fmow_root=str(fmow), out=str(out), **{"frame_size": 32, "shard_rows": 4, **kw}))


@pytest.fixture()
def messy_tree(tmp_path):
    root = tmp_path / "fmow"
    # a chain of three, broken by an image 100 days after the second; T not in time order
    write_image(root, "train", "barn", 0, 2, "2010-01-01T00:00:00Z")
    write_image(root, "train", "barn", 0, 0, "2011-06-01T00:00:00.500Z", size=(48, 36))
    write_image(root, "train", "barn", 0, 3, "2011-09-09T00:00:00Z")
    write_image(root, "train", "barn", 0, 1, "2013-01-01T00:00:00Z")
    # an oversize image in the middle of a location: dropped BEFORE pairing, so 0 -> 2 becomes a pair
    write_image(root, "train", "dam", 1, 0, "2005-01-01T00:00:00Z")
    write_image(root, "train", "dam", 1, 1, "2005-06-01T00:00:00Z", data=b"\xff\xd8" + b"0" * 2_000_000 + b"\xff\xd9")
    write_image(root, "train", "dam", 1, 2, "2006-03-01T00:00:00Z")
    # bad inputs
    write_image(root, "train", "park", 2, 0, "2004-01-01T00:00:00Z")
    write_image(root, "train", "park", 2, 1, "2007-01-01T00:00:00Z", data=jpeg_bytes(1)[:300])  # truncated JPEG
    write_image(root, "train", "park", 2, 2, False)  # no JSON
    write_image(root, "train", "park", 2, 3, None, json_text="{not json")
    write_image(root, "train", "park", 2, 4, "yesterday")
    (root / "train" / "park" / "park_3").mkdir(parents=True)  # empty location
    (root / "train" / "park" / "notes.txt").write_text("stray")
    (root / "train" / "barn" / "barn_0" / "barn_0_0_msrgb.jpg").write_bytes(jpeg_bytes(9))
    # val -> test
    write_image(root, "val", "barn", 5, 7, "2012-09-08T16:07:23.244Z")
    write_image(root, "val", "barn", 5, 1, "2016-05-19T10:00:00Z")
    return root


def test_rule_bad_inputs_and_report(messy_tree, tmp_path):
    report = _build(messy_tree, tmp_path / "out", annotator="none")
    ids = {s: load_dataset(str(tmp_path / "out"), split=s)["id"] for s in ("train", "test")}
    assert sorted(ids["train"]) == ["barn_0_2-barn_0_0", "barn_0_3-barn_0_1", "dam_1_0-dam_1_2"]
    assert ids["test"] == ["barn_5_7-barn_5_1"]
    dropped = report["images_dropped"]
    assert dropped["oversize"] == 1 and dropped["corrupt_image"] == 1 and dropped["missing_json"] == 1
    assert dropped["malformed_json"] == 1 and dropped["bad_timestamp"] == 1 and dropped["stray_file"] == 1
    assert report["msrgb_ignored"] == 1 and any("park_3" in e for e in report["empty_locations"])
    usable = report["images_seen"] - sum(v for k, v in dropped.items() if k != "stray_file")
    assert usable == 4 + 2 + 1 + 2  # the counts add up
    assert report["pairs_per_split"] == {"train": 3, "test": 1}
    for path in report["dropped_paths"]["oversize"]:
        assert "dam_1_1" in path


def test_not_an_fmow_tree_exits_nonzero(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    assert main(["--fmow-root", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    assert "is not an fMoW-rgb tree" in capsys.readouterr().err


@pytest.fixture(scope="module")
def synth_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthbuild")
    generate_tree(SynthConfig(out=str(root / "fmow"), locations=30, seed=2, image_size=64, oversize_fraction=0.1))
    report = build(
        BuildConfig(fmow_root=str(root / "fmow"), out=str(root / "out"), frame_size=32, shard_rows=8, sample_size=10)
    )
    return root, report


def test_round_trip_every_config(synth_build):
    root, report = synth_build
    out = root / "out"
    default = load_dataset(str(out))
    sample = load_dataset(str(out), "sample_10k")
    assert default["train"].num_rows == report["pairs_per_split"]["train"]
    assert sample["train"].num_rows == 10 and set(sample["train"]["id"]) <= set(default["train"]["id"])
    assert sample["test"]["id"] == default["test"]["id"]
    written = pq.read_schema(next((out / "data").glob("train-*.parquet")))
    from datasets import Features

    assert default["train"].features == Features.from_arrow_schema(written) == sample["train"].features
    row = default["train"][0]
    assert [f.size for f in row["frames"]] == [(32, 32), (32, 32)]
    assert row["frames"][0].format == "JPEG"
    assert [f.size for f in read_mp4(out / row["video"])] == [(32, 32), (32, 32)]
    assert row["conversations"][0]["value"].endswith("\n<video>")


def test_synthetic_conversations_carry_ground_truth(synth_build):
    root, _ = synth_build
    truth = {}
    for split in ("train", "val"):
        for line in (root / "fmow" / "groundtruth" / f"{split}.jsonl").read_text().splitlines():
            loc = json.loads(line)
            truth |= dict.fromkeys(loc["pairs"], loc)
    ds = load_dataset(str(root / "out"), split="test")
    assert ds.num_rows > 0
    for row in ds:
        assert row["conversations"][1]["value"] == describe_pair(truth[row["id"]], row["id"])
        assert row["changes"] == truth[row["id"]]["pairs"][row["id"]]["changes"]


def test_official_json_export_and_import_round_trip(synth_build, tmp_path):
    root, _ = synth_build
    official = read_official(root / "out" / "geollava_json" / "train.json")
    ds = load_dataset(str(root / "out"), split="train")
    assert set(official) == set(ds["id"])
    report = build(
        BuildConfig(
            fmow_root=str(root / "fmow"),
            out=str(tmp_path / "imported"),
            frame_size=32,
            annotator=f"import:{root / 'out' / 'geollava_json' / 'train.json'}",
            no_videos=True,
        )
    )
    imported = load_dataset(str(tmp_path / "imported"), split="train")
    assert imported["conversations"] == ds["conversations"]
    assert "video" not in imported.column_names
    missing = report["annotation"]["not_annotated"].get("missing", [])
    assert {m["id"] for m in missing} == set(load_dataset(str(root / "out"), split="test")["id"])
    assert ImportAnnotator(root / "out" / "geollava_json" / "train.json").name == "import"


def test_rebuild_into_the_same_folder_is_not_stale(tmp_path):
    fmow, out = tmp_path / "fmow", tmp_path / "out"
    generate_tree(SynthConfig(out=str(fmow), locations=10, seed=5, image_size=64, oversize_fraction=0))
    _build(fmow, out)
    first = load_dataset(str(out), split="train")["id"]
    generate_tree(SynthConfig(out=str(fmow), locations=12, seed=6, image_size=64, oversize_fraction=0))
    _build(fmow, out)
    second = load_dataset(str(out), split="train")["id"]  # same HF_HOME, same folder name
    assert second != first


def test_resume_after_a_kill_gives_the_same_folder(tmp_path):
    fmow = tmp_path / "fmow"
    generate_tree(SynthConfig(out=str(fmow), locations=20, seed=7, image_size=64, oversize_fraction=0))
    _build(fmow, tmp_path / "ref")
    args = [
        sys.executable,
        "-m",
        "dataset_builder.build",
        "--fmow-root",
        str(fmow),
        "--out",
        str(tmp_path / "out"),
        "--frame-size",
        "32",
        "--shard-rows",
        "4",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "out" / ".geollava_build_state.json"
    import time

    deadline = time.time() + 60
    while time.time() < deadline and not (state.exists() and '"rows"' in state.read_text()):
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    assert subprocess.run(args, capture_output=True).returncode == 0
    for ref in sorted((tmp_path / "ref" / "data").rglob("*.parquet")):
        got = tmp_path / "out" / ref.relative_to(tmp_path / "ref")
        assert pq.read_table(got).equals(pq.read_table(ref)), ref.name
    assert not list((tmp_path / "out").rglob("*.tmp"))


def test_unavailable_annotator_is_a_clear_error(messy_tree, tmp_path, capsys):
    args = ["--fmow-root", str(messy_tree), "--out", str(tmp_path / "o"), "--annotator", "openai"]
    assert main(args) == 1
    assert "--annotator openai is not available" in capsys.readouterr().err
