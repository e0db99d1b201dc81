"""Write a synthetic fMoW-rgb tree whose true changes are known.

    geollava-synth --out outputs/synth-fmow --locations 200 --seed 0

The tree is byte-for-byte in the fMoW-rgb layout (``{split}/{category}/{category}_{loc}/{category}_{loc}_{T}_rgb.jpg``
+ ``.json`` with the real metadata fields), so every later stage reads it with the same code as real fMoW. Ground
truth is written beside the tree, never inside the fMoW files: ``groundtruth/{split}.jsonl``, one line per location
(docs/CONTRACTS.md §1). ``--format levir-cc`` writes the LEVIR-CC layout instead
(``dataset_builder.synthetic.levircc_synth``).
"""

import io
import json
import logging
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm
from transformers import HfArgumentParser

from dataset_builder.atomic import write_bytes
from dataset_builder.categories import FMOW_CATEGORIES
from dataset_builder.synthetic.levircc_synth import generate_levircc
from dataset_builder.synthetic.render import render
from dataset_builder.synthetic.scenes import (
    apply_change,
    describe_objects,
    diff_scenes,
    possible_changes,
    random_scene,
)


logger = logging.getLogger(__name__)

COUNTRIES = ("USA", "FRA", "BRA", "IND", "CHN", "EGY", "AUS", "KEN", "DEU", "MEX", "ARE", "IDN")
OVERSIZE_BYTES = 1_000_000
#: Most dates ``--min_dates`` asks for: geollava-build's default ``--max_frames`` (their gaps may end past 2017).
MAX_DATES = 8


@dataclass
class SynthConfig:
    """Command-line options of ``geollava-synth``."""

    out: str = field(metadata={"help": "Folder to write the tree into."})
    locations: int = field(default=50, metadata={"help": "Number of locations (fMoW format)."})
    seed: int = field(default=0, metadata={"help": "Seed: the same seed writes the same bytes."})
    image_size: int = field(
        default=256, metadata={"help": "Base image side in pixels (sizes vary by up to 15 percent per date)."}
    )
    splits: str = field(default="train,val", metadata={"help": "Comma-separated fMoW splits to write."})
    oversize_fraction: float = field(
        default=0.05,
        metadata={"help": "Fraction of images written larger than 1,000,000 bytes (for the size filter)."},
    )
    format: str = field(default="fmow", metadata={"help": "'fmow' or 'levir-cc'."})
    pairs: int = field(default=60, metadata={"help": "Number of pairs (LEVIR-CC format)."})
    two_dates: bool = field(
        default=False,
        metadata={
            "help": "Give every location exactly two dates 380-1,100 days apart: one pair each, with one change or "
            "none (a simpler task than fMoW's 1-6 dates, whose pairs can span several changes; fMoW format)."
        },
    )
    min_dates: int = field(
        default=1,
        metadata={
            "help": "Give every location at least this many dates (1-8): the number drawn as usual is raised to it, "
            "e.g. 3 for a tree whose every location makes a sequences row (fMoW format)."
        },
    )

    def __post_init__(self):
        if self.format not in ("fmow", "levir-cc"):
            raise ValueError(f"--format {self.format!r}: expected 'fmow' or 'levir-cc'")
        if self.locations < 1:
            raise ValueError(f"--locations {self.locations}: must be at least 1")
        if not 32 <= self.image_size <= 4096:
            raise ValueError(f"--image_size {self.image_size}: must be in 32..4096")
        if not 0.0 <= self.oversize_fraction <= 1.0:
            raise ValueError(f"--oversize_fraction {self.oversize_fraction}: must be in [0, 1]")
        names = self.split_names
        if not names or len(set(names)) != len(names) or any("/" in name for name in names):
            raise ValueError(f"--splits {self.splits!r}: name at least one split, each once, no '/'")
        if self.format == "fmow" and self.locations < len(names):
            raise ValueError(f"--locations {self.locations}: need at least one location per split ({len(names)})")
        if self.two_dates and self.format != "fmow":
            raise ValueError(f"--two_dates applies to --format fmow, not {self.format!r}")
        if not 1 <= self.min_dates <= MAX_DATES:
            raise ValueError(f"--min_dates {self.min_dates}: must be in 1..{MAX_DATES}")
        if self.min_dates > 1 and self.format != "fmow":
            raise ValueError(f"--min_dates applies to --format fmow, not {self.format!r}")
        if self.two_dates and self.min_dates > 2:
            raise ValueError(f"--min_dates {self.min_dates} with --two_dates: a location then has exactly 2 dates")
        if self.pairs < 3:
            raise ValueError(f"--pairs {self.pairs}: need at least 3 (one pair per LEVIR-CC split)")

    @property
    def split_names(self) -> list[str]:
        """The split names of ``--splits``, in order."""
        return [name.strip() for name in self.splits.split(",") if name.strip()]


def fmow_timestamp(moment: datetime, rng: np.random.Generator) -> str:
    """FMoW's ISO form: ``2012-04-02T10:32:22Z``, sometimes with milliseconds (``...23.244Z``)."""
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if rng.random() < 0.3:
        text += f".{int(rng.integers(0, 1000)):03d}"
    return text + "Z"


def _dates(n: int, rng: np.random.Generator, over_a_year: bool = False) -> list[datetime]:
    """``n`` acquisition dates in 2002-2017.

    About a quarter of the gaps are under a year (chains break), some within a day of 365 days (the pairing rule's
    edge: 364 fails, 365 and 366 pass), the rest one to three years; with ``over_a_year`` every gap is the last kind.
    """
    gaps = []
    for _ in range(n - 1):
        u = rng.random()
        if over_a_year:  # after the draw, as n in write_location: a seed keeps writing the measured tree
            u = 1.0
        if u < 0.25:
            days = int(rng.integers(45, 330))
        elif u < 0.35:
            days = int(rng.choice([364, 365, 366]))
        else:
            days = int(rng.integers(380, 1100))
        gaps.append(timedelta(days=days, seconds=int(rng.integers(0, 86400))))
    first, last = datetime(2002, 1, 1, tzinfo=timezone.utc), datetime(2017, 12, 31, tzinfo=timezone.utc)
    room = (last - first - sum(gaps, timedelta())).total_seconds()
    moment = first + timedelta(seconds=int(rng.integers(0, max(int(room), 1))))
    dates = [moment]
    for gap in gaps:
        moment += gap
        dates.append(moment)
    return dates


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality, subsampling=0 if quality >= 95 else 2, optimize=False)
    return buf.getvalue()


def _oversize(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, bytes]:
    """A larger, high-detail version of ``image`` whose JPEG is over 1,000,000 bytes (fine grain at quality 100).

    Real oversize fMoW images are large scenes; this keeps the aspect ratio and grows until the size passes.
    """
    scale = 1024 / max(image.size)
    while True:
        size = (int(image.width * scale), int(image.height * scale))
        big = np.asarray(image.resize(size, Image.Resampling.BILINEAR), dtype=np.int16)
        big = np.clip(big + rng.integers(-24, 25, size=big.shape), 0, 255).astype(np.uint8)
        data = _jpeg(Image.fromarray(big), 100)
        if len(data) > OVERSIZE_BYTES:
            return Image.fromarray(big), data
        scale *= 1.25


def write_location(
    root: Path, split: str, category: str, loc: int, cfg: SynthConfig, rng: np.random.Generator
) -> dict:
    """Write one location's images and metadata; return its ground-truth record."""
    n = int(rng.choice([1, 2, 2, 3, 3, 4, 4, 5, 6]))
    if cfg.two_dates:
        n = 2  # drawn all the same: a seed writes the tree docs/training.md measured this option on
    n = max(n, cfg.min_dates)  # after the draw too: without the option a seed keeps writing the same tree
    dates = _dates(n, rng, over_a_year=cfg.two_dates)
    scenes = [random_scene(rng)]
    for _ in range(n - 1):
        kinds = possible_changes(scenes[-1])
        if rng.random() < 0.2 or not kinds:  # nothing happens between these two dates
            scenes.append(scenes[-1])
        else:
            scenes.append(apply_change(scenes[-1], str(rng.choice(kinds)), rng)[0])
    indices = [int(i) for i in rng.permutation(n)]  # fMoW's T is not time order
    if n > 1 and indices == sorted(indices):
        indices = indices[::-1]
    location_id = f"{category}_{loc}"
    folder = root / split / category / location_id
    folder.mkdir(parents=True, exist_ok=True)
    country, utm = (
        str(rng.choice(COUNTRIES)),
        f"{int(rng.integers(1, 61))}{'CDEFGHJKLMNPQRSTUVWX'[int(rng.integers(20))]}",
    )
    gsd = float(np.round(rng.uniform(0.3, 1.8), 3))
    images, stems = {}, []
    for t, (scene, moment) in enumerate(zip(scenes, dates, strict=True)):
        stem = f"{location_id}_{indices[t]}"
        stems.append(stem)
        w = int(cfg.image_size * rng.uniform(0.85, 1.15)) // 2 * 2
        h = int(cfg.image_size * rng.uniform(0.85, 1.15)) // 2 * 2
        season = ("winter", "spring", "summer", "autumn")[(moment.month % 12) // 3]
        image = render(scene, w, h, rng, season=season)
        if rng.random() < cfg.oversize_fraction:
            image, data = _oversize(image, rng)
        else:
            data = _jpeg(image, 90)
        timestamp = fmow_timestamp(moment, rng)
        bw, bh = image.width // 3, image.height // 3
        meta = {
            "img_filename": f"{stem}_rgb.tif",
            "img_width": image.width,
            "img_height": image.height,
            "gsd": gsd,
            "utm": utm,
            "country_code": country,
            "cloud_cover": int(rng.integers(0, 20)),
            "timestamp": timestamp,
            "scan_direction": str(rng.choice(["Forward", "Reverse"])),
            "off_nadir_angle_dbl": float(np.round(rng.uniform(5, 30), 3)),
            "target_azimuth_dbl": float(np.round(rng.uniform(0, 360), 3)),
            "sun_azimuth_dbl": float(np.round(rng.uniform(90, 200), 3)),
            "sun_elevation_dbl": float(np.round(rng.uniform(20, 70), 3)),
            "approximate_wavelengths": [661, 545, 477],
            "bounding_boxes": [{"ID": int(rng.integers(1, 10**6)), "box": [bw, bh, bw, bh], "category": category}],
        }
        write_bytes(folder / f"{stem}_rgb.jpg", data)
        write_bytes(folder / f"{stem}_rgb.json", json.dumps(meta, indent=1).encode())
        images[stem] = {"timestamp": timestamp, "objects": describe_objects(scene)}
    pairs = {}
    for i in range(n):
        for j in range(i + 1, n):
            pairs[f"{stems[i]}-{stems[j]}"] = {"changes": diff_scenes(scenes[i], scenes[j])}
    return {"location_id": location_id, "split": split, "category": category, "images": images, "pairs": pairs}


def generate_tree(cfg: SynthConfig) -> dict:
    """Write the whole tree and its ground truth; return counts."""
    root = Path(cfg.out)
    rng = np.random.default_rng(cfg.seed)
    splits = cfg.split_names
    # ~80 % of the locations in the first split, the rest spread over the others; at least one each.
    if len(splits) == 1:
        plan = {splits[0]: cfg.locations}
    else:
        rest = max(len(splits) - 1, round(cfg.locations * 0.2))
        plan = {splits[0]: max(1, cfg.locations - rest)}
        for k, split in enumerate(splits[1:]):
            plan[split] = rest // (len(splits) - 1) + (1 if k < rest % (len(splits) - 1) else 0)
    (root / "groundtruth").mkdir(parents=True, exist_ok=True)
    counts = {"locations": {}, "images": 0, "pairs": 0}
    per_category: dict[str, int] = {}
    with tqdm(total=cfg.locations, desc="synthetic locations", unit="loc", disable=None) as bar:
        for split, n in plan.items():
            lines = []
            for _ in range(n):
                category = str(FMOW_CATEGORIES[int(rng.integers(len(FMOW_CATEGORIES)))])
                loc = per_category.get(category, 0)
                per_category[category] = loc + 1
                record = write_location(root, split, category, loc, cfg, rng)
                lines.append(json.dumps(record, sort_keys=True))
                counts["images"] += len(record["images"])
                counts["pairs"] += len(record["pairs"])
                bar.update()
            write_bytes(root / "groundtruth" / f"{split}.jsonl", ("\n".join(lines) + "\n").encode())
            counts["locations"][split] = n
    return counts


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``geollava-synth``."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    (cfg,) = HfArgumentParser(SynthConfig).parse_args_into_dataclasses(args=argv)
    if cfg.format == "levir-cc":
        counts = generate_levircc(Path(cfg.out), cfg.pairs, cfg.seed)
        print(f"wrote a synthetic LEVIR-CC tree to {cfg.out}: {counts}")
        return 0
    counts = generate_tree(cfg)
    print(
        f"wrote a synthetic fMoW tree to {cfg.out}: {sum(counts['locations'].values())} locations "
        f"{counts['locations']}, {counts['images']} images, ground truth for {counts['pairs']} ordered pairs"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
