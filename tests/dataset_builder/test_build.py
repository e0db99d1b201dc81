import json

import pyarrow.parquet as pq
import pytest
from datasets import Features, load_dataset
from fmow_fixtures import (
    MESSY_DROPPED,
    MESSY_PAIRS,
    MESSY_SKIPPED,
    MESSY_USABLE,
    undecodable_jpeg,
    write_image,
    write_messy_tree,
)
from PIL import ImageFile

from dataset_builder.build import BuildConfig, build, main
from dataset_builder.frames import read_mp4
from dataset_builder.prompts import PROMPT_TEMPLATES, choose_template, human_turn
from dataset_builder.statistics import gap_histogram
from dataset_builder.synthetic.describe import describe_pair
from dataset_builder.synthetic.synth import SynthConfig, generate_tree


def _build(fmow, out, **kw):
    return build(BuildConfig(fmow_root=str(fmow), out=str(out), **{"frame_size": 32, "shard_rows": 4, **kw}))


@pytest.fixture(scope="module")
def messy_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("messy")
    write_messy_tree(root / "fmow")
    report = _build(root / "fmow", root / "out", annotator="none")
    return root, report


def test_the_rule_and_every_bad_input_in_a_full_build(messy_build):
    root, report = messy_build
    ids = {s: sorted(load_dataset(str(root / "out"), split=s)["id"]) for s in ("train", "test")}
    assert ids == MESSY_PAIRS
    assert {k: v for k, v in report["images_dropped"].items() if v} == MESSY_DROPPED
    assert {k: v for k, v in report["files_skipped"].items() if v} == MESSY_SKIPPED
    assert report["images_usable"] == MESSY_USABLE
    assert report["images_seen"] == report["images_usable"] + sum(report["images_dropped"].values())
    assert {k: len(v) for k, v in report["dropped_paths"].items()} == MESSY_DROPPED
    assert report["msrgb_ignored"] == 1 and report["empty_locations"] == ["train/park/park_3"]
    assert report["pairs_per_split"] == {"train": 3, "test": 1}
    assert report["sample_10k_rows"] == 3  # train is smaller than --sample-size: the sample is all of train
    assert report["pairs_found"] == 4 + report["pairs_not_annotated"] + len(report["pairs_failed"])
    assert sum(report["gap_days"]["histogram"].values()) == 4
    on_disk = json.loads((root / "out" / "build_report.json").read_text())
    assert on_disk["pairs_per_split"] == report["pairs_per_split"]


def test_rows_hold_the_contract_columns(messy_build):
    root, _ = messy_build
    train = load_dataset(str(root / "out"), split="train")
    row = next(r for r in train if r["id"] == "barn_0_2-barn_0_0")
    assert (row["split"], row["category"], row["location_id"]) == ("train", "barn", "barn_0")
    assert (row["image1"], row["image2"]) == ("barn_0_2", "barn_0_0")
    assert (row["timestamp1"], row["timestamp2"]) == ("2010-01-01T00:00:00Z", "2011-06-01T00:00:00.500Z")
    assert row["gap_days"] == 516
    # the two dates have different sizes (40x32, 48x36): both frames are the same square
    assert [f.size for f in row["frames"]] == [(32, 32), (32, 32)] and row["frames"][0].format == "JPEG"
    assert row["video"] == "videos/train/barn_0_2-barn_0_0.mp4"
    assert [f.size for f in read_mp4(root / "out" / row["video"])] == [(32, 32), (32, 32)]
    assert (row["gsd"], row["country_code"], row["cloud_cover"]) == (0.5, "USA", 3)
    for r in train:
        assert r["prompt_template_id"] == choose_template(r["id"])
        assert r["conversations"][0] == {"from": "human", "value": human_turn(r["prompt_template_id"])}
        assert r["conversations"][0]["value"].split("\n")[0] in PROMPT_TEMPLATES
        assert r["conversations"][0]["value"].endswith("\n<video>")
        assert r["conversations"][1] == {"from": "gpt", "value": ""}  # --annotator none
    assert "changes" not in train.column_names  # no ground truth beside this tree


def test_the_card_is_rendered_from_the_builds_numbers(messy_build):
    root, report = messy_build
    card = (root / "out" / "README.md").read_text()
    assert "| train | 3 | 2 | 2 | 6 |" in card and "| test | 1 | 1 | 1 | 2 |" in card
    assert "No language model wrote these answers" in card  # --annotator none
    assert f"Images seen: {report['images_seen']}, usable: {MESSY_USABLE}" in card
    assert "oversize 1" in card and "bad_timestamp 2" in card
    assert all(t in card for t in PROMPT_TEMPLATES)
    assert "2410.19552" in card and "2411.11360" in card
    assert f"min {report['gap_days']['min']}," in card


@pytest.mark.parametrize("truncated_ok", [False, True], ids=["pillow-default", "lmms-eval-imported"])
def test_an_image_that_fails_to_decode_drops_its_pairs_and_is_reported(tmp_path, monkeypatch, truncated_ok):
    # importing lmms-eval sets Pillow's process-wide LOAD_TRUNCATED_IMAGES; a corrupt view must still be dropped
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", truncated_ok)
    fmow = tmp_path / "fmow"
    write_image(fmow, "train", "barn", 0, 0, "2010-01-01T00:00:00Z")
    write_image(fmow, "train", "barn", 0, 1, "2012-01-01T00:00:00Z", data=undecodable_jpeg())
    write_image(fmow, "train", "barn", 0, 2, "2014-01-01T00:00:00Z")
    write_image(fmow, "train", "barn", 1, 0, "2010-01-01T00:00:00Z")
    write_image(fmow, "train", "barn", 1, 1, "2012-01-01T00:00:00Z")
    write_image(fmow, "val", "barn", 2, 0, "2010-01-01T00:00:00Z", data=undecodable_jpeg(2))  # the only val pair
    write_image(fmow, "val", "barn", 2, 1, "2012-01-01T00:00:00Z")
    report = _build(fmow, tmp_path / "out", annotator="none")
    failed = ["barn_0_0-barn_0_1", "barn_0_1-barn_0_2", "barn_2_0-barn_2_1"]
    assert sorted(f["id"] for f in report["pairs_failed"]) == failed
    assert all("corrupt_image" in f["reason"] for f in report["pairs_failed"])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is truncated_ok  # the caller's setting is given back
    assert report["pairs_found"] == 4 == sum(report["pairs_per_split"].values()) + len(report["pairs_failed"])
    ds = load_dataset(str(tmp_path / "out"))
    assert list(ds) == ["train"] and ds["train"]["id"] == ["barn_1_0-barn_1_1"]  # no empty test split
    assert report["images_in_pairs_per_split"] == {"train": 2}


def test_cli_exits_nonzero_when_the_root_is_not_an_fmow_tree(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    assert main(["--fmow-root", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    assert "is not an fMoW-rgb tree: expected" in capsys.readouterr().err


def test_cli_exits_nonzero_when_nothing_usable_is_found(tmp_path, capsys):
    write_image(tmp_path / "fmow", "train", "barn", 0, 0, "2010-01-01T00:00:00Z")
    write_image(tmp_path / "fmow", "train", "barn", 0, 1, "2010-06-01T00:00:00Z")  # too close
    assert main(["--fmow-root", str(tmp_path / "fmow"), "--out", str(tmp_path / "o"), "--annotator", "none"]) == 1
    assert "no usable pairs" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_refuses_a_foreign_non_empty_out(messy_build, tmp_path, capsys):
    root, _ = messy_build
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "precious.txt").write_text("x")
    assert main(["--fmow-root", str(root / "fmow"), "--out", str(tmp_path / "o"), "--annotator", "none"]) == 1
    assert "holds no geollava-build state" in capsys.readouterr().err
    assert (tmp_path / "o" / "precious.txt").exists()


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--frame-size", "33", "--frame_size 33"),
        ("--shard-rows", "0", "--shard_rows 0"),
        ("--annotator", "gpt5", "--annotator 'gpt5'"),
        ("--annotator", "import:/nope.json", "/nope.json does not exist"),
    ],
)
def test_bad_options_name_the_field_and_value(tmp_path, flag, value, message):
    with pytest.raises(ValueError, match=message):
        main(["--fmow-root", str(tmp_path), "--out", str(tmp_path / "o"), flag, value])


def test_gap_histogram_counts_every_pair_once():
    hist = gap_histogram([365, 499, 500, 729, 730, 2189, 2190, 9000])
    assert hist == {"365-499": 2, "500-729": 2, "730-1094": 1, "1095-1459": 0, "1460-2189": 1, ">=2190": 2}
    assert gap_histogram([100, 400])["<365"] == 1


@pytest.fixture(scope="module")
def synth_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthbuild")
    generate_tree(SynthConfig(out=str(root / "fmow"), locations=24, seed=2, image_size=64, oversize_fraction=0.1))
    report = build(
        BuildConfig(fmow_root=str(root / "fmow"), out=str(root / "out"), frame_size=32, shard_rows=8, sample_size=10)
    )
    return root, report


def test_round_trip_every_config(synth_build):
    root, report = synth_build
    out = root / "out"
    default = load_dataset(str(out))
    sample = load_dataset(str(out), "sample_10k")
    assert {s: default[s].num_rows for s in default} == report["pairs_per_split"]
    assert sample["train"].num_rows == report["sample_10k_rows"] == 10
    assert set(sample["train"]["id"]) <= set(default["train"]["id"])
    assert sample["test"]["id"] == default["test"]["id"]
    written = Features.from_arrow_schema(pq.read_schema(next((out / "data").glob("train-*.parquet"))))
    for ds in (default["train"], default["test"], sample["train"]):
        assert ds.features == written
    assert default["train"].num_rows > 8  # several shards
    assert len(list((out / "data").glob("train-*-of-*.parquet"))) == report["shards"]["train"] > 1


def test_dataset_info_matches_the_shards(synth_build):
    root, report = synth_build
    import yaml

    card = (root / "out" / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    infos = {info["config_name"]: info for info in meta["dataset_info"]}
    assert {c["config_name"] for c in meta["configs"]} == {"default", "sample_10k"} == set(infos)
    splits = {s["name"]: s["num_examples"] for s in infos["default"]["splits"]}
    assert splits == report["pairs_per_split"]
    assert {s["name"]: s["num_examples"] for s in infos["sample_10k"]["splits"]} == {
        "train": 10,
        "test": report["pairs_per_split"]["test"],
    }
    assert infos["default"]["dataset_size"] == sum(s["num_bytes"] for s in infos["default"]["splits"])


def test_synthetic_conversations_carry_the_ground_truth(synth_build):
    root, _ = synth_build
    truth = {}
    for split in ("train", "val"):
        for line in (root / "fmow" / "groundtruth" / f"{split}.jsonl").read_text().splitlines():
            loc = json.loads(line)
            truth |= dict.fromkeys(loc["pairs"], loc)
    for split in ("train", "test"):
        ds = load_dataset(str(root / "out"), split=split)
        assert ds.num_rows > 0
        for row in ds:
            assert row["conversations"][1]["value"] == describe_pair(truth[row["id"]], row["id"])
            assert row["changes"] == truth[row["id"]]["pairs"][row["id"]]["changes"]


def test_the_sample_is_fixed_by_its_seed(synth_build, tmp_path):
    root, _ = synth_build
    first = load_dataset(str(root / "out"), "sample_10k", split="train")["id"]
    _build(root / "fmow", tmp_path / "again", sample_size=10, shard_rows=8, no_videos=True)
    assert load_dataset(str(tmp_path / "again"), "sample_10k", split="train")["id"] == first
    _build(root / "fmow", tmp_path / "seed1", sample_size=10, sample_seed=1, no_videos=True)
    assert load_dataset(str(tmp_path / "seed1"), "sample_10k", split="train")["id"] != first


def test_a_rebuild_into_the_same_folder_is_not_stale(tmp_path):
    fmow, out = tmp_path / "fmow", tmp_path / "out"
    generate_tree(SynthConfig(out=str(fmow), locations=8, seed=5, image_size=64, oversize_fraction=0))
    _build(fmow, out, no_videos=True)
    first = load_dataset(str(out), split="train")["id"]
    generate_tree(SynthConfig(out=str(fmow), locations=10, seed=6, image_size=64, oversize_fraction=0))
    report = _build(fmow, out, no_videos=True)
    second = load_dataset(str(out), split="train")  # same HF_HOME, same folder name
    assert second["id"] != first and second.num_rows == report["pairs_per_split"]["train"]


def test_openai_options_join_the_command_line(tmp_path):
    from dataclasses import asdict

    from dataset_builder.build import BuildConfig, OpenAIAnnotatorConfig, _parser, build_fingerprint
    from dataset_builder.fmow import scan_fmow

    args = ["--fmow-root", str(tmp_path), "--out", str(tmp_path / "o"), "--annotator", "openai"]
    cfg, openai_cfg = _parser().parse_args_into_dataclasses(args=[*args, "--model", "gpt-4o", "--concurrency", "3"])
    assert isinstance(cfg, BuildConfig) and isinstance(openai_cfg, OpenAIAnnotatorConfig)
    assert (cfg.annotator, openai_cfg.model, openai_cfg.concurrency) == ("openai", "gpt-4o", 3)
    # how fast answers come does not change the build; what model writes them does
    write_image(tmp_path, "train", "barn", 0, 0, "2010-01-01T00:00:00Z")
    scan = scan_fmow(tmp_path, ["train"], 10**6)
    fast = {**asdict(openai_cfg), "concurrency": 30}
    other = {**asdict(openai_cfg), "model": "gpt-4o-mini"}
    base = build_fingerprint(cfg, scan, asdict(openai_cfg))
    assert build_fingerprint(cfg, scan, fast) == base != build_fingerprint(cfg, scan, other)


def test_a_build_without_videos_needs_no_pyav(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "av", None)  # as on a machine without PyAV: importing it raises ImportError
    fmow, out = tmp_path / "fmow", tmp_path / "out"
    generate_tree(SynthConfig(out=str(fmow), locations=6, seed=1, image_size=64, oversize_fraction=0))
    report = _build(fmow, out, no_videos=True)
    assert load_dataset(str(out), split="train").num_rows == report["pairs_per_split"]["train"] > 0
    with pytest.raises(ImportError):
        _build(fmow, tmp_path / "with-videos")
