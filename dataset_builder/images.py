"""One limit for every image a user brings: pixels and bytes, checked from the header before anything is decoded.

    GEOLLAVA_MAX_IMAGE_PIXELS=400000000 geollava-predict --model BASE before.tif after.tif

Every entry point that opens an outside image opens it here; an image over a limit is refused with
:class:`ImageTooLarge`, naming the file, its size and the limit. The defaults and why: docs/dataset.md "Image limits".
"""

import contextlib
import io
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageFile


DEFAULT_MAX_PIXELS = 150_000_000
DEFAULT_MAX_BYTES = 1 << 30
PIXELS_ENV = "GEOLLAVA_MAX_IMAGE_PIXELS"
BYTES_ENV = "GEOLLAVA_MAX_IMAGE_BYTES"
#: An axis this short at either end of a GeoTIFF's shape holds bands, not pixels.
MAX_BANDS = 16
_PILLOW_COUNT = re.compile(r"Image size \((\d+) pixels\)")


class ImageTooLarge(ValueError):
    """An image over the pixel or byte limit; ``str()`` names the file, its size and the limit.

    Attributes:
        name: The file (or what stands for it, e.g. ``pair X image 0``).
        detail: The size and the limit, without the name (``"20000 x 20000 = 400,000,000 pixels > 150,000,000"``).
        kind: ``"pixels"`` or ``"bytes"``.
    """

    def __init__(self, name: str, detail: str, kind: str):
        self.name, self.detail, self.kind = name, detail, kind
        limit, env = ("pixel", PIXELS_ENV) if kind == "pixels" else ("byte", BYTES_ENV)
        super().__init__(f"{name}: image too large: {detail} (the {limit} limit; set {env} to change it)")


@dataclass(frozen=True)
class ImageLimits:
    """The largest image accepted.

    Attributes:
        max_pixels: Most pixels (width x height; summed over a clip's frames, over a GeoTIFF's pages).
        max_bytes: Largest file, in bytes.
    """

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES

    def __post_init__(self):
        for name in ("max_pixels", "max_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"image limit {name}={value!r}: must be a positive integer")

    @classmethod
    def from_env(cls, environ=None, **overrides) -> "ImageLimits":
        """The limits from ``GEOLLAVA_MAX_IMAGE_PIXELS`` / ``GEOLLAVA_MAX_IMAGE_BYTES`` (defaults where unset).

        Args:
            environ: The environment to read (default ``os.environ``).
            **overrides: ``max_pixels`` / ``max_bytes`` given by an option; they win over the environment.

        Raises:
            ValueError: Naming the variable, if it is not a positive integer.
        """
        environ = os.environ if environ is None else environ
        values = {}
        for name, env in (("max_pixels", PIXELS_ENV), ("max_bytes", BYTES_ENV)):
            text = environ.get(env, "").strip()
            if text:
                try:
                    values[name] = int(text)
                except ValueError:
                    raise ValueError(f"{env}={text!r}: expected a positive integer") from None
                if values[name] < 1:
                    raise ValueError(f"{env}={text!r}: expected a positive integer")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def check_pixels(width: int, height: int, name: str, limits: ImageLimits | None = None, frames: int = 1) -> None:
    """Refuse ``frames`` images of ``width`` x ``height`` over the pixel limit.

    Raises:
        ImageTooLarge: Naming ``name``, the size and the limit.
    """
    limits = limits or ImageLimits.from_env()
    pixels = int(width) * int(height) * int(frames)
    if pixels > limits.max_pixels:
        count = f"{frames} frames of " if frames != 1 else ""
        raise ImageTooLarge(
            name, f"{count}{width} x {height} = {pixels:,} pixels > {limits.max_pixels:,}", kind="pixels"
        )


def check_bytes(size: int, name: str, limits: ImageLimits | None = None) -> None:
    """Refuse a file of ``size`` bytes over the byte limit.

    Raises:
        ImageTooLarge: Naming ``name``, the size and the limit.
    """
    limits = limits or ImageLimits.from_env()
    if size > limits.max_bytes:
        raise ImageTooLarge(name, f"{size:,} bytes > {limits.max_bytes:,}", kind="bytes")


def check_file(path: Path | str, limits: ImageLimits | None = None) -> int:
    """Refuse a file over the byte limit (from ``stat``, nothing read); returns its size.

    Raises:
        ImageTooLarge: Over the limit.
        OSError: If the file cannot be read.
    """
    size = Path(path).stat().st_size
    check_bytes(size, str(path), limits)
    return size


def _align_pillow(limits: ImageLimits) -> None:
    # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that: with ours there, Pillow never speaks first.
    if Image.MAX_IMAGE_PIXELS is not None and limits.max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = limits.max_pixels


@contextlib.contextmanager
def strict_decoding() -> Iterator[None]:
    """Within the block, an image whose data is cut or corrupt raises instead of decoding as grey.

    Pillow's ``ImageFile.LOAD_TRUNCATED_IMAGES`` is process-wide and other libraries set it (importing lmms-eval
    does); a corrupt view must still be dropped and reported, so the flag is off here and restored after.
    """
    before = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before


def open_image(
    source: Path | str | bytes | IO[bytes], name: str | None = None, limits: ImageLimits | None = None
) -> Image.Image:
    """Open an image with Pillow (header only, lazy) after checking its bytes and its pixels against the limits.

    Use it as Pillow's ``Image.open``: ``with open_image(path) as im: ...``. What Pillow raises for a file it cannot
    read (``UnidentifiedImageError``, ``OSError``, ...) is left to the caller, who knows what the file was for.

    Args:
        source: A path, the file's bytes, or a binary file object.
        name: How to name the image in a message (default: the path, or ``"image"``).
        limits: The limits (default: :meth:`ImageLimits.from_env`).

    Returns:
        The opened image; nothing is decoded yet.

    Raises:
        ImageTooLarge: Over the byte or the pixel limit (Pillow's own bomb error included).
    """
    limits = limits or ImageLimits.from_env()
    if isinstance(source, bytes | bytearray | memoryview):
        name = name or "image"
        check_bytes(len(source), name, limits)
        source = io.BytesIO(source)
    elif isinstance(source, str | os.PathLike):
        name = name or str(source)
        check_file(source, limits)
    else:
        name = name or "image"
    _align_pillow(limits)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(source)
    except Image.DecompressionBombError as err:
        # Pillow refuses past twice its threshold before the size is known to us; its message holds the count
        found = _PILLOW_COUNT.search(str(err))
        pixels = f"{int(found[1]):,} pixels" if found else "more pixels than Pillow allows"
        raise ImageTooLarge(name, f"{pixels} > {limits.max_pixels:,}", kind="pixels") from err
    try:
        check_pixels(*image.size, name, limits)
    except ImageTooLarge:
        image.close()
        raise
    return image


def tiff_pixels(shape: tuple[int, ...]) -> int:
    """Pixels in a TIFF series of ``shape``: every axis but a band axis (at most :data:`MAX_BANDS`) at either end."""
    dims = [int(d) for d in shape]
    if len(dims) >= 3 and dims[-1] <= MAX_BANDS:
        dims = dims[:-1]
    elif len(dims) >= 3 and dims[0] <= MAX_BANDS:
        dims = dims[1:]
    return int(np.prod(dims, dtype=object)) if dims else 0


def check_tiff(path: Path | str, limits: ImageLimits | None = None) -> tuple[int, ...]:
    """Check a TIFF/GeoTIFF against the limits from its tags (no pixel data is read); returns its shape.

    Raises:
        ImageTooLarge: Over the byte or the pixel limit.
        ValueError: Naming the file, if its header cannot be read.
    """
    import tifffile  # only GeoTIFF inputs need it

    limits = limits or ImageLimits.from_env()
    check_file(path, limits)
    try:
        with tifffile.TiffFile(path) as tif:
            shape = tuple(tif.series[0].shape)
    except Exception as err:  # tifffile raises many types for a corrupt header; all mean "not readable"
        raise ValueError(f"{path}: not a readable TIFF/GeoTIFF ({type(err).__name__}: {err})") from err
    pixels = tiff_pixels(shape)
    if pixels > limits.max_pixels:
        raise ImageTooLarge(str(path), f"shape {shape} = {pixels:,} pixels > {limits.max_pixels:,}", kind="pixels")
    return shape
