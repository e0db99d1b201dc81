"""One pixel limit and one byte limit for every image a user brings, checked before decoding, at every entry point.

The bomb: a 48 KB PNG of 20,000 x 20,000 pixels (400 M), through each CLI and the Space's functions.
"""

import json
import re
import warnings

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fmow_fixtures import jpeg_bytes, write_image
from PIL import Image

from dataset_builder.images import (
    DEFAULT_MAX_PIXELS,
    ImageLimits,
    ImageTooLarge,
    check_tiff,
    open_image,
    tiff_pixels,
)
from tests.fuzz.hostile import clip_bytes, jpeg_bomb, png_bomb, png_bytes, png_header_bomb, tiff_bomb, tiff_bytes


LIMIT_TEXT = f"{DEFAULT_MAX_PIXELS:,}"


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    path.write_bytes(png_bomb(20_000, 20_000))
    return path


def _no_traceback(text):
    assert "Traceback" not in text and "DecompressionBomb" not in text, text


def test_the_bomb_is_the_one_of_the_issue(bomb, monkeypatch):
    assert 40_000 < bomb.stat().st_size < 50_000
    with pytest.raises(Image.DecompressionBombError):
        Image.open(bomb)  # what geollava-predict died of
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with Image.open(bomb) as im:
        assert im.size == (20_000, 20_000)


def test_limits_come_from_the_environment_and_bad_values_are_named():
    assert ImageLimits.from_env({}) == ImageLimits(DEFAULT_MAX_PIXELS, 1 << 30)
    env = {"GEOLLAVA_MAX_IMAGE_PIXELS": "1000", "GEOLLAVA_MAX_IMAGE_BYTES": " 2_000 "}
    assert ImageLimits.from_env(env) == ImageLimits(1000, 2000)
    assert ImageLimits.from_env(env, max_bytes=5).max_bytes == 5  # an option wins over the environment
    for value in ("abc", "0", "-3", "1.5e8"):
        with pytest.raises(ValueError, match=f"GEOLLAVA_MAX_IMAGE_PIXELS='{re.escape(value)}'"):
            ImageLimits.from_env({"GEOLLAVA_MAX_IMAGE_PIXELS": value})
    with pytest.raises(ValueError, match="max_pixels"):
        ImageLimits(max_pixels=0)


def test_open_image_refuses_the_bomb_from_its_header_and_names_file_and_limit(bomb, monkeypatch):
    with pytest.raises(ImageTooLarge) as err:
        open_image(bomb)
    assert str(bomb) in str(err.value) and f"400,000,000 pixels > {LIMIT_TEXT}" in str(err.value)
    assert "GEOLLAVA_MAX_IMAGE_PIXELS" in str(err.value) and err.value.kind == "pixels"
    # raised past 400 M, it opens (lazily: nothing decoded) and Pillow's own check stays out of the way
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test
    monkeypatch.setenv("GEOLLAVA_MAX_IMAGE_PIXELS", "400000000")
    with open_image(bomb) as im:
        assert im.size == (20_000, 20_000)
    monkeypatch.setenv("GEOLLAVA_MAX_IMAGE_PIXELS", "399999999")
    with pytest.raises(ImageTooLarge, match="400,000,000 pixels > 399,999,999"):
        open_image(bomb)


def test_pillows_bomb_warning_never_reaches_the_user(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89_478_485)  # Pillow's default: it warns past this
    data = png_header_bomb(10_000, 10_000)  # 100 M pixels: under our limit, over Pillow's warning threshold
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with open_image(data) as im:
            assert im.size == (10_000, 10_000)
        with pytest.raises(ImageTooLarge, match="10000 x 10000 = 100,000,000 pixels > 50,000,000"):
            open_image(data, limits=ImageLimits(max_pixels=50_000_000))
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert Image.MAX_IMAGE_PIXELS == DEFAULT_MAX_PIXELS  # raised to ours, so Pillow never speaks first


@pytest.mark.parametrize("make", [png_bytes, jpeg_bytes])
def test_one_pixel_over_is_refused_one_under_is_not(make, tmp_path):
    path = tmp_path / "x.img"
    path.write_bytes(make(0, (24, 16)))
    with open_image(path, limits=ImageLimits(max_pixels=24 * 16)) as im:
        assert im.size == (24, 16)
    with pytest.raises(ImageTooLarge, match=r"x.img: image too large: 24 x 16 = 384 pixels > 383"):
        open_image(path, limits=ImageLimits(max_pixels=24 * 16 - 1))
    data = path.read_bytes()
    with pytest.raises(ImageTooLarge, match=rf"x.img: image too large: {len(data):,} bytes > 100 .*BYTES"):
        open_image(path, limits=ImageLimits(max_bytes=100))
    with pytest.raises(ImageTooLarge, match="pair 7: image too large"):
        open_image(data, name="pair 7", limits=ImageLimits(max_pixels=10))


def test_jpeg_and_geotiff_bombs_are_refused_from_the_header(tmp_path):
    (tmp_path / "b.jpg").write_bytes(jpeg_bomb(60_000, 60_000))
    with pytest.raises(ImageTooLarge, match=r"b.jpg: image too large: 3,600,000,000 pixels"):
        open_image(tmp_path / "b.jpg")
    (tmp_path / "b.tif").write_bytes(tiff_bomb(60_000, 60_000))
    with pytest.raises(ImageTooLarge, match=r"b.tif: image too large: shape \(60000, 60000, 3\) = 3,600,000,000"):
        check_tiff(tmp_path / "b.tif")
    (tmp_path / "ok.tif").write_bytes(tiff_bytes(0, (24, 16), planar=True))
    assert check_tiff(tmp_path / "ok.tif") == (3, 16, 24)
    assert [tiff_pixels(s) for s in [(16, 24), (16, 24, 3), (3, 16, 24), (5, 16, 24, 3), (20, 30, 40)]] == [
        384,
        384,
        384,
        1920,
        24000,
    ]


# ------------------------------------------------------------------ every entry point, the same bomb


def test_geollava_predict_refuses_the_bomb_with_the_file_and_the_limit(bomb, tmp_path, capsys, caplog):
    from trainer.evaluation.predict import main

    ok = tmp_path / "ok.png"
    ok.write_bytes(png_bytes())
    assert main(["--model", str(tmp_path / "no-model"), str(ok), str(bomb)]) == 2
    err = capsys.readouterr().err
    assert f"{bomb}: image too large: 400,000,000 pixels > {LIMIT_TEXT}" in err
    _no_traceback(err)
    for name, data in (("b.tif", tiff_bomb()), ("b.jpg", jpeg_bomb())):
        (tmp_path / name).write_bytes(data)
        assert main(["--model", str(tmp_path / "no-model"), str(ok), str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert f"{tmp_path / name}: image too large" in err and LIMIT_TEXT in err
    (tmp_path / "pairs.csv").write_text(f"before,after\n{ok},{bomb}\n")
    assert main(["--model", str(tmp_path / "no-model"), "--batch", str(tmp_path / "pairs.csv")]) == 2
    err = capsys.readouterr().err
    assert "pairs.csv: no usable row (1 skipped)" in err
    _no_traceback(err)
    assert "line 2 (id line2): skipped: " in caplog.text and f"{bomb}: image too large" in caplog.text


def test_the_space_refuses_bomb_images_geotiffs_and_clips(bomb, tmp_path, monkeypatch):
    from spaces_demo.app import InputError, gather_frames

    ok = tmp_path / "ok.png"
    ok.write_bytes(png_bytes())
    with pytest.raises(InputError, match=rf"Could not use 'bomb.png'.*400,000,000 pixels > {LIMIT_TEXT}"):
        gather_frames(str(bomb), str(ok), None)
    (tmp_path / "b.tif").write_bytes(tiff_bomb())
    with pytest.raises(InputError, match="Could not use 'b.tif'.*image too large"):
        gather_frames(str(ok), str(tmp_path / "b.tif"), None)
    (tmp_path / "c.mp4").write_bytes(clip_bytes(3, 32))
    frames, _ = gather_frames(None, None, str(tmp_path / "c.mp4"))
    assert [f.size for f in frames] == [(32, 32), (32, 32)]
    monkeypatch.setenv("GEOLLAVA_MAX_IMAGE_PIXELS", str(2 * 32 * 32))  # three frames are over, two would not be
    with pytest.raises(InputError, match=r"Could not use 'c.mp4'.*3 frames of 32 x 32 = 3,072 pixels > 2,048"):
        gather_frames(None, None, str(tmp_path / "c.mp4"))


def test_the_spaces_image_boxes_hand_the_bomb_over_undecoded(bomb, monkeypatch):
    import gradio as gr
    from gradio.components.image import ImageData

    from spaces_demo import app

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # as app.main() sets it: Gradio reads the header only
    boxes = {b.elem_id: b for b in app.build_demo().blocks.values() if isinstance(b, gr.Image)}
    path = boxes["before"].preprocess(ImageData(path=str(bomb), orig_name="bomb.png"))
    assert path == str(bomb)  # the upload itself, neither decoded nor converted by Gradio
    text, view, status = app.describe(path, str(bomb), None, app.PROMPT_TEMPLATES[0], 8)
    assert (text, view) == ("", None) and f"400,000,000 pixels > {LIMIT_TEXT}" in status


def test_geollava_build_drops_the_bomb_with_its_own_reason(tmp_path, capsys):
    from dataset_builder.build import main

    fmow = tmp_path / "fmow"
    write_image(fmow, "train", "barn", 0, 0, "2010-01-01T00:00:00Z")
    write_image(fmow, "train", "barn", 0, 1, "2012-01-01T00:00:00Z")
    bomb = write_image(fmow, "train", "barn", 0, 2, "2014-01-01T00:00:00Z", data=jpeg_bomb(60_000, 60_000))
    args = ["--fmow-root", str(fmow), "--out", str(tmp_path / "out"), "--annotator", "none", "--frame_size", "32"]
    assert main(args) == 0
    _no_traceback(capsys.readouterr().err)
    report = json.loads((tmp_path / "out" / "build_report.json").read_text())
    assert report["images_dropped"]["too_many_pixels"] == 1 and sum(report["images_dropped"].values()) == 1
    (dropped,) = report["dropped_paths"]["too_many_pixels"]
    assert dropped.startswith(str(bomb)) and f"3,600,000,000 pixels > {LIMIT_TEXT}" in dropped
    assert report["images_seen"] == report["images_usable"] + 1 and report["pairs_found"] == 1


def test_load_frame_refuses_before_decoding(bomb):
    from dataset_builder.frames import load_frame

    with pytest.raises(ImageTooLarge, match="bomb.png: image too large"):
        load_frame(bomb, 32)


def test_geollava_annotate_refuses_a_bomb_frame_naming_the_pair(tmp_path, capsys):
    from dataset_builder.annotation.cli import main
    from tests.annotation.helpers import make_dataset

    folder = make_dataset(tmp_path / "ds", n_train=2, n_test=0, sample=0)
    shard = folder / "data" / "train-00000-of-00002.parquet"
    table = pq.read_table(shard).to_pylist()
    table[0]["frames"][1]["bytes"] = png_bomb(20_000, 20_000)
    pq.write_table(pa.Table.from_pylist(table, schema=pq.read_schema(shard)), shard)
    args = [str(folder), "--dry_run", "true", "--cache_path", str(tmp_path / "cache.jsonl")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"pair {table[0]['id']}: image 1 (frames_jpeg): image too large: 400,000,000 pixels" in err
    assert LIMIT_TEXT in err
    _no_traceback(err)


def test_geollava_build_levircc_refuses_or_skips_the_bomb(bomb, tmp_path, capsys):
    from dataset_builder.levircc import main
    from tests.ccexpert.levircc_fixtures import write_levircc_tree

    root = tmp_path / "levir"
    data = write_levircc_tree(root, {"train": 2, "val": 1, "test": 1})
    victim = root / "images" / "train" / "B" / data["images"][0]["filename"]
    victim.write_bytes(bomb.read_bytes())
    assert main(["--root", str(root), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert f"image B ({victim}): image too large: 400,000,000 pixels > {LIMIT_TEXT}" in err
    _no_traceback(err)
    assert main(["--root", str(root), "--out", str(tmp_path / "out2"), "--skip_missing", "true"]) == 0
    report = json.loads((tmp_path / "out2" / "build_report.json").read_text())
    assert report["skipped_counts"] == {"too_many_pixels": 1}
    assert report["skipped"][0]["filename"] == victim.name and "400,000,000 pixels" in report["skipped"][0]["reason"]
    assert report["pairs_per_split"] == {"train": 1, "validation": 1, "test": 1}
