import io
import json

import pytest
import yaml
from datasets import load_dataset
from levircc_fixtures import CHANGED, UNCHANGED, write_levircc_tree
from PIL import Image

import trainer.models.ccexpert  # noqa: F401  (registers the ccexpert family)
from dataset_builder.levircc import (
    LevirCCBuildConfig,
    build_levircc,
    clean_caption,
    infer_changeflag,
    is_no_change_caption,
    main,
)
from dataset_builder.prompts import PROMPT_TEMPLATES, strip_visual_placeholder
from trainer.models.families import build_messages


def _build(tmp_path, **tree_kwargs):
    root, out = tmp_path / "levir", tmp_path / "out"
    data = write_levircc_tree(root, **tree_kwargs)
    return root, out, data


def test_build_reads_the_official_layout_into_hub_splits(tmp_path):
    root, out, data = _build(tmp_path)
    assert main(["--root", str(root), "--out", str(out), "--shard_rows", "3"]) == 0
    ds = load_dataset(str(out))
    assert {s: len(ds[s]) for s in ds} == {"train": 4, "validation": 2, "test": 2}
    assert sorted((out / "data").glob("train-*.parquet"))[-1].name == "train-00001-of-00002.parquet"
    by_id = {e["filename"][:-4]: e for e in data["images"]}
    for split in ds:
        for row in ds[split]:
            entry = by_id[row["id"]]
            official = {"validation": "val"}.get(split, split)
            assert row["split"] == split and entry["split"] == official
            assert row["references"] == [" ".join(s["raw"].split()[:-1]) for s in entry["sentences"]]
            assert row["conversations"][1] == {"from": "gpt", "value": row["references"][0]}
            human = row["conversations"][0]["value"]
            assert human.endswith("\n<video>") and strip_visual_placeholder(human) in PROMPT_TEMPLATES
            assert row["changeflag"] == entry["changeflag"] and not row["changeflag_inferred"]
            a, b = row["frames"]
            assert a.format == b.format == "PNG" and a.size == b.size == (64, 64)
            # stored bytes are the original files, unchanged
            raw_a = (root / "images" / official / "A" / entry["filename"]).read_bytes()
            assert a.tobytes() == Image.open(io.BytesIO(raw_a)).tobytes()
            assert (a.tobytes() == b.tobytes()) == (row["changeflag"] == 0)


def test_card_yaml_matches_the_shards(tmp_path):
    root, out, _ = _build(tmp_path)
    build_levircc(LevirCCBuildConfig(root=str(root), out=str(out)))
    text = (out / "README.md").read_text()
    meta = yaml.safe_load(text.split("---")[1])
    assert meta["configs"][0]["config_name"] == "default"
    splits = {s["name"]: s["num_examples"] for s in meta["dataset_info"][0]["splits"]}
    assert splits == {"train": 4, "validation": 2, "test": 2}
    feature_names = [f["name"] for f in meta["dataset_info"][0]["features"]]
    assert {"frames", "references", "conversations", "changeflag"} <= set(feature_names)
    assert "| validation | 2 | 1 | 1 |" in text


def test_a_pair_missing_its_b_image_is_a_clear_error_or_a_reported_skip(tmp_path, capsys):
    root, out, _ = _build(tmp_path)
    (root / "images" / "val" / "B" / "val_000001.png").unlink()
    assert main(["--root", str(root), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "pair val_000001 (split val, imgid 5): missing image B" in err
    report = build_levircc(LevirCCBuildConfig(root=str(root), out=str(out), skip_missing=True))
    assert report["pairs_per_split"] == {"train": 4, "validation": 1, "test": 2}
    assert [s["filename"] for s in report["skipped"]] == ["val_000001.png"]
    assert "missing image B" in report["skipped"][0]["reason"]


def test_a_corrupt_image_names_the_pair(tmp_path):
    root, out, _ = _build(tmp_path)
    (root / "images" / "test" / "A" / "test_000000.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"pair test_000000 \(split test, imgid 6\): image A .* not a readable"):
        build_levircc(LevirCCBuildConfig(root=str(root), out=str(out)))


def test_changeflag_is_inferred_from_the_captions_when_absent(tmp_path):
    root, out, data = _build(tmp_path, changeflag=False)
    report = build_levircc(LevirCCBuildConfig(root=str(root), out=str(out)))
    assert report["changeflag"] == {"given": {}, "inferred": {"0": 4, "1": 4}}
    rows = load_dataset(str(out), split="train")
    assert all(r["changeflag_inferred"] for r in rows)
    assert [r["changeflag"] for r in rows] == [0, 1, 0, 1]


def test_no_change_rule_on_levir_wordings():
    assert all(is_no_change_caption(clean_caption(c)) for c in UNCHANGED)
    assert not any(is_no_change_caption(clean_caption(c)) for c in CHANGED)
    assert infer_changeflag(["there is no difference"] * 3 + ["a road is built"] * 2) == 0
    assert infer_changeflag(["there is no difference"] * 2 + ["a road is built"] * 3) == 1
    assert clean_caption("  there is  no difference .  ") == "there is no difference"
    assert clean_caption("the houses are built . ") == "the houses are built"


def test_out_that_holds_something_else_is_refused_and_a_rebuild_replaces(tmp_path):
    root, out, _ = _build(tmp_path)
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        build_levircc(LevirCCBuildConfig(root=str(root), out=str(out)))
    assert (out / "precious.txt").exists()
    other = tmp_path / "out2"
    build_levircc(LevirCCBuildConfig(root=str(root), out=str(other), splits="test"))
    build_levircc(LevirCCBuildConfig(root=str(root), out=str(other), splits="val"))
    assert sorted(p.name.split("-")[0] for p in (other / "data").glob("*.parquet")) == ["validation"]
    assert json.loads((other / "build_report.json").read_text())["pairs_per_split"] == {"validation": 2}


def test_bad_options_name_the_flag():
    with pytest.raises(ValueError, match="--splits 'train,dev'"):
        LevirCCBuildConfig(root="r", out="o", splits="train,dev")


def test_one_row_feeds_both_families(tmp_path):
    root, out, _ = _build(tmp_path)
    build_levircc(LevirCCBuildConfig(root=str(root), out=str(out), splits="test"))
    row = load_dataset(str(out), split="test")[1]
    question = strip_visual_placeholder(row["conversations"][0]["value"])
    video = build_messages("llava-onevision", question, row["frames"], row["conversations"][1]["value"])
    images = build_messages("ccexpert", question, row["frames"], row["conversations"][1]["value"])
    assert [c["type"] for c in video[0]["content"]] == ["video", "text"]
    assert [c["type"] for c in images[0]["content"]] == ["image", "image", "text"]
