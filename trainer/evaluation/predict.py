"""Describe what changed between two images of one place: ``geollava-predict``.

    geollava-predict --model outputs/quickstart/base --adapter outputs/quickstart/adapter before.png after.tif

Three or more images in time order (``--dates`` optional) are asked with the ``sequences`` prompt.

``--device auto`` (the default) runs on the first CUDA device in bf16 when there is one, else on the CPU.

Inputs are JPEG, PNG or 3-band GeoTIFF (any sample type, scaled to 8 bits); anything else is refused with a message
naming the file. ``--batch pairs.csv`` (columns ``before,after`` and optionally ``id``, ``prompt_template``) describes
many pairs, one JSON line each; a bad row is reported and skipped. The Space calls :func:`describe_pair`, so both
give the same text for the same pair.
"""

import csv
import json
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm
from transformers import HfArgumentParser

from dataset_builder.images import ImageTooLarge, check_tiff, open_image
from dataset_builder.prompts import PROMPT_TEMPLATES, SEQUENCE_QUESTION
from trainer.evaluation.generation import generate_batch
from trainer.models.device import DEVICE_CHOICES, resolve_device, resolve_dtype
from trainer.models.families import frame_dates
from trainer.models.loading import load_for_inference


logger = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 256
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    data = array.astype(np.float64)
    finite = np.isfinite(data)
    if not finite.any():
        raise ValueError("the image has no finite pixel value")
    # One scale for all bands (global min..max), so the colour balance between bands is kept.
    lo, hi = float(data[finite].min()), float(data[finite].max())
    scaled = (data - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(data)
    return np.clip(np.nan_to_num(scaled, nan=0.0), 0, 255).round().astype(np.uint8)


def _read_tiff(path: Path) -> Image.Image:
    import tifffile

    try:
        array = tifffile.imread(path)
    except Exception as err:  # tifffile raises many types for corrupt files; report them all the same way
        raise ValueError(f"{path}: not a readable TIFF/GeoTIFF ({type(err).__name__}: {err})") from err
    array = np.squeeze(np.asarray(array))
    if array.size == 0:
        raise ValueError(f"{path}: not a readable TIFF/GeoTIFF (no image data)")
    if array.ndim == 2:
        raise ValueError(f"{path}: GeoTIFF has 1 band; a 3-band RGB image is needed")
    if array.ndim != 3:
        raise ValueError(f"{path}: GeoTIFF of shape {array.shape} is not a single 3-band image")
    if array.shape[-1] <= 16 and array.shape[0] > 16:
        bands_last = array  # (H, W, bands)
    elif array.shape[0] <= 16:
        bands_last = np.moveaxis(array, 0, -1)  # planar (bands, H, W)
    else:
        raise ValueError(f"{path}: cannot tell the band axis of a GeoTIFF of shape {array.shape}")
    bands = bands_last.shape[-1]
    if bands != 3:
        raise ValueError(f"{path}: GeoTIFF has {bands} bands; a 3-band RGB image is needed (select 3 bands first)")
    return Image.fromarray(_to_uint8(bands_last), mode="RGB")


def read_image(path: str | Path) -> Image.Image:
    """Read a JPEG, PNG or 3-band GeoTIFF as an RGB image.

    Raises:
        ValueError: Naming the file, for a missing, unreadable or unsupported file, or a GeoTIFF without 3 bands;
            :class:`dataset_builder.images.ImageTooLarge` (a ``ValueError``) over the pixel or byte limit.
    """
    path = Path(path)
    try:
        if not path.is_file():
            raise ValueError(f"{path}: no such file")
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as err:  # a name too long, no permission, ...
        raise ValueError(f"{path}: cannot be read ({err.strerror or err})") from err
    if head in _TIFF_MAGIC:
        check_tiff(path)  # the pixel and byte limits (dataset_builder.images), from the tags
        return _read_tiff(path)
    try:
        with open_image(path) as image:
            kind = image.format
            if kind in ("JPEG", "PNG"):
                return image.convert("RGB")
    except ImageTooLarge:
        raise
    except Exception as err:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError, ... for a corrupt file
        raise ValueError(f"{path}: not a readable image (JPEG, PNG or 3-band GeoTIFF expected)") from err
    raise ValueError(f"{path}: {kind} images are not supported; use JPEG, PNG or a 3-band GeoTIFF")


def _as_image(value) -> Image.Image:
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, np.ndarray):
        return Image.fromarray(_to_uint8(value)).convert("RGB")
    return read_image(value)


def describe_pairs(
    model,
    processor,
    family,
    pairs: list[tuple],
    template_ids: list[int] | int = 0,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> list[str]:
    """Describe several (before, after) pairs in one batch; see :func:`describe_pair`."""
    ids = [template_ids] * len(pairs) if isinstance(template_ids, int) else list(template_ids)
    for k in ids:
        if not 0 <= k < len(PROMPT_TEMPLATES):
            raise ValueError(f"template_id must be in 0..{len(PROMPT_TEMPLATES) - 1}, got {k}")
    frames = [[_as_image(before), _as_image(after)] for before, after in pairs]
    questions = [PROMPT_TEMPLATES[k] for k in ids]
    return generate_batch(model, processor, family, questions, frames, max_new_tokens=max_new_tokens)


def describe_pair(
    model,
    processor,
    family,
    before,
    after,
    template_id: int = 0,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> str:
    """Describe what changed between two images of one place (greedy decoding, the training prompt format).

    Args:
        model: From :func:`trainer.models.loading.load_for_inference`.
        processor: Its processor.
        family: Its family.
        before: The earlier image (PIL image, ``(H, W, 3)`` array, or a JPEG/PNG/GeoTIFF path).
        after: The later image (same forms).
        template_id: Which of the paper's six prompt templates to ask with.
        max_new_tokens: Generation budget.

    Returns:
        The model's description.
    """
    return describe_pairs(model, processor, family, [(before, after)], template_id, max_new_tokens)[0]


def describe_sequence(
    model,
    processor,
    family,
    frames: list,
    dates: list[str] | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> str:
    """Describe how one place changed over images in time order, asked as a ``sequences`` row is.

    Args:
        model: From :func:`trainer.models.loading.load_for_inference`.
        processor: Its processor.
        family: Its family.
        frames: The images in time order (PIL images, ``(H, W, 3)`` arrays, or JPEG/PNG/GeoTIFF paths).
        dates: Their ISO 8601 dates, one per image (the prompt gives them), or ``None`` (frames numbered only).
        max_new_tokens: Generation budget.

    Returns:
        The model's description.
    """
    images = [_as_image(frame) for frame in frames]
    days = None if dates is None else [frame_dates(dates, len(images))]
    return generate_batch(model, processor, family, [SEQUENCE_QUESTION], [images], max_new_tokens, dates=days)[0]


@dataclass
class PredictConfig:
    """Options of ``geollava-predict`` (the BEFORE and AFTER images, or 3 or more in time order, are positional)."""

    model: str = field(metadata={"help": "Base model folder or Hub id."})
    adapter: str | None = field(default=None, metadata={"help": "Adapter folder or Hub repo id (none: base model)."})
    prompt_template: int = field(default=0, metadata={"help": "Prompt template index, 0..5 (the paper's six)."})
    max_new_tokens: int = field(default=DEFAULT_MAX_NEW_TOKENS, metadata={"help": "Generation budget."})
    load_in_4bit: bool = field(default=False, metadata={"help": "Quantize the base model to NF4 (bitsandbytes)."})
    device: str = field(
        default="auto", metadata={"help": f"Where the model runs: {DEVICE_CHOICES} (auto: CUDA when available)."}
    )
    dtype: str | None = field(
        default=None, metadata={"help": "Model dtype, e.g. 'float32' (default: bf16 on CUDA, the checkpoint's on CPU)"}
    )
    batch: str | None = field(
        default=None, metadata={"help": "CSV of pairs (columns before, after; optional id, prompt_template)."}
    )
    batch_size: int = field(default=8, metadata={"help": "Pairs per generation batch with --batch."})
    out: str | None = field(default=None, metadata={"help": "With --batch: write JSON lines here, not to stdout."})
    dates: str | None = field(
        default=None,
        metadata={"help": "With 3 or more images: their dates, comma-separated ISO 8601 (2016-03-02,2017-08-15,...)."},
    )

    def __post_init__(self):
        if not 0 <= self.prompt_template < len(PROMPT_TEMPLATES):
            raise ValueError(
                f"--prompt_template must be in 0..{len(PROMPT_TEMPLATES) - 1}, got {self.prompt_template}"
            )
        if self.max_new_tokens < 1:
            raise ValueError(f"--max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ValueError(f"--batch_size must be >= 1, got {self.batch_size}")
        if self.batch is not None and not Path(self.batch).is_file():
            raise ValueError(f"--batch: no such file: {self.batch!r}")
        resolve_dtype(self.dtype, resolve_device(self.device))  # a bad --device or --dtype fails here, before loading


def _csv_rows(path, f) -> Iterator[dict]:
    """The rows of a ``--batch`` CSV as dicts, after checking its columns.

    Raises:
        ValueError: Naming the file, if it has no ``before``/``after`` columns or is not a readable UTF-8 CSV (bad
            bytes, a field over ``csv``'s limit).
    """
    reader = csv.DictReader(f)
    try:
        missing = {"before", "after"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}; found {reader.fieldnames}")
        yield from reader
    except (UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"{path}: not a readable UTF-8 CSV ({err})") from err


def read_batch_csv(path: str | Path, default_template: int = 0) -> tuple[list[dict], list[dict]]:
    """Rows of a ``--batch`` CSV, checked; returns ``(good rows, skipped rows with reasons)``.

    Raises:
        ValueError: If the CSV has no ``before``/``after`` columns or is not a readable UTF-8 CSV (naming the file).
    """
    good, skipped = [], []
    with open(path, newline="", encoding="utf-8") as f:
        base = Path(path).parent
        for line_no, row in enumerate(_csv_rows(path, f), 2):
            row_id = row.get("id") or f"line{line_no}"
            try:
                template = int(row.get("prompt_template") or default_template)
                if not 0 <= template < len(PROMPT_TEMPLATES):
                    raise ValueError(f"prompt_template must be in 0..{len(PROMPT_TEMPLATES) - 1}, got {template}")
                images = []
                for column in ("before", "after"):
                    if not row[column]:
                        raise ValueError(f"empty '{column}'")
                    image_path = Path(row[column])
                    images.append(read_image(image_path if image_path.is_absolute() else base / image_path))
            except ValueError as err:
                logger.warning("%s line %d (id %s): skipped: %s", path, line_no, row_id, err)
                skipped.append({"line": line_no, "id": row_id, "reason": str(err)})
                continue
            good.append(
                {"id": row_id, "before": row["before"], "after": row["after"], "template": template, "images": images}
            )
    return good, skipped


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``geollava-predict``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    parser = HfArgumentParser(
        PredictConfig,
        usage="geollava-predict --model BASE [--adapter ADAPTER] [options] BEFORE AFTER [MORE ...] | --batch FILE.csv",
        description="Describe what changed between two images (JPEG, PNG or 3-band GeoTIFF) of one place.",
    )
    try:
        config, images = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
        unknown = [a for a in images if a.startswith("--")]
        if unknown:
            raise ValueError(f"unknown option(s) {unknown}")
        if config.batch is None and len(images) < 2:
            raise ValueError(
                f"give two images, BEFORE and AFTER, 3 or more in time order, or --batch FILE.csv; got {len(images)}"
            )
        if config.batch is not None and images:
            raise ValueError(f"give either --batch or two images, not both (got images {images})")
        dates = None if config.dates is None else config.dates.split(",")
        if dates is not None and len(images) < 3:
            raise ValueError("--dates: give it with 3 or more images (a sequence); a pair is asked without dates")
        if dates is not None:
            frame_dates(dates, len(images))
        if config.batch is None:
            frames = [read_image(p) for p in images]
            rows, skipped = [], []
        else:
            rows, skipped = read_batch_csv(config.batch, config.prompt_template)
            if not rows:
                raise ValueError(f"{config.batch}: no usable row ({len(skipped)} skipped)")
    except ValueError as err:
        print(f"geollava-predict: error: {err}", file=sys.stderr)
        return 2

    try:
        model, processor, family = load_for_inference(
            config.model, config.adapter, load_in_4bit=config.load_in_4bit, dtype=config.dtype, device=config.device
        )
    except (OSError, ValueError) as err:
        print(f"geollava-predict: error: cannot load {config.model!r} + {config.adapter!r}: {err}", file=sys.stderr)
        return 1
    if config.batch is None and len(frames) > 2:
        print(describe_sequence(model, processor, family, frames, dates, config.max_new_tokens))
        return 0
    if config.batch is None:
        print(describe_pair(model, processor, family, *frames, config.prompt_template, config.max_new_tokens))
        return 0

    sink = open(config.out, "w", encoding="utf-8") if config.out else sys.stdout  # noqa: SIM115
    try:
        with tqdm(total=len(rows), unit="pair", desc="describing", file=sys.stderr) as bar:
            for start in range(0, len(rows), config.batch_size):
                chunk = rows[start : start + config.batch_size]
                texts = describe_pairs(
                    model,
                    processor,
                    family,
                    [tuple(r["images"]) for r in chunk],
                    [r["template"] for r in chunk],
                    config.max_new_tokens,
                )
                for row, text in zip(chunk, texts, strict=True):
                    record = {"id": row["id"], "before": row["before"], "after": row["after"], "prediction": text}
                    sink.write(json.dumps(record, ensure_ascii=False) + "\n")
                sink.flush()
                bar.update(len(chunk))
    finally:
        if sink is not sys.stdout:
            sink.close()
    if skipped:
        print(f"geollava-predict: {len(skipped)} row(s) skipped: {skipped}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
