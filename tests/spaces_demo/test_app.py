import json

import av
import numpy as np
import pytest
from PIL import Image

from dataset_builder.prompts import PROMPT_TEMPLATES


@pytest.fixture()
def app(space_model, monkeypatch):
    base, adapter = space_model
    monkeypatch.setenv("BASE_MODEL_ID", str(base))
    monkeypatch.setenv("ADAPTER_ID", str(adapter))
    from spaces_demo import app as module

    module._MODEL.clear()
    yield module
    module._MODEL.clear()


def _predict_cli(base, adapter, before, after, template_id, capsys, max_new_tokens=16):
    from trainer.evaluation.predict import main as predict_main

    predict_main(
        [
            "--model",
            str(base),
            "--adapter",
            str(adapter),
            "--prompt-template",
            str(template_id),
            "--max-new-tokens",
            str(max_new_tokens),
            str(before),
            str(after),
        ]
    )
    return capsys.readouterr().out.strip()


def test_same_text_as_geollava_predict(app, space_model, pair_files, capsys):
    before, after, _ = pair_files
    text, view, status = app.describe(str(before), str(after), None, PROMPT_TEMPLATES[2], 16)
    assert status.startswith("✅"), status
    assert isinstance(view, Image.Image) and view.width > view.height  # the two frames side by side
    assert text
    assert text.strip() == _predict_cli(*space_model, before, after, 2, capsys).strip()


def test_missing_image_is_a_friendly_message(app, pair_files):
    before, _, _ = pair_files
    text, view, status = app.describe(str(before), None, None, PROMPT_TEMPLATES[0], 8)
    assert (text, view) == ("", None)
    assert "Please upload the after image" in status


def test_non_image_file_is_a_friendly_message(app, pair_files):
    before, _, notes = pair_files
    text, _, status = app.describe(str(before), str(notes), None, PROMPT_TEMPLATES[0], 8)
    assert text == ""
    assert "Could not use 'notes.txt'" in status


def test_too_large_image_is_resized_with_a_note(app, pair_files, tmp_path, monkeypatch):
    monkeypatch.setattr(app, "MAX_SIDE", 32)
    before, after, _ = pair_files
    big = tmp_path / "big.png"
    Image.open(before).resize((96, 80)).save(big)
    text, _, status = app.describe(str(big), str(after), None, PROMPT_TEMPLATES[0], 8)
    assert text
    assert "was 96×80 px; it was resized to 32×27 px" in status


def _clip(path, n_frames):
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=1)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 40 * i, dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_clip_with_two_frames_works_and_one_frame_is_refused(app, tmp_path):
    good, bad = tmp_path / "good.mp4", tmp_path / "bad.mp4"
    _clip(good, 3)
    _clip(bad, 1)
    text, _, status = app.describe(None, None, str(good), PROMPT_TEMPLATES[0], 8)
    assert text and status.startswith("✅")
    text, _, status = app.describe(None, None, str(bad), PROMPT_TEMPLATES[0], 8)
    assert text == "" and "has 1 frame(s)" in status


def test_blocks_build_with_examples_and_api(app):
    demo = app.build_demo()
    assert "describe" in str(demo.config)


def test_model_ids_come_from_the_pushed_settings_and_the_variables_override_them(space_model, tmp_path, monkeypatch):
    from model_cards.render import SPACE_CONFIG_FILE, write_space_release
    from spaces_demo import app as module

    base, adapter = space_model
    assert module.CONFIG_FILE.name == SPACE_CONFIG_FILE  # the file geollava-push/geollava-card write
    monkeypatch.setattr(module, "CONFIG_FILE", tmp_path / SPACE_CONFIG_FILE)
    monkeypatch.delenv("BASE_MODEL_ID", raising=False)
    monkeypatch.delenv("ADAPTER_ID", raising=False)
    with pytest.raises(RuntimeError, match="no base model"):
        module.model_ids()
    write_space_release(tmp_path, "geo-org/demo", "geo-org/tiny-lora", None, "geo-org/tiny-base")
    assert module.model_ids() == ("geo-org/tiny-base", "geo-org/tiny-lora")
    monkeypatch.setenv("BASE_MODEL_ID", str(base))
    monkeypatch.setenv("ADAPTER_ID", str(adapter))
    assert module.model_ids() == (str(base), str(adapter))
    # no base named anywhere: the adapter's own base_model_name_or_path
    monkeypatch.delenv("BASE_MODEL_ID")
    (tmp_path / SPACE_CONFIG_FILE).write_text(json.dumps({"adapter": "geo-org/tiny-lora"}))
    own = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert own and module.model_ids() == (own, str(adapter))
    (tmp_path / SPACE_CONFIG_FILE).write_text("[1, 2]")
    with pytest.raises(RuntimeError, match="expected a JSON object"):
        module.model_ids()


DATES = "2016-03-02, 2017-08-15\n2019-01-30"


def test_a_time_series_is_asked_as_a_sequence_with_the_same_text_as_geollava_predict(
    app, space_model, pair_files, capsys
):
    from trainer.evaluation.predict import main as predict_main

    before, after, _ = pair_files
    series = [str(before), str(after), str(before)]
    text, view, status = app.describe(None, None, None, PROMPT_TEMPLATES[0], 16, series, DATES)
    assert status.startswith("✅") and text, status
    assert view.width > 3 * view.height - 10  # three frames side by side
    base, adapter = space_model
    options = ["--model", str(base), "--adapter", str(adapter), "--max-new-tokens", "16"]
    capsys.readouterr()
    assert predict_main([*options, "--dates", "2016-03-02,2017-08-15,2019-01-30", *series]) == 0
    assert text.strip() == capsys.readouterr().out.strip()
    undated, _, _ = app.describe(None, None, None, PROMPT_TEMPLATES[0], 16, series, "")
    assert predict_main([*options, *series]) == 0
    assert undated.strip() == capsys.readouterr().out.strip()


def test_a_series_of_two_is_the_pair_as_before(app, pair_files):
    before, after, _ = pair_files
    pair, _, _ = app.describe(str(before), str(after), None, PROMPT_TEMPLATES[2], 16)
    text, _, status = app.describe(
        None, None, None, PROMPT_TEMPLATES[2], 16, [str(before), str(after)], "2016-03-02 2017-08-15"
    )
    assert text == pair
    assert "described as a pair, without their dates" in status


@pytest.mark.parametrize(
    ("count", "dates", "message"),
    [
        (1, "", "A time series needs 2 to 8 images in time order; got 1."),
        (9, "", "A time series needs 2 to 8 images in time order; got 9."),
        (3, "2016-03-02, 2017-08-15", "Dates: 2 dates for 3 frames"),
        (3, "2016-03-02 2015-01-01 2019-01-30", "date 2 (2015-01-01) is before date 1 (2016-03-02)"),
        (3, "2016-03-02 soon 2019-01-30", "date 2 ('soon') is not an ISO 8601 date"),
    ],
)
def test_a_bad_series_is_a_friendly_message(app, pair_files, count, dates, message):
    before, after, _ = pair_files
    series = [str(before), str(after)] * 5
    text, view, status = app.describe(None, None, None, PROMPT_TEMPLATES[0], 8, series[:count], dates)
    assert (text, view) == ("", None)
    assert message in status, status


def test_a_non_image_in_the_series_is_named(app, pair_files):
    before, after, notes = pair_files
    text, _, status = app.describe(None, None, None, PROMPT_TEMPLATES[0], 8, [str(before), str(notes), str(after)])
    assert text == "" and "Could not use 'notes.txt'" in status


def test_the_api_keeps_the_pair_inputs_first_and_the_series_optional(app):
    parameters = app.build_demo().get_api_info()["named_endpoints"]["/describe"]["parameters"]
    # a caller that sends the 7 pair inputs by position (gradio_client, scripts/space_check.py) still works
    assert [p["parameter_name"] for p in parameters] == ["b", "a", "bf", "af", "c", "t", "n", "s", "d"]
    assert all(p.get("parameter_has_default") for p in parameters[7:])
