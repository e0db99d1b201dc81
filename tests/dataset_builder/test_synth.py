import hashlib
import json
import re
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataset_builder.categories import FMOW_CATEGORIES
from dataset_builder.changes import CHANGE_KINDS, LOCATIONS, SIZES
from dataset_builder.synth import SynthConfig, compose_changes, generate_tree, main


TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{3})?Z$")
FIELDS = {
    "img_width": int,
    "img_height": int,
    "gsd": float,
    "utm": str,
    "country_code": str,
    "cloud_cover": int,
    "timestamp": str,
    "bounding_boxes": list,
}


def _tree(root, **kw):
    cfg = SynthConfig(out=str(root), **{"locations": 24, "seed": 3, "image_size": 96, "oversize_fraction": 0.0, **kw})
    return generate_tree(cfg)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    _tree(root)
    return root


def _parse(ts):
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_tree_parses_as_fmow(tree):
    images = sorted(tree.glob("*/*/*/*_rgb.jpg"))
    assert images
    saw_fraction, saw_unordered = False, False
    for jpg in images:
        split, category, location = jpg.parts[-4:-1]
        assert split in ("train", "val")
        assert category in FMOW_CATEGORIES
        assert re.fullmatch(rf"{re.escape(category)}_\d+", location)
        assert re.fullmatch(rf"{re.escape(location)}_\d+_rgb\.jpg", jpg.name)
        meta = json.loads(jpg.with_suffix(".json").read_text())
        for name, kind in FIELDS.items():
            assert isinstance(meta[name], kind), name
        assert TIMESTAMP.match(meta["timestamp"]), meta["timestamp"]
        saw_fraction |= "." in meta["timestamp"]
        with Image.open(jpg) as im:
            assert im.format == "JPEG" and im.size == (meta["img_width"], meta["img_height"])
        box = meta["bounding_boxes"][0]
        assert set(box) == {"ID", "box", "category"} and len(box["box"]) == 4
    assert saw_fraction
    for folder in {p.parent for p in images}:
        stems = sorted(folder.glob("*_rgb.json"))
        by_time = sorted(stems, key=lambda p: _parse(json.loads(p.read_text())["timestamp"]))
        saw_unordered |= [p.name for p in by_time] != sorted(p.name for p in stems)
    assert saw_unordered, "the fMoW index T must not follow time order"


def test_gaps_make_and_break_chains(tree):
    gaps = []
    for folder in {p.parent for p in tree.glob("*/*/*/*_rgb.json")}:
        times = sorted(_parse(json.loads(p.read_text())["timestamp"]) for p in folder.glob("*_rgb.json"))
        gaps += [(b - a).days for a, b in zip(times, times[1:], strict=False)]
    assert any(g < 365 for g in gaps) and any(g >= 365 for g in gaps)


def test_deterministic_for_a_seed(tmp_path):
    _tree(tmp_path / "a", locations=6)
    _tree(tmp_path / "b", locations=6)
    _tree(tmp_path / "c", locations=6, seed=4)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_ground_truth_is_complete_and_valid(tree):
    for split in ("train", "val"):
        for line in (tree / "groundtruth" / f"{split}.jsonl").read_text().splitlines():
            loc = json.loads(line)
            folder = tree / split / loc["category"] / loc["location_id"]
            stems = {p.name.removesuffix("_rgb.jpg") for p in folder.glob("*_rgb.jpg")}
            assert set(loc["images"]) == stems
            n = len(stems)
            assert len(loc["pairs"]) == n * (n - 1) // 2
            for pair in loc["pairs"].values():
                for change in pair["changes"]:
                    assert change["kind"] in CHANGE_KINDS
                    assert change["location"] in LOCATIONS
                    assert change["size"] in SIZES


def _pixels(tree, split, loc, stem):
    path = tree / split / loc["category"] / loc["location_id"] / f"{stem}_rgb.jpg"
    return np.asarray(Image.open(path).convert("RGB").resize((96, 96)), dtype=np.float32)


def test_ground_truth_is_consistent_with_pixels(tree):
    """A changed cell differs far more between dates than the cells where nothing changed."""
    changed, unchanged = [], []
    for line in (tree / "groundtruth" / "train.jsonl").read_text().splitlines():
        loc = json.loads(line)
        for pair_id, pair in loc["pairs"].items():
            a, b = pair_id.split(f"-{loc['location_id']}_")
            b = f"{loc['location_id']}_{b}"
            pa, pb = _pixels(tree, "train", loc, a), _pixels(tree, "train", loc, b)
            pa, pb = pa / pa.mean(), pb / pb.mean()  # illumination and season
            diff = np.abs(pa - pb).mean(axis=2)
            cells = {LOCATIONS.index(c["location"]) for c in pair["changes"]}
            if not pair["changes"]:
                unchanged.append(diff.mean())
            for cell in cells:
                r, c = divmod(cell, 3)
                changed.append(diff[r * 32 : (r + 1) * 32, c * 32 : (c + 1) * 32].mean())
    assert changed and unchanged
    assert np.median(changed) > 3 * np.median(unchanged)


def test_oversize_fraction_writes_images_over_1mb(tmp_path):
    _tree(tmp_path, locations=4, oversize_fraction=1.0, image_size=64)
    sizes = [p.stat().st_size for p in tmp_path.glob("*/*/*/*_rgb.jpg")]
    assert sizes and min(sizes) > 1_000_000


def test_compose_changes_cancels_and_replaces():
    built = {"kind": "building_built", "location": "north", "size": "small"}
    demolished = {"kind": "building_demolished", "location": "north", "size": "small"}
    road = {"kind": "road_built", "location": "east", "size": "small"}
    assert compose_changes([[built], [demolished]]) == []
    assert compose_changes([[built], [road]]) == [built, road]
    assert compose_changes([[built], []]) == [built]


def test_cli(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--locations", "3", "--image_size", "64", "--oversize_fraction", "0"]) == 0
    assert "3 locations" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--format"):
        SynthConfig(out="x", format="tiff")
