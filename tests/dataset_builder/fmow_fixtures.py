"""Write tiny fMoW-layout trees with chosen timestamps, sizes and defects."""

import io
import json
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def jpeg_bytes(seed: int, size=(40, 32), quality=90) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def write_image(
    root: Path,
    split: str,
    category: str,
    loc: int,
    index: int,
    timestamp: str | None | bool,
    *,
    size=(40, 32),
    data: bytes | None = None,
    meta: dict | None = None,
    json_text: str | None = None,
) -> Path:
    """One `{category}_{loc}_{index}_rgb.jpg` (+ its JSON unless `timestamp is False`); returns the JPEG path."""
    folder = root / split / category / f"{category}_{loc}"
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{category}_{loc}_{index}"
    jpg = folder / f"{stem}_rgb.jpg"
    seed = zlib.crc32(f"{split}/{stem}".encode())  # deterministic across processes, unlike hash()
    jpg.write_bytes(data if data is not None else jpeg_bytes(seed, size))
    if json_text is not None:
        (folder / f"{stem}_rgb.json").write_text(json_text)
    elif timestamp is not False:
        body = {
            "timestamp": timestamp,
            "gsd": 0.5,
            "utm": "17S",
            "country_code": "USA",
            "cloud_cover": 3,
            "img_width": size[0],
            "img_height": size[1],
            "bounding_boxes": [{"ID": 1, "box": [1, 1, 5, 5], "category": category}],
        }
        body.update(meta or {})
        (folder / f"{stem}_rgb.json").write_text(json.dumps(body))
    return jpg


def write_messy_tree(root: Path) -> Path:
    """A tree with the pairing rule's cases and one of every bad input; see the tests for the expected outcome."""
    # a chain of three, broken by an image 100 days after the second; T not in time order; sizes differ
    write_image(root, "train", "barn", 0, 2, "2010-01-01T00:00:00Z", size=(40, 32))
    write_image(root, "train", "barn", 0, 0, "2011-06-01T00:00:00.500Z", size=(48, 36))
    write_image(root, "train", "barn", 0, 3, "2011-09-09T00:00:00Z", size=(30, 44))
    write_image(root, "train", "barn", 0, 1, "2013-01-01T00:00:00Z")
    # an oversize image in the middle of a location: dropped BEFORE pairing, so 0 -> 2 becomes a pair
    write_image(root, "train", "dam", 1, 0, "2005-01-01T00:00:00Z")
    write_image(root, "train", "dam", 1, 1, "2005-06-01T00:00:00Z", data=b"\xff\xd8" + b"0" * 2_000_000 + b"\xff\xd9")
    write_image(root, "train", "dam", 1, 2, "2006-03-01T00:00:00Z")
    # bad inputs, one of each
    write_image(root, "train", "park", 2, 0, "2004-01-01T00:00:00Z")
    write_image(root, "train", "park", 2, 1, "2007-01-01T00:00:00Z", data=jpeg_bytes(1)[:300])  # truncated JPEG
    write_image(root, "train", "park", 2, 2, False)  # no JSON
    write_image(root, "train", "park", 2, 3, None, json_text="{not json")
    write_image(root, "train", "park", 2, 4, "yesterday")
    write_image(root, "train", "park", 2, 5, None, meta={"timestamp": None})  # missing timestamp
    (root / "train" / "park" / "park_2" / "park_2_9_rgb.json").write_text("{}")  # JSON without its image
    (root / "train" / "park" / "park_2" / "park_2_x_rgb.jpg").write_bytes(jpeg_bytes(3))  # no index T
    (root / "train" / "park" / "park_3").mkdir(parents=True)  # empty location
    (root / "train" / "park" / "notes.txt").write_text("stray")
    (root / "train" / "barn" / "barn_0" / "barn_0_0_msrgb.jpg").write_bytes(jpeg_bytes(9))
    (root / "train" / "barn" / "barn_0" / "Thumbs.db").write_bytes(b"x")
    # val -> test; fractional seconds
    write_image(root, "val", "barn", 5, 7, "2012-09-08T16:07:23.244Z")
    write_image(root, "val", "barn", 5, 1, "2016-05-19T10:00:00Z")
    return root


#: What `write_messy_tree` holds.
MESSY_PAIRS = {"train": ["barn_0_2-barn_0_0", "barn_0_3-barn_0_1", "dam_1_0-dam_1_2"], "test": ["barn_5_7-barn_5_1"]}
MESSY_DROPPED = {
    "bad_name": 1,
    "missing_json": 1,
    "oversize": 1,
    "malformed_json": 1,
    "bad_timestamp": 2,
    "corrupt_image": 1,
}
MESSY_SKIPPED = {"stray_file": 2, "orphan_json": 1}
MESSY_USABLE = 4 + 2 + 1 + 2


def undecodable_jpeg(seed: int = 1) -> bytes:
    """A JPEG whose header and end marker are fine (it passes the scan) but whose Huffman table is zeroed."""
    good = jpeg_bytes(seed, (64, 48))
    dht = good.index(b"\xff\xc4")
    return good[: dht + 5] + b"\x00" * 16 + good[dht + 21 :]


def gray_jpeg(level: int, size=(40, 32)) -> bytes:
    """A uniform gray JPEG: its frame's mean tells which view a row holds."""
    buf = io.BytesIO()
    Image.new("RGB", size, (level, level, level)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def write_sequence_tree(root: Path) -> dict[str, list[int]]:
    """A tree with the sequences rule's cases; returns the gray level of every kept view of each row, in order.

    Each view is a uniform gray (its level names it). ``barn_0``: 4 views whose index T is not time order, with
    msrgb files beside them; ``barn_1``: 3 images, one oversize, so 2 usable views and no row; ``barn_2``: two views
    at the same instant (written two ways) ordered by T (2 before 10, unlike their file names), and a view with
    malformed JSON; ``dam_3``: 10 views (more
    than ``max_frames`` 4); val ``barn_4``: 3 views, a ``test`` row.
    """
    views = {
        ("train", "barn", 0): [(3, "2010-03-02T10:00:00Z", 10), (0, "2012-05-01T10:00:00Z", 30),
                               (2, "2014-08-15T10:00:00Z", 50), (1, "2016-01-30T10:00:00Z", 70)],
        ("train", "barn", 1): [(0, "2010-01-01T00:00:00Z", 90), (1, "2012-01-01T00:00:00Z", 110)],
        ("train", "barn", 2): [(10, "2011-01-01T00:00:00Z", 130), (2, "2011-01-01T00:00:00.000Z", 150),
                               (7, "2013-06-01T00:00:00Z", 170)],
        ("train", "dam", 3): [(t, f"{2002 + k}-07-01T12:00:00Z", 10 + 24 * k)
                              for k, t in enumerate([4, 9, 0, 7, 1, 8, 2, 6, 3, 5])],
        ("val", "barn", 4): [(1, "2009-09-09T09:09:09Z", 60), (0, "2011-09-09T09:09:09Z", 120),
                             (2, "2015-09-09T09:09:09Z", 180)],
    }  # fmt: skip
    for (split, category, loc), items in views.items():
        for index, timestamp, level in items:
            write_image(root, split, category, loc, index, timestamp, data=gray_jpeg(level))
    folder = root / "train" / "barn" / "barn_0"
    for index in range(4):  # msrgb beside every rgb view: never a view
        (folder / f"barn_0_{index}_msrgb.jpg").write_bytes(gray_jpeg(250))
        (folder / f"barn_0_{index}_msrgb.json").write_text('{"timestamp": "2011-01-01T00:00:00Z"}')
    write_image(root, "train", "barn", 1, 2, "2014-01-01T00:00:00Z", data=b"\xff\xd8" + b"0" * 1_100_000 + b"\xff\xd9")
    write_image(root, "train", "barn", 2, 9, None, json_text="{not json")
    return {
        "barn_0": [10, 30, 50, 70],
        "barn_2": [150, 130, 170],
        "dam_3": [10 + 24 * k for k in (0, 3, 6, 9)],
        "barn_4": [60, 120, 180],
    }
