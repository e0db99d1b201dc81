"""Frames and clips: decode an fMoW image, bring both dates to one size, encode JPEG, write/read 2-frame mp4s.

How frames are brought to one size: each image's shorter side is resized to ``size`` (bicubic), then the centre
``size`` x ``size`` square is cropped. Images of one location differ in size but cover the same place centred on the
same site, so both frames end up the same size and aligned on the centre.
"""

import io
from pathlib import Path

import numpy as np
from PIL import Image

from dataset_builder.atomic import atomic_path
from dataset_builder.images import ImageLimits, check_file, check_pixels, open_image, strict_decoding


def load_frame(path: Path | str, size: int, limits: ImageLimits | None = None) -> Image.Image:
    """Decode an image and return its ``size`` x ``size`` RGB frame (shorter side resized, centre crop).

    Args:
        path: An image file (fMoW ``*_rgb.jpg``).
        size: Side of the square frame, in pixels.
        limits: Pixel and byte limits, checked before decoding (default: :meth:`ImageLimits.from_env`).

    Returns:
        The RGB frame.

    Raises:
        ImageTooLarge: Over a limit (nothing decoded).
    """
    with open_image(path, limits=limits) as im, strict_decoding():
        im.draft("RGB", (size, size))  # JPEG DCT scaling: decode big images at a fraction of the cost
        im = im.convert("RGB")
        scale = size / min(im.size)
        w, h = max(size, round(im.width * scale)), max(size, round(im.height * scale))
        im = im.resize((w, h), Image.Resampling.BICUBIC)
        left, top = (w - size) // 2, (h - size) // 2
        return im.crop((left, top, left + size, top + size))


def encode_jpeg(image: Image.Image, quality: int = 95) -> bytes:
    """JPEG bytes of a frame (the dataset stores frames as JPEG, not the PNG `datasets` would choose)."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_mp4(frames: list[Image.Image], path: Path | str, fps: int = 1) -> None:
    """Write frames as an H.264 mp4 (yuv420p, one frame per second), atomically.

    Args:
        frames: Frames of one size, earlier first; an odd width or height loses its last pixel row or column
            (H.264 in yuv420p needs even dimensions).
        path: The ``.mp4`` to write.
        fps: Frames per second.
    """
    import av  # PyAV only where a clip is written or read: a build with --no-videos runs without it

    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames[0].width // 2 * 2, frames[0].height // 2 * 2
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for frame in frames:
            array = np.asarray(frame.convert("RGB"))[: stream.height, : stream.width]
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def clip_ends(path: Path | str, limits: ImageLimits | None = None) -> tuple[list[Image.Image], int]:
    """The first and last decoded frames of a clip and how many frames it has; only those two are kept in memory.

    The pixel limit bounds the whole clip (every decoded frame's pixels summed), so a small file of many frames is
    refused like a large image: from the stream's header when it states its frame count, else as soon as the
    running sum passes the limit.

    Args:
        path: A video file.
        limits: Pixel and byte limits (default: :meth:`ImageLimits.from_env`).

    Returns:
        ``([first, last], n)``; ``([first], 1)`` or ``([], 0)`` for shorter clips.

    Raises:
        ImageTooLarge: Over the byte or pixel limit.
        ValueError: If the file holds no video stream.
        av.error.FFmpegError: If FFmpeg cannot read the file.
    """
    import av  # see write_mp4

    limits = limits or ImageLimits.from_env()
    name = str(path)
    check_file(path, limits)
    with av.open(name) as container:
        if not container.streams.video:
            raise ValueError(f"{name}: no video stream")
        stream = container.streams.video[0]
        context = stream.codec_context  # None where FFmpeg has no decoder for the stream
        if context is None:
            raise ValueError(f"{name}: FFmpeg has no decoder for its video stream")
        check_pixels(context.width, context.height, name, limits, frames=max(1, stream.frames))
        first = last = None
        n = pixels = 0
        for frame in container.decode(stream):
            n, pixels = n + 1, pixels + frame.width * frame.height
            if pixels > limits.max_pixels:
                check_pixels(frame.width, frame.height, name, limits, frames=n)  # raises: says how far it got
            if first is None:
                first = frame.to_image()
            last = frame
    frames = [] if first is None else [first] if n == 1 else [first, last.to_image()]
    return frames, n


def read_mp4(path: Path | str) -> list[Image.Image]:
    """The first and last decoded frames of a clip, as the official GeoLLaVA reader takes them.

    Raises:
        ValueError: If the clip has fewer than 2 frames (:class:`ImageTooLarge` over a limit).
    """
    frames, n = clip_ends(path)
    if n < 2:
        raise ValueError(f"{path}: a clip needs at least 2 frames, found {n}")
    return frames
