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
from dataset_builder.synthetic.render import render
from dataset_builder.synthetic.scenes import apply_change, diff_scenes, possible_changes, random_scene
from dataset_builder.synthetic.synth import SynthConfig, generate_tree, main


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


def test_dates_sizes_and_gaps_are_like_fmow(tree):
    gaps, counts, sizes_vary, not_square = [], [], False, False
    for folder in {p.parent for p in tree.glob("*/*/*/*_rgb.json")}:
        metas = [json.loads(p.read_text()) for p in folder.glob("*_rgb.json")]
        counts.append(len(metas))
        times = sorted(_parse(m["timestamp"]) for m in metas)
        assert all(2002 <= t.year <= 2017 for t in times)
        gaps += [(b - a).days for a, b in zip(times, times[1:], strict=False)]
        sizes = {(m["img_width"], m["img_height"]) for m in metas}
        sizes_vary |= len(sizes) > 1
        not_square |= any(w != h for w, h in sizes)
        assert all(0.8 * 96 <= side <= 1.2 * 96 for size in sizes for side in size)
    assert min(counts) >= 1 and max(counts) <= 6 and max(counts) >= 4
    assert any(g < 365 for g in gaps) and any(g >= 365 for g in gaps)
    assert any(364 <= g <= 366 for g in gaps), "some gaps sit on the pairing rule's edge"
    assert sizes_vary and not_square
    splits = {p.parts[-4] for p in tree.glob("*/*/*/*_rgb.json")}
    assert splits == {"train", "val"}


def test_deterministic_for_a_seed(tmp_path):
    _tree(tmp_path / "a", locations=6)
    _tree(tmp_path / "b", locations=6)
    _tree(tmp_path / "c", locations=6, seed=4)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


#: sha256 of the metadata and ground truth (every rng draw shows there) that geollava-synth writes for seed 11.
SEED_11_METADATA = "fe4aeb2d97baa5336e18a4a01cc7b0b26081f1e3460e740b43947ab82506fc44"


def _metadata_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix in (".json", ".jsonl"):
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_a_seed_keeps_writing_the_same_tree_without_min_dates(tmp_path):
    for name, extra in (("default", {}), ("explicit", {"min_dates": 1})):
        generate_tree(SynthConfig(out=str(tmp_path / name), locations=8, seed=11, image_size=32, **extra))
        assert _metadata_digest(tmp_path / name) == SEED_11_METADATA, name
    assert _digest(tmp_path / "default") == _digest(tmp_path / "explicit")


def test_min_dates_gives_every_location_that_many_dates_or_more(tmp_path):
    _tree(tmp_path / "plain", locations=30)
    _tree(tmp_path / "three", locations=30, min_dates=3)
    counts = {}
    for name in ("plain", "three"):
        counts[name] = []
        for split in ("train", "val"):
            for line in (tmp_path / name / "groundtruth" / f"{split}.jsonl").read_text().splitlines():
                loc = json.loads(line)
                n = len(loc["images"])
                folder = tmp_path / name / split / loc["category"] / loc["location_id"]
                assert len(list(folder.glob("*_rgb.jpg"))) == n and len(loc["pairs"]) == n * (n - 1) // 2
                counts[name].append(n)
    assert min(counts["plain"]) < 3 and min(counts["three"]) == 3 and max(counts["three"]) <= 6
    assert sum(counts["three"]) > sum(counts["plain"])


def test_two_dates_give_each_location_one_pair_with_one_change_or_none(tmp_path):
    _tree(tmp_path / "two", locations=40, two_dates=True)
    changes = []
    for split in ("train", "val"):
        for line in (tmp_path / "two" / "groundtruth" / f"{split}.jsonl").read_text().splitlines():
            loc = json.loads(line)
            folder = tmp_path / "two" / split / loc["category"] / loc["location_id"]
            metas = [json.loads(p.read_text()) for p in folder.glob("*_rgb.json")]
            first, last = sorted(_parse(m["timestamp"]) for m in metas)
            assert 380 <= (last - first).days <= 1100, loc["location_id"]
            (pair,) = loc["pairs"].values()
            changes.append(len(pair["changes"]))
    assert set(changes) == {0, 1}


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


BLOB_KINDS = ("building_built", "building_demolished", "field_to_construction", "forest_cleared")


def _pixels(tree, split, loc, stem):
    """The frame as a tiny model sees it (48 px), each channel divided by its mean (illumination, season tint)."""
    path = tree / split / loc["category"] / loc["location_id"] / f"{stem}_rgb.jpg"
    with Image.open(path) as im:
        a = np.asarray(im.convert("RGB").resize((48, 48), Image.Resampling.BILINEAR), dtype=np.float32)
    return a / a.mean(axis=(0, 1))


def test_ground_truth_is_consistent_with_pixels(tree):
    """At 48 px a changed cell differs far more between dates than a whole unchanged pair does."""
    changed, blobs, unchanged = [], [], []
    for line in (tree / "groundtruth" / "train.jsonl").read_text().splitlines():
        loc = json.loads(line)
        for pair_id, pair in loc["pairs"].items():
            a, b = pair_id.split(f"-{loc['location_id']}_")
            diff = np.abs(_pixels(tree, "train", loc, a) - _pixels(tree, "train", loc, f"{loc['location_id']}_{b}"))
            diff = diff.mean(axis=2)
            if not pair["changes"]:
                unchanged.append(diff.mean())
            for change in pair["changes"]:
                r, c = divmod(LOCATIONS.index(change["location"]), 3)
                cell = diff[r * 16 : (r + 1) * 16, c * 16 : (c + 1) * 16].mean()
                changed.append(cell)
                if change["kind"] in (
                    "building_built",
                    "building_demolished",
                    "field_to_construction",
                    "forest_cleared",
                ):
                    blobs.append(cell)
    assert len(changed) > 20 and len(blobs) > 10 and len(unchanged) > 3
    base = np.median(unchanged)
    assert max(unchanged) < 0.15, "an unchanged pair should barely differ"
    assert np.median(changed) > 2 * base
    assert min(blobs) > 2 * base, "every building/site/forest change must stand out in its cell"


def test_oversize_fraction_writes_images_over_1mb(tmp_path):
    _tree(tmp_path, locations=4, oversize_fraction=1.0, image_size=64)
    sizes = [p.stat().st_size for p in tmp_path.glob("*/*/*/*_rgb.jpg")]
    assert sizes and min(sizes) > 1_000_000


def test_diff_scenes_composes_steps():
    rng = np.random.default_rng(0)
    for _ in range(200):
        scene = random_scene(rng)
        states, records = [scene], []
        for _ in range(4):
            kinds = possible_changes(states[-1])
            if not kinds:
                break
            after, record = apply_change(states[-1], str(rng.choice(kinds)), rng)
            states.append(after)
            records.append(record)
        for before, after, record in zip(states[:-1], states[1:], records, strict=True):
            assert diff_scenes(before, after) == [record]  # one step: that step's change
        whole = diff_scenes(states[0], states[-1])
        assert len({(c["kind"], c["location"]) for c in whole}) == len(whole)
        water = [r["kind"] for r in records if r["kind"].startswith("water")]
        # every kind and place but the lake's and a widening (of a road built in between) is in the composition
        plain = {(r["kind"], r["location"]) for r in records if not r["kind"].startswith("water")}
        plain -= {("road_widened", c["location"]) for c in whole if c["kind"] == "road_built"}
        assert plain <= {(c["kind"], c["location"]) for c in whole}
        if not water:
            assert not [c for c in whole if c["kind"].startswith("water")]
    assert diff_scenes(scene, scene) == []


def test_water_that_grows_and_shrinks_back_is_no_change():
    rng = np.random.default_rng(1)
    scene = random_scene(rng)
    while not scene["water"] or scene["water"]["level"] != 1:
        scene = random_scene(rng)
    grown, _ = apply_change(scene, "water_expanded", rng)
    back = grown
    while back["water"]["level"] != 1:
        back, _ = apply_change(back, "water_shrunk", rng)
    assert diff_scenes(scene, back) == []
    assert diff_scenes(scene, grown)[0]["kind"] == "water_expanded"


def test_changes_cover_enough_of_the_image():
    """Every change repaints ~4 % of the image or more (a lake shrinking under a bridge, 3 %), so it survives 32 px."""
    rng = np.random.default_rng(2)
    moved: dict[str, list[float]] = {}
    for _ in range(150):
        scene = random_scene(rng)
        for kind in possible_changes(scene):
            after, record = apply_change(scene, kind, rng)
            assert record["kind"] == kind and record["location"] in LOCATIONS and record["size"] in SIZES
            a = np.asarray(render(scene, 100, 100, np.random.default_rng(5)), dtype=np.int16)
            b = np.asarray(render(after, 100, 100, np.random.default_rng(5)), dtype=np.int16)
            moved.setdefault(kind, []).append((np.abs(a - b).max(axis=2) > 25).mean())
    assert set(moved) == set(CHANGE_KINDS)
    for kind, fractions in moved.items():
        assert min(fractions) >= 0.03 and np.median(fractions) >= 0.045, (kind, min(fractions), np.median(fractions))


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["--out", str(out), "--locations", "3", "--image-size", "64", "--oversize-fraction", "0"]
    assert main([*args, "--splits", "train,val,test"]) == 0
    assert "3 locations" in capsys.readouterr().out
    assert {p.name for p in (out / "groundtruth").iterdir()} == {"train.jsonl", "val.jsonl", "test.jsonl"}
    assert not list(out.rglob("*.tmp")), "temporary files must be renamed into place"
    for w in out.rglob("*_rgb.json"):
        assert json.loads(w.read_text())["img_width"] in range(54, 75)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"format": "tiff"}, "--format"),
        ({"locations": 0}, "--locations"),
        ({"locations": 1, "splits": "train,val"}, "--locations"),
        ({"splits": "train,train"}, "--splits"),
        ({"splits": " , "}, "--splits"),
        ({"oversize_fraction": 1.5}, "--oversize_fraction"),
        ({"image_size": 8}, "--image_size"),
        ({"two_dates": True, "format": "levir-cc"}, "--two_dates"),
        ({"min_dates": 0}, "--min_dates 0: must be in 1..8"),
        ({"min_dates": 9}, "--min_dates 9"),
        ({"min_dates": 3, "two_dates": True}, "--min_dates 3 with --two_dates"),
        ({"min_dates": 3, "format": "levir-cc"}, "--min_dates applies to --format fmow"),
    ],
)
def test_config_names_the_bad_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SynthConfig(out="x", **kwargs)
