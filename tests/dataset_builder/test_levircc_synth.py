import json
import re

from datasets import load_dataset
from PIL import Image

from dataset_builder.changes import extract_change_kinds
from dataset_builder.levircc import main as build_levircc
from dataset_builder.synthetic.synth import main as synth_main


def test_synthetic_levircc_tree_builds_and_loads(tmp_path):
    assert synth_main(["--format", "levir-cc", "--out", str(tmp_path / "levir"), "--pairs", "12", "--seed", "1"]) == 0
    data = json.loads((tmp_path / "levir" / "LevirCCcaptions.json").read_text())
    assert {e["split"] for e in data["images"]} == {"train", "val", "test"}
    for entry in data["images"]:
        assert len(entry["sentences"]) == 5
        assert all(s["raw"].startswith(" ") and s["raw"].endswith(" .") for s in entry["sentences"])
        for side in ("A", "B"):
            with Image.open(tmp_path / "levir" / "images" / entry["split"] / side / entry["filename"]) as im:
                assert im.size == (256, 256)
    names = [e["filename"] for e in data["images"]]
    assert all(re.fullmatch(rf"{e['split']}_\d{{6}}\.png", e["filename"]) for e in data["images"])
    assert f"{data['images'][0]['split']}_000001.png" in names
    assert [e["imgid"] for e in data["images"]] == list(range(12))
    sentids = [s["sentid"] for e in data["images"] for s in e["sentences"]]
    assert sentids == list(range(60))
    for entry in data["images"]:
        assert entry["sentids"] == [s["sentid"] for s in entry["sentences"]]
        for sentence in entry["sentences"]:
            assert sentence["raw"] == sentence["raw"].lower() and sentence["tokens"] == sentence["raw"].split()
            assert 3 <= len(sentence["tokens"]) <= 12
        kinds = set().union(*(extract_change_kinds(s["raw"]) for s in entry["sentences"]))
        assert (kinds == {"no_change"}) == (entry["changeflag"] == 0)
    flags = [e["changeflag"] for e in data["images"]]
    assert 0 in flags and 1 in flags
    assert build_levircc(["--root", str(tmp_path / "levir"), "--out", str(tmp_path / "ds")]) in (0, None)
    ds = load_dataset(str(tmp_path / "ds"))
    assert sum(ds[s].num_rows for s in ds) == 12
    assert all(len(r) == 5 for r in ds["train"]["references"])


def test_synthetic_levircc_is_deterministic(tmp_path):
    for name, seed in (("a", 2), ("b", 2), ("c", 3)):
        args = ["--format", "levir-cc", "--out", str(tmp_path / name), "--pairs", "4", "--seed", str(seed)]
        assert synth_main(args) == 0

    def files(root):
        return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    assert files(tmp_path / "a") == files(tmp_path / "b")
    assert files(tmp_path / "a") != files(tmp_path / "c")
