"""Write tiny fMoW-layout trees with chosen timestamps, sizes and defects."""

import io
import json
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
    timestamp: str | None,
    *,
    size=(40, 32),
    data: bytes | None = None,
    meta: dict | None = None,
    json_text: str | None = None,
) -> Path:
    folder = root / split / category / f"{category}_{loc}"
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{category}_{loc}_{index}"
    jpg = folder / f"{stem}_rgb.jpg"
    jpg.write_bytes(data if data is not None else jpeg_bytes(hash((category, loc, index)) % 2**32, size))
    if json_text is not None:
        (folder / f"{stem}_rgb.json").write_text(json_text)
    elif timestamp is not False:
        body = {
            "timestamp": timestamp,
            "gsd": 0.5,
            "country_code": "USA",
            "cloud_cover": 3,
            "img_width": size[0],
            "img_height": size[1],
            "bounding_boxes": [{"ID": 1, "box": [1, 1, 5, 5], "category": category}],
        }
        body.update(meta or {})
        (folder / f"{stem}_rgb.json").write_text(json.dumps(body))
    return jpg
