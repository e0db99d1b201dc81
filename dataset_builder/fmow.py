"""Reading an fMoW-rgb tree: which images are usable, their metadata, and why the others were dropped."""

import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from PIL import Image


logger = logging.getLogger(__name__)

#: Why an image (or file) was not used; the build report counts each with its paths.
DROP_REASONS = (
    "oversize",
    "corrupt_image",
    "missing_json",
    "missing_image",
    "malformed_json",
    "bad_timestamp",
    "stray_file",
)


@dataclass(frozen=True)
class FmowImage:
    """One usable ``*_rgb.jpg`` with its metadata."""

    split: str
    category: str
    location_id: str
    stem: str
    index: int
    path: Path
    timestamp: datetime
    timestamp_text: str
    size_bytes: int
    gsd: float | None
    country_code: str | None
    cloud_cover: int | None


def parse_timestamp(text: str) -> datetime:
    """Parse fMoW's ISO 8601 timestamps (``2012-04-02T10:32:22Z``, ``2012-09-08T16:07:23.244Z``, ``... 16:07:23.000``).

    Raises:
        ValueError: If ``text`` is not such a timestamp.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"timestamp {text!r} is not a non-empty string")
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace(" ", "T"))
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


@dataclass
class ScanResult:
    """What a scan found: usable images per location, dropped files per reason, and counters."""

    locations: dict[tuple[str, str], list[FmowImage]]
    dropped: dict[str, list[str]]
    images_seen: int = 0
    msrgb_ignored: int = 0
    empty_locations: list[str] | None = None


def _jpeg_ok(path: Path) -> bool:
    """Cheap integrity check: PIL can read the header and the file ends with the JPEG end-of-image marker."""
    try:
        with Image.open(path) as im:
            im.verify()
        with open(path, "rb") as fh:
            fh.seek(-2, 2)
            return fh.read(2) == b"\xff\xd9"
    except Exception:  # noqa: BLE001 - any failure to read means the image is unusable
        return False


def scan_fmow(root: Path, splits: list[str], max_image_bytes: int) -> ScanResult:
    """Walk ``{root}/{split}/{category}/{category}_{loc}/`` and keep the usable ``*_rgb.jpg`` + ``*_rgb.json`` images.

    Images over ``max_image_bytes`` are dropped here, before pairing (the paper's rule). ``_msrgb`` files are ignored
    (not counted as dropped); anything else that is not an rgb image or its JSON is a stray file.

    Raises:
        FileNotFoundError: If none of the splits exists under ``root`` (with what was expected).
    """
    root = Path(root)
    present = [s for s in splits if (root / s).is_dir()]
    if not present:
        raise FileNotFoundError(
            f"{root} is not an fMoW-rgb tree: expected {', '.join(f'{root}/{s}/' for s in splits)} holding "
            "{category}/{category}_{loc}/{category}_{loc}_{T}_rgb.jpg + .json"
        )
    result = ScanResult(locations={}, dropped=defaultdict(list), empty_locations=[])
    for split in present:
        for category_dir in sorted(p for p in (root / split).iterdir() if p.is_dir()):
            for location_dir in sorted(p for p in category_dir.iterdir() if p.is_dir()):
                images = _scan_location(split, category_dir.name, location_dir, max_image_bytes, result)
                if images:
                    result.locations[(split, location_dir.name)] = images
                else:
                    result.empty_locations.append(f"{split}/{category_dir.name}/{location_dir.name}")
            for stray in (p for p in category_dir.iterdir() if p.is_file()):
                result.dropped["stray_file"].append(str(stray))
    result.dropped = dict(result.dropped)
    return result


def _scan_location(split, category, folder: Path, max_bytes: int, result: ScanResult) -> list[FmowImage]:
    files = {p.name: p for p in folder.iterdir() if p.is_file()}
    images = []
    for name, path in sorted(files.items()):
        if "_msrgb" in name:
            result.msrgb_ignored += 1
            continue
        if name.endswith("_rgb.json"):
            if name.removesuffix(".json") + ".jpg" not in files:
                result.dropped["missing_image"].append(str(path))
            continue
        if not name.endswith("_rgb.jpg"):
            result.dropped["stray_file"].append(str(path))
            continue
        result.images_seen += 1
        image = _read_image(split, category, folder, path, files, max_bytes, result)
        if image is not None:
            images.append(image)
    return images


def _read_image(split, category, folder, path: Path, files, max_bytes, result) -> FmowImage | None:
    stem = path.name.removesuffix("_rgb.jpg")
    json_path = files.get(f"{stem}_rgb.json")
    if json_path is None:
        result.dropped["missing_json"].append(str(path))
        return None
    size = path.stat().st_size
    if size > max_bytes:
        result.dropped["oversize"].append(str(path))
        return None
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as err:
        result.dropped["malformed_json"].append(f"{json_path} ({err})")
        return None
    try:
        timestamp = parse_timestamp(meta.get("timestamp"))
    except (ValueError, TypeError) as err:
        result.dropped["bad_timestamp"].append(f"{json_path} ({err})")
        return None
    if not _jpeg_ok(path):
        result.dropped["corrupt_image"].append(str(path))
        return None
    try:
        index = int(stem.rsplit("_", 1)[1])
    except (IndexError, ValueError):
        result.dropped["stray_file"].append(str(path))
        return None
    return FmowImage(
        split=split,
        category=category,
        location_id=folder.name,
        stem=stem,
        index=index,
        path=path,
        timestamp=timestamp,
        timestamp_text=meta["timestamp"],
        size_bytes=size,
        gsd=_float(meta.get("gsd")),
        country_code=meta.get("country_code") if isinstance(meta.get("country_code"), str) else None,
        cloud_cover=_int(meta.get("cloud_cover")),
    )


def _float(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
