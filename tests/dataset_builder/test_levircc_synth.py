import json

from datasets import load_dataset
from PIL import Image

from dataset_builder.levircc import main as build_levircc
from dataset_builder.synth import main as synth_main


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
    flags = [e["changeflag"] for e in data["images"]]
    assert 0 in flags and 1 in flags
    assert build_levircc(["--root", str(tmp_path / "levir"), "--out", str(tmp_path / "ds")]) in (0, None)
    ds = load_dataset(str(tmp_path / "ds"))
    assert sum(ds[s].num_rows for s in ds) == 12
    assert all(len(r) == 5 for r in ds["train"]["references"])
