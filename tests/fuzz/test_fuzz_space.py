"""The Space's uploads (images, GeoTIFFs, clips), fuzzed through the functions the Space calls: two frames (perhaps
resized, with a note) or an InputError naming the upload; never an exception."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from spaces_demo.app import InputError, gather_frames
from tests.fuzz.hostile import (
    clip_bytes,
    jpeg_bomb,
    jpeg_bytes,
    png_bytes,
    png_header_bomb,
    tiff_bomb,
    tiff_bytes,
)
from tests.fuzz.outcomes import fuzz_settings, record
from tests.fuzz.strategies import mutated


PARSER = "Space uploads (images, GeoTIFFs, clips)"
SEEDS = [
    png_bytes(0),
    png_bytes(1, mode="RGBA"),
    png_bytes(2, mode="L"),
    jpeg_bytes(3),
    tiff_bytes(4),
    tiff_bytes(5, dtype=np.float32, planar=True),
    tiff_bytes(6, dtype=np.uint8)[:200],
]
#: a side small enough to decode in a test, or a product far over the pixel limit
SIDES = st.sampled_from([1, 7, 64, 3000]) | st.integers(200_000, 2**31 - 1)
UPLOADS = st.one_of(
    st.sampled_from(SEEDS).flatmap(mutated),
    st.tuples(SIDES, SIDES).map(lambda wh: png_header_bomb(*wh)),
    st.tuples(SIDES.filter(lambda s: s < 65536), SIDES.filter(lambda s: s < 65536)).map(lambda wh: jpeg_bomb(*wh)),
    st.tuples(SIDES.filter(lambda s: s < 65536), SIDES.filter(lambda s: s < 65536)).map(lambda wh: tiff_bomb(*wh)),
    st.none(),
)
#: clips, and what else a user may drop on the clip field (an image, a GeoTIFF)
CLIPS = st.sampled_from([clip_bytes(3), clip_bytes(1), clip_bytes(2, 48), SEEDS[0], SEEDS[3], SEEDS[4]]).flatmap(
    mutated
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("uploads")


def _write(folder, name, data):
    if data is None:
        return None
    (folder / name).write_bytes(data)
    return str(folder / name)


def _outcome(before, after, clip) -> str:
    try:
        frames, notes = gather_frames(before, after, clip)
    except InputError as err:
        named = [v for v in (before, after, clip) if v]
        assert not named or any(f"'{v.rsplit('/', 1)[-1]}'" in str(err) for v in named) or "Please upload" in str(err)
        return "refused: InputError naming the upload"
    assert len(frames) == 2 and all(isinstance(f, Image.Image) for f in frames)
    assert all(max(f.size) <= 2048 for f in frames)
    return "accepted, resized with a note" if notes else "accepted"


@fuzz_settings(PARSER, "images", max_examples=150, deadline_ms=10_000)
@given(before=UPLOADS, after=UPLOADS)
def test_image_uploads(folder, before, after):
    record(PARSER, _outcome(_write(folder, "before.bin", before), _write(folder, "after.bin", after), None))


@fuzz_settings(PARSER, "clips", max_examples=60, deadline_ms=10_000)
@given(clip=CLIPS)
def test_clip_uploads(folder, clip):
    record(PARSER, _outcome(None, None, _write(folder, "clip.mp4", clip)))
