import json

import pytest
from datasets import load_dataset
from fmow_fixtures import write_messy_tree

from dataset_builder.annotation.base import AnnotationRequest
from dataset_builder.annotation.imported import ImportAnnotator, read_official
from dataset_builder.build import BuildConfig, build
from dataset_builder.frames import read_mp4
from dataset_builder.official_json import export_official
from dataset_builder.synthetic.synth import SynthConfig, generate_tree


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("official")
    generate_tree(SynthConfig(out=str(root / "fmow"), locations=12, seed=3, image_size=64, oversize_fraction=0))
    build(BuildConfig(fmow_root=str(root / "fmow"), out=str(root / "out"), frame_size=32, shard_rows=5))
    return root


def test_the_build_writes_the_official_form_of_every_split(built):
    out = built / "out"
    for split in ("train", "test"):
        ds = load_dataset(str(out), split=split)
        entries = json.loads((out / "geollava_json" / f"{split}.json").read_text())
        assert [e["id"] for e in entries] == ds["id"]
        assert [e["conversations"] for e in entries] == ds["conversations"]
        for entry in entries:
            assert entry["video"] == f"{entry['id']}.mp4"
            assert (out / "videos" / split / entry["video"]).exists()


def test_export_to_another_folder_copies_the_clips(built, tmp_path):
    counts = export_official(built / "out", tmp_path / "official")
    entries = json.loads((tmp_path / "official" / "geollava_json" / "train.json").read_text())
    assert len(entries) == counts["train"] > 0
    clip = tmp_path / "official" / "videos" / "train" / entries[0]["video"]
    assert clip.read_bytes() == (built / "out" / "videos" / "train" / entries[0]["video"]).read_bytes()


def test_export_of_a_build_without_clips_makes_them_from_the_frames(built, tmp_path):
    build(
        BuildConfig(
            fmow_root=str(built / "fmow"), out=str(tmp_path / "novid"), frame_size=32, no_videos=True, sample_size=0
        )
    )
    assert not (tmp_path / "novid" / "videos").exists()
    assert not (tmp_path / "novid" / "data" / "sample_10k").exists()
    assert [c["config_name"] for c in load_dataset_configs(tmp_path / "novid")] == ["default"]
    export_official(tmp_path / "novid", tmp_path / "official")
    row = load_dataset(str(tmp_path / "novid"), split="test")[0]
    first, last = read_mp4(tmp_path / "official" / "videos" / "test" / f"{row['id']}.mp4")
    assert first.size == last.size == (32, 32)


def load_dataset_configs(folder):
    import yaml

    return yaml.safe_load((folder / "README.md").read_text().split("---")[1])["configs"]


def test_import_round_trip_attaches_the_answers_by_id(built, tmp_path):
    train_json = built / "out" / "geollava_json" / "train.json"
    report = build(
        BuildConfig(
            fmow_root=str(built / "fmow"),
            out=str(tmp_path / "imported"),
            frame_size=32,
            annotator=f"import:{train_json}",
            no_videos=True,
        )
    )
    original = load_dataset(str(built / "out"), split="train")
    imported = load_dataset(str(tmp_path / "imported"), split="train")
    assert imported["id"] == original["id"]
    assert imported["conversations"] == original["conversations"]
    # the test pairs are not in train.json: reported by id, left out
    missing = {m["id"] for m in report["annotation"]["not_annotated"]["missing"]}
    assert missing == set(load_dataset(str(built / "out"), split="test")["id"])
    assert report["pairs_not_annotated"] == len(missing)
    assert set(report["pairs_per_split"]) == {"train"}
    assert "gpt-4o-mini" in (tmp_path / "imported" / "README.md").read_text()


def test_import_reads_a_folder_and_skips_bad_entries_with_their_index(tmp_path):
    folder = tmp_path / "json"
    folder.mkdir()
    good = {
        "id": "a_1_0-a_1_1",
        "video": "a_1_0-a_1_1.mp4",
        "conversations": [{"from": "human", "value": "q\n<video>"}, {"from": "gpt", "value": "answer a"}],
    }
    by_video = {"id": 17, "video": "b_2_0-b_2_1.mp4", "conversations": [{"from": "gpt", "value": "answer b"}]}
    (folder / "a_train.json").write_text(json.dumps([good, {"id": "x"}, "junk"]))
    (folder / "b_test.json").write_text(
        json.dumps([by_video, {**good, "conversations": [{"from": "gpt", "value": "?"}]}])
    )
    answers, problems = read_official(folder)
    assert answers == {"a_1_0-a_1_1": "answer a", "b_2_0-b_2_1": "answer b"}
    assert len(problems) == 3
    assert any("a_train.json entry 1" in p for p in problems) and any("a_train.json entry 2" in p for p in problems)
    assert any("b_test.json entry 1" in p and "another answer" in p for p in problems)
    annotator = ImportAnnotator(folder)
    results = list(annotator.annotate([AnnotationRequest("a_1_0-a_1_1", ()), AnnotationRequest("zzz", ())]))
    assert [(r.id, r.text, r.status) for r in results] == [("a_1_0-a_1_1", "answer a", "ok"), ("zzz", None, "missing")]


def test_import_of_a_file_that_is_not_a_list_names_the_file(tmp_path):
    (tmp_path / "bad.json").write_text('{"id": 1}')
    with pytest.raises(ValueError, match="bad.json: expected a JSON list"):
        read_official(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(ValueError, match="broken.json: not valid JSON"):
        read_official(tmp_path / "broken.json")


def test_import_with_no_matching_id_exits_nonzero(tmp_path, capsys):
    from dataset_builder.build import main

    write_messy_tree(tmp_path / "fmow")
    (tmp_path / "other.json").write_text("[]")
    args = [
        "--fmow-root",
        str(tmp_path / "fmow"),
        "--out",
        str(tmp_path / "o"),
        "--annotator",
        f"import:{tmp_path / 'other.json'}",
    ]
    assert main(args) == 1
    assert "answered none of the 4 pairs" in capsys.readouterr().err
