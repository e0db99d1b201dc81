"""Reading an fMoW-rgb tree: which images are usable, their metadata, and why the others were dropped.

Images are opened through :mod:`dataset_builder.images`: one over the pixel limit (``GEOLLAVA_MAX_IMAGE_PIXELS``,
read from the JPEG header) is dropped as ``too_many_pixels`` before anything is decoded; the byte limit of a build is
its ``max_image_bytes`` (reason ``oversize``).

Accounting (the build report relies on it): every ``*_rgb.jpg`` found is *seen*; each seen image is either usable or
dropped for exactly one reason in :data:`DROP_REASONS`, so ``images_seen == images_usable + sum(dropped)``. Files that
are not rgb images (a stray file, a JSON with no image) are *skipped* and counted apart, in :data:`SKIP_REASONS`;
``_msrgb`` files are ignored (counted, never used).
"""

import json
import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from tqdm.auto import tqdm

from dataset_builder.images import ImageLimits, ImageTooLarge, open_image


logger = logging.getLogger(__name__)

#: Why a seen ``*_rgb.jpg`` was not used, in the order the checks run (the first failing check names the reason).
DROP_REASONS = (
    "bad_name",
    "missing_json",
    "oversize",
    "malformed_json",
    "bad_timestamp",
    "too_many_pixels",
    "corrupt_image",
)

#: Files under the tree that are not rgb images and are not used.
SKIP_REASONS = ("stray_file", "orphan_json")

_STEM = re.compile(r"^(?P<location>.+)_(?P<index>\d+)$")
_TIMESTAMP = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})[T ](?P<time>\d{2}:\d{2}:\d{2})(?:\.(?P<fraction>\d+))?"
    r"(?P<offset>Z|[+-]\d{2}:?\d{2})?$"
)


@dataclass(frozen=True)
class FmowImage:
    """One usable ``*_rgb.jpg`` with its metadata.

    Attributes:
        split: The fMoW split (``train``, ``val``, ...).
        category: The fMoW category (``airport_hangar``).
        location_id: ``{category}_{loc}``.
        stem: ``{category}_{loc}_{T}``.
        index: ``T``, the fMoW index (not time order).
        path: The ``*_rgb.jpg`` file.
        timestamp: The parsed JSON ``timestamp`` (timezone-aware, UTC when the text has no offset).
        timestamp_text: The JSON ``timestamp`` as written.
        size_bytes: Size of the JPEG file.
        gsd: Ground sample distance in metres, if given.
        country_code: ISO country code, if given.
        cloud_cover: Cloud cover in percent, if given.
    """

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

    Args:
        text: The JSON ``timestamp`` value.

    Returns:
        A timezone-aware datetime (UTC when the text carries no offset).

    Raises:
        ValueError: If ``text`` is not such a timestamp.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"timestamp {text!r} is not a non-empty string")
    match = _TIMESTAMP.match(text.strip())
    if match is None:
        raise ValueError(f"timestamp {text!r} is not ISO 8601 (YYYY-MM-DDTHH:MM:SS[.fff][Z|+HH:MM])")
    # any number of fractional digits (Python 3.10's fromisoformat takes only 3 or 6)
    fraction = (match["fraction"] or "")[:6].ljust(6, "0")
    offset = match["offset"] or "+00:00"
    offset = "+00:00" if offset == "Z" else offset if ":" in offset else f"{offset[:3]}:{offset[3:]}"
    return datetime.fromisoformat(f"{match['date']}T{match['time']}.{fraction}{offset}")


@dataclass
class ScanResult:
    """What a scan found.

    Attributes:
        locations: Usable images per ``(split, location_id)``, for locations with at least one usable image.
        dropped: Seen images not used, per reason in :data:`DROP_REASONS` (``"path (detail)"`` strings).
        skipped: Other files not used, per reason in :data:`SKIP_REASONS`.
        images_seen: Every ``*_rgb.jpg`` found.
        msrgb_ignored: ``_msrgb`` files found (never used, not counted as dropped).
        empty_locations: ``split/category/location`` folders with no usable image.
    """

    locations: dict[tuple[str, str], list[FmowImage]] = field(default_factory=dict)
    dropped: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    skipped: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    images_seen: int = 0
    msrgb_ignored: int = 0
    empty_locations: list[str] = field(default_factory=list)

    @property
    def images_usable(self) -> int:
        """Number of usable images."""
        return sum(len(images) for images in self.locations.values())


def jpeg_ok(path: Path, limits: ImageLimits | None = None) -> bool:
    """Cheap integrity check of a JPEG: PIL reads its header and the file ends with the end-of-image marker.

    A truncated download (the common fMoW defect) fails the marker check without decoding the whole image.

    Raises:
        ImageTooLarge: Over the pixel or byte limit (from the header; nothing decoded).
    """
    try:
        with open_image(path, limits=limits) as im:
            if im.format != "JPEG":
                return False
            im.verify()
        with open(path, "rb") as fh:
            fh.seek(-2, 2)
            return fh.read(2) == b"\xff\xd9"
    except ImageTooLarge:
        raise
    except Exception:  # noqa: BLE001 - any failure to read means the image is unusable
        return False


def scan_fmow(
    root: Path | str, splits: list[str], max_image_bytes: int, limits: ImageLimits | None = None
) -> ScanResult:
    """Walk ``{root}/{split}/{category}/{category}_{loc}/`` and keep the usable ``*_rgb.jpg`` + ``*_rgb.json`` images.

    Images over ``max_image_bytes`` are dropped here, before pairing (the paper's rule). Every file that is not used
    is recorded with its reason (see the module docstring for the accounting).

    Args:
        root: The fMoW-rgb root (holding ``train/``, ``val/``, ...).
        splits: fMoW split folders to read; those absent are logged and skipped.
        max_image_bytes: Largest usable JPEG, in bytes.
        limits: The pixel limit (default: :meth:`ImageLimits.from_env`); ``max_image_bytes`` is the byte limit.

    Returns:
        The scan result.

    Raises:
        FileNotFoundError: If none of the splits exists under ``root`` (naming what was expected).
    """
    root = Path(root)
    limits = ImageLimits(max_pixels=(limits or ImageLimits.from_env()).max_pixels, max_bytes=max_image_bytes)
    present = [s for s in splits if (root / s).is_dir()]
    if not present:
        raise FileNotFoundError(
            f"{root} is not an fMoW-rgb tree: expected {' or '.join(f'{root}/{s}/' for s in splits)} holding "
            "{category}/{category}_{loc}/{category}_{loc}_{T}_rgb.jpg + _rgb.json"
        )
    for split in splits:
        if split not in present:
            logger.warning("%s/%s/ does not exist: split %r skipped", root, split, split)
    result = ScanResult()
    for split in present:
        location_dirs = []
        for category_dir in sorted((root / split).iterdir()):
            if not category_dir.is_dir():
                result.skipped["stray_file"].append(str(category_dir))
                continue
            for location_dir in sorted(category_dir.iterdir()):
                if location_dir.is_dir():
                    location_dirs.append(location_dir)
                else:
                    result.skipped["stray_file"].append(str(location_dir))
        for location_dir in tqdm(location_dirs, desc=f"scanning {split}", unit="location", mininterval=2):
            category = location_dir.parent.name
            images = _scan_location(split, category, location_dir, limits, result)
            if images:
                result.locations[(split, location_dir.name)] = images
            else:
                result.empty_locations.append(f"{split}/{category}/{location_dir.name}")
    result.dropped = {reason: result.dropped[reason] for reason in DROP_REASONS if result.dropped.get(reason)}
    result.skipped = {reason: result.skipped[reason] for reason in SKIP_REASONS if result.skipped.get(reason)}
    return result


def _scan_location(split: str, category: str, folder: Path, limits, result: ScanResult) -> list[FmowImage]:
    files = {p.name: p for p in folder.iterdir()}
    images = []
    for name, path in sorted(files.items()):
        if "_msrgb" in name:
            result.msrgb_ignored += 1
        elif name.endswith("_rgb.json"):
            if name.removesuffix(".json") + ".jpg" not in files:
                result.skipped["orphan_json"].append(str(path))
        elif not name.endswith("_rgb.jpg") or not path.is_file():
            result.skipped["stray_file"].append(str(path))
        else:
            result.images_seen += 1
            image, reason, detail = _read_image(split, category, folder, path, files, limits)
            if image is None:
                result.dropped[reason].append(f"{path} ({detail})" if detail else str(path))
            else:
                images.append(image)
    return images


def _read_image(split, category, folder: Path, path: Path, files, limits) -> tuple[FmowImage | None, str, str]:
    """One seen image: ``(image, "", "")`` when usable, else ``(None, reason, detail)``."""
    stem = path.name.removesuffix("_rgb.jpg")
    match = _STEM.match(stem)
    if match is None or match["location"] != folder.name:
        return None, "bad_name", f"expected {folder.name}_<T>_rgb.jpg"
    json_path = files.get(f"{stem}_rgb.json")
    if json_path is None:
        return None, "missing_json", f"no {stem}_rgb.json"
    size = path.stat().st_size
    if size > limits.max_bytes:
        return None, "oversize", f"{size} > {limits.max_bytes} bytes"
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict):
            raise ValueError(f"{json_path.name} is not a JSON object")
    except (OSError, ValueError, RecursionError) as err:  # RecursionError: nesting deeper than the parser goes
        return None, "malformed_json", str(err) or type(err).__name__
    try:
        timestamp = parse_timestamp(meta.get("timestamp"))
    except (ValueError, TypeError) as err:
        return None, "bad_timestamp", str(err)
    try:
        usable = jpeg_ok(path, limits)
    except ImageTooLarge as err:
        return None, "too_many_pixels", err.detail
    if not usable:
        return None, "corrupt_image", "unreadable or truncated JPEG"
    country = meta.get("country_code")
    image = FmowImage(
        split=split,
        category=category,
        location_id=folder.name,
        stem=stem,
        index=int(match["index"]),
        path=path,
        timestamp=timestamp,
        timestamp_text=meta["timestamp"],
        size_bytes=size,
        gsd=_number(meta.get("gsd"), float),
        country_code=country if isinstance(country, str) else None,
        cloud_cover=_number(meta.get("cloud_cover"), int),
    )
    return image, "", ""


def _number(value, kind):
    if isinstance(value, bool):
        return None
    try:
        return kind(value)
    except (TypeError, ValueError, OverflowError):
        return None
