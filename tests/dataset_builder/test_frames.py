import io

import numpy as np
import pytest
from PIL import Image

from dataset_builder.frames import encode_jpeg, load_frame, read_mp4, write_mp4


def _target_image(path, size, seed=0):
    """Noise with a red square of side min(size)/2 at the centre."""
    w, h = size
    array = np.random.default_rng(seed).integers(0, 80, (h, w, 3), dtype=np.uint8)
    s = min(w, h) // 4
    array[h // 2 - s : h // 2 + s, w // 2 - s : w // 2 + s] = (230, 20, 20)
    Image.fromarray(array).save(path, "JPEG", quality=95)
    return path


@pytest.mark.parametrize("size", [(400, 300), (300, 400), (64, 64), (20, 50), (1200, 900)])
def test_every_image_becomes_the_same_square_centred_on_the_site(tmp_path, size):
    frame = load_frame(_target_image(tmp_path / "a.jpg", size), 64)
    assert frame.size == (64, 64) and frame.mode == "RGB"
    array = np.asarray(frame).astype(int)
    # the shorter side is resized to 64, so the centre square covers the middle half: red there, not at the corners
    assert array[32, 32, 0] > 180 and array[32, 32, 1] < 80
    assert array[2, 2, 0] < 150


def test_two_dates_of_different_sizes_give_frames_of_one_size(tmp_path):
    a = load_frame(_target_image(tmp_path / "a.jpg", (500, 380)), 48)
    b = load_frame(_target_image(tmp_path / "b.jpg", (350, 470), seed=1), 48)
    assert a.size == b.size == (48, 48)


def test_frames_are_stored_as_jpeg(tmp_path):
    frame = load_frame(_target_image(tmp_path / "a.jpg", (100, 80)), 32)
    data = encode_jpeg(frame, quality=90)
    assert data[:2] == b"\xff\xd8"
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "JPEG" and im.size == (32, 32)


def test_mp4_round_trip_gives_two_frames_earlier_first(tmp_path):
    black = Image.new("RGB", (64, 48), (10, 10, 10))
    white = Image.new("RGB", (64, 48), (240, 240, 240))
    write_mp4([black, white], tmp_path / "clip.mp4")
    first, last = read_mp4(tmp_path / "clip.mp4")
    assert first.size == last.size == (64, 48)
    assert np.asarray(first).mean() < 40 < 200 < np.asarray(last).mean()
    assert not list(tmp_path.glob(".*.tmp"))


def test_odd_sizes_are_cropped_to_even_for_h264(tmp_path):
    frame = Image.new("RGB", (33, 21), (90, 120, 30))
    write_mp4([frame, frame], tmp_path / "odd.mp4")
    assert [f.size for f in read_mp4(tmp_path / "odd.mp4")] == [(32, 20), (32, 20)]


def test_a_clip_of_one_frame_is_refused(tmp_path):
    write_mp4([Image.new("RGB", (32, 32))], tmp_path / "one.mp4")
    with pytest.raises(ValueError, match="at least 2 frames, found 1"):
        read_mp4(tmp_path / "one.mp4")
