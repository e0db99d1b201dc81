"""Hostile inputs made in a few milliseconds: decompression bombs (a header that declares a huge image) and the
small valid files that the fuzz tests corrupt."""

import contextlib
import io
import struct
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import tifffile
from PIL import Image


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_bomb(width: int = 20_000, height: int = 20_000) -> bytes:
    """A real, decodable 1-bit PNG of ``width`` x ``height`` black pixels: 20,000 x 20,000 is a 48 KB file."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    rows_per_block = 1000
    body = [comp.compress(row * rows_per_block) for _ in range(height // rows_per_block)]
    body += [comp.compress(row * (height % rows_per_block)), comp.flush()]
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", b"".join(body))
        + _png_chunk(b"IEND", b"")
    )


def png_bytes(seed: int = 0, size=(24, 16), mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4}.get(mode)
    shape = (size[1], size[0], channels) if channels else (size[1], size[0])
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode=mode).save(buf, "PNG")
    return buf.getvalue()


def jpeg_bytes(seed: int = 0, size=(24, 16)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def jpeg_bomb(width: int = 60_000, height: int = 60_000) -> bytes:
    """A small JPEG whose frame header (SOF0) declares ``width`` x ``height`` (at most 65,535 a side)."""
    data = bytearray(jpeg_bytes(0, (16, 16)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def tiff_bytes(seed: int = 0, size=(24, 16), dtype=np.uint16, planar: bool = False) -> bytes:
    """A 3-band GeoTIFF-like TIFF (bands last, or planar bands first)."""
    rng = np.random.default_rng(seed)
    shape = (3, size[1], size[0]) if planar else (size[1], size[0], 3)
    data = (rng.random(shape) * 1000).astype(dtype)
    buf = io.BytesIO()
    tifffile.imwrite(buf, data, photometric="rgb", planarconfig="separate" if planar else "contig")
    return buf.getvalue()


def tiff_bomb(width: int = 60_000, height: int = 60_000) -> bytes:
    """A small 3-band TIFF whose tags declare ``width`` x ``height`` (the strips stay tiny)."""
    data = bytearray(tiff_bytes(0, (16, 16), np.uint8))
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tif:
        tags = tif.pages[0].tags
        places = [(tags[name].valueoffset, tags[name].dtype) for name in ("ImageWidth", "ImageLength")]
    for (offset, dtype), value in zip(places, (width, height)):
        fmt = "<H" if dtype == 3 else "<I"  # TIFF type 3 = SHORT, 4 = LONG
        data[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    return bytes(data)


def clip_bytes(n_frames: int = 3, size: int = 32) -> bytes:
    """An H.264 mp4 of ``n_frames`` frames of ``size`` x ``size`` (grey levels that differ)."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=1)
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), 40 * i % 256, dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def png_header_bomb(width: int, height: int) -> bytes:
    """A small 8-bit RGB PNG whose header (IHDR, CRC fixed) declares ``width`` x ``height``; its data stays tiny."""
    data = png_bytes(0, (4, 4))
    ihdr = data.index(b"IHDR")
    fields = struct.pack(">II", width, height) + data[ihdr + 12 : ihdr + 17]
    return data[: ihdr - 4] + _png_chunk(b"IHDR", fields) + data[ihdr + 21 :]


@contextlib.contextmanager
def file_with(data: bytes, name: str) -> Iterator[Path]:
    """A file ``name`` holding ``data`` in a fresh temporary folder, removed afterwards."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        yield path
