"""Frames and clips: decode an fMoW image, bring both dates to one size, encode JPEG, write/read 2-frame mp4s.

How frames are brought to one size: each image's shorter side is resized to ``size`` (bicubic), then the centre
``size`` x ``size`` square is cropped. Images of one location differ in size but cover the same place centred on the
same site, so both frames end up the same size and aligned on the centre.
"""

import io
from pathlib import Path

import av
import numpy as np
from PIL import Image

from dataset_builder.atomic import atomic_path


def load_frame(path: Path | str, size: int) -> Image.Image:
    """Decode an image and return its ``size`` x ``size`` RGB frame (shorter side resized, centre crop).

    Args:
        path: An image file (fMoW ``*_rgb.jpg``).
        size: Side of the square frame, in pixels.

    Returns:
        The RGB frame.
    """
    with Image.open(path) as im:
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


def read_mp4(path: Path | str) -> list[Image.Image]:
    """The first and last decoded frames of a clip, as the official GeoLLaVA reader takes them.

    Raises:
        ValueError: If the clip has fewer than 2 frames.
    """
    with av.open(str(path)) as container:
        frames = [frame.to_image() for frame in container.decode(video=0)]
    if len(frames) < 2:
        raise ValueError(f"{path}: a clip needs at least 2 frames, found {len(frames)}")
    return [frames[0], frames[-1]]
