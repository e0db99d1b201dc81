"""geollava-predict: JPEG/PNG/GeoTIFF input, clear errors for anything else, one pair and --batch, masks on load."""

import json

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from dataset_builder.prompts import PROMPT_TEMPLATES
from tests.trainer.helpers import tiny_base_and_adapter
from trainer.evaluation.predict import describe_pair, describe_sequence, main, read_image
from trainer.models.loading import load_for_inference


CORPUS = [*PROMPT_TEMPLATES, "A new building was built in the north-east. Nothing changed."]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    return tiny_base_and_adapter("video-llava", root, CORPUS)


@pytest.fixture()
def images(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (30, 34, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(rgb[::-1]).save(tmp_path / "b.jpg", quality=95)
    return tmp_path / "a.png", tmp_path / "b.jpg"


def test_geotiff_three_bands_any_dtype_and_layout(tmp_path):
    band = np.linspace(0, 1, 20 * 24).reshape(20, 24)
    hwc16 = (np.stack([band, band / 2, 1 - band], -1) * 4000 + 100).astype(np.uint16)
    tifffile.imwrite(tmp_path / "hwc.tif", hwc16, photometric="rgb")
    image = read_image(tmp_path / "hwc.tif")
    assert image.mode == "RGB" and image.size == (24, 20)
    pixels = np.asarray(image)
    assert pixels.min() == 0 and pixels.max() == 255  # global min..max scaled to 8 bits
    # one scale for all bands: band 1 is half of band 0 in the source, so it stays below band 0
    assert (pixels[..., 1].astype(int) <= pixels[..., 0].astype(int) + 1).all()
    chw = np.stack([band, band, band]).astype(np.float32)  # planar float
    tifffile.imwrite(tmp_path / "chw.tiff", chw, photometric="minisblack", planarconfig="separate")
    assert read_image(tmp_path / "chw.tiff").size == (24, 20)
    tifffile.imwrite(tmp_path / "u8.tif", (hwc16 // 16).astype(np.uint8), photometric="rgb")
    assert np.array_equal(np.asarray(read_image(tmp_path / "u8.tif")), (hwc16 // 16).astype(np.uint8))


@pytest.mark.parametrize("bands", [1, 2, 4])
def test_geotiff_with_wrong_band_count_is_refused(tmp_path, bands):
    data = np.zeros((bands, 20, 24), dtype=np.uint16) if bands > 1 else np.zeros((20, 24), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "x.tif", data, photometric="minisblack")
    with pytest.raises(ValueError, match=f"x.tif: GeoTIFF has {bands} band"):
        read_image(tmp_path / "x.tif")


def test_bad_files_are_refused_with_the_file_named(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="notes.txt: not a readable image"):
        read_image(tmp_path / "notes.txt")
    (tmp_path / "broken.tif").write_bytes(b"II*\x00" + b"\x00" * 10)
    with pytest.raises(ValueError, match="broken.tif: not a readable TIFF"):
        read_image(tmp_path / "broken.tif")
    Image.new("RGB", (8, 8)).save(tmp_path / "x.gif")
    with pytest.raises(ValueError, match="GIF images are not supported"):
        read_image(tmp_path / "x.gif")
    with pytest.raises(ValueError, match="missing.png: no such file"):
        read_image(tmp_path / "missing.png")


def test_cli_prints_the_same_text_as_describe_pair(tiny, images, capsys):
    base, adapter = tiny
    before, after = images
    assert main(["--model", str(base), "--adapter", str(adapter), "--prompt-template", "3", "--max_new_tokens", "9",
                 str(before), str(after)]) == 0  # fmt: skip
    printed = capsys.readouterr().out.strip()
    model, processor, family = load_for_inference(base, adapter)
    expected = describe_pair(model, processor, family, before, after, template_id=3, max_new_tokens=9)
    assert printed == expected and expected
    # a PIL image or a path give the same text
    assert describe_pair(model, processor, family, Image.open(before), after, 3, 9) == expected


def test_three_images_in_time_order_are_asked_as_a_sequence(tiny, images, capsys):
    base, adapter = tiny
    before, after = images
    dates = "2016-03-02,2017-08-15,2019-01-30"
    options = ["--model", str(base), "--adapter", str(adapter), "--max_new_tokens", "9"]
    assert main([*options, "--dates", dates, str(before), str(after), str(before)]) == 0
    printed = capsys.readouterr().out.strip()
    model, processor, family = load_for_inference(base, adapter)
    frames = [before, after, before]
    expected = describe_sequence(model, processor, family, frames, dates.split(","), max_new_tokens=9)
    assert printed == expected
    # without --dates the frames are numbered only
    undated = describe_sequence(model, processor, family, frames, None, max_new_tokens=9)
    assert main([*options, str(before), str(after), str(before)]) == 0
    assert capsys.readouterr().out.strip() == undated
    assert main([*options, "--dates", "2016-03-02,2015-01-01,2019-01-30", str(before), str(after), str(before)]) == 2
    assert "date 2 (2015-01-01) is before date 1 (2016-03-02)" in capsys.readouterr().err
    assert main([*options, "--dates", "2016-03-02,2017-08-15", str(before), str(after)]) == 2
    assert "--dates: give it with 3 or more images" in capsys.readouterr().err


def test_cli_refuses_bad_input_with_non_zero_exit(tiny, images, tmp_path, capsys):
    base, _ = tiny
    before, _ = images
    (tmp_path / "notes.txt").write_text("x")
    assert main(["--model", str(base), str(before), str(tmp_path / "notes.txt")]) == 2
    assert "notes.txt: not a readable image" in capsys.readouterr().err
    assert main(["--model", str(base), str(before)]) == 2
    assert "give two images, BEFORE and AFTER, 3 or more in time order" in capsys.readouterr().err
    assert main(["--model", str(base), "--prompt_template", "9", str(before), str(before)]) == 2
    assert "--prompt_template must be in 0..5, got 9" in capsys.readouterr().err
    assert main(["--model", str(tmp_path / "no-model"), str(before), str(before)]) == 1
    assert "cannot load" in capsys.readouterr().err


def test_batch_csv_skips_bad_rows_and_describes_the_rest(tiny, images, tmp_path, capsys):
    base, adapter = tiny
    before, after = images
    (tmp_path / "bad.txt").write_text("x")
    csv = tmp_path / "pairs.csv"
    csv.write_text(f"id,before,after\np1,{before.name},{after.name}\np2,{before},bad.txt\np3,{after},{before}\n")
    out = tmp_path / "out.jsonl"
    args = ["--model", str(base), "--adapter", str(adapter), "--batch", str(csv), "--out", str(out)]
    assert main([*args, "--max_new_tokens", "5", "--batch_size", "2"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["p1", "p3"]
    err = capsys.readouterr().err
    assert "1 row(s) skipped" in err and "bad.txt: not a readable image" in err
    model, processor, family = load_for_inference(base, adapter)
    assert rows[0]["prediction"] == describe_pair(model, processor, family, before, after, 0, 5)


def test_pruning_masks_are_reapplied_on_load(tiny, tmp_path):
    import shutil

    from trainer.pruning.masks import save_masks

    base, adapter = tiny
    pruned = tmp_path / "adapter"
    shutil.copytree(adapter, pruned)
    model, _, _ = load_for_inference(base)
    name = "model.language_model.layers.0.self_attn.q_proj"
    weight = dict(model.named_modules())[name].weight
    mask = torch.ones_like(weight, dtype=torch.bool)
    mask[:, ::2] = False
    save_masks({name: mask}, pruned, {"method": "test"})
    net, _, _ = load_for_inference(base, pruned)
    loaded = next(m for n, m in net.named_modules() if n.endswith(name + ".base_layer")).weight
    assert (loaded[:, ::2] == 0).all() and (loaded[:, 1::2] != 0).any()


def test_4bit_load_quantizes_the_masked_language_model_only(tiny, images, tmp_path):
    import shutil

    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbf

    from trainer.pruning.masks import save_masks

    base, adapter = tiny
    pruned = tmp_path / "adapter"
    shutil.copytree(adapter, pruned)
    name = "model.language_model.layers.1.mlp.up_proj"
    full, _, _ = load_for_inference(base)
    mask = torch.ones_like(dict(full.named_modules())[name].weight, dtype=torch.bool)
    mask[::3] = False
    save_masks({name: mask}, pruned, {"method": "test"})
    net, processor, family = load_for_inference(base, pruned, load_in_4bit=True)
    modules = dict(net.named_modules())
    layer = next(m for n, m in modules.items() if n.endswith(name + ".base_layer"))
    assert isinstance(layer, bnb.nn.Linear4bit)
    vision = [m for n, m in modules.items() if any(p in n for p in family.vision_modules)]
    assert any(isinstance(m, torch.nn.Linear) for m in vision)
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in vision)
    weight = bnbf.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    assert (weight[::3] == 0).all()  # pruned before quantizing: the zeros survive NF4 exactly
    assert isinstance(describe_pair(net, processor, family, *images, max_new_tokens=4), str)
