"""geollava-predict's ``--batch`` CSV, fuzzed: each row is used or skipped with its line and reason, or the file is
refused with a ValueError naming it; the CLI exits 2 (nothing usable, a message) or goes on to load the model
(exit 1 here: there is none); never an exception."""

import contextlib
import csv
import io

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from tests.fuzz.hostile import jpeg_bytes, png_bytes, png_header_bomb, tiff_bytes
from tests.fuzz.outcomes import fuzz_settings, record
from tests.fuzz.strategies import mutated
from trainer.evaluation.predict import main, read_batch_csv


PARSER = "--batch CSV (geollava-predict)"
FILES = {
    "good.png": png_bytes(0),
    "good.jpg": jpeg_bytes(1),
    "good.tif": tiff_bytes(2),
    "cut.png": png_bytes(0)[:70],
    "bomb.png": png_header_bomb(60_000, 60_000),
    "notes.txt": b"not an image",
}
CELLS = st.one_of(
    st.sampled_from([*FILES, "missing.png", "", "../good.png", "/", "good.png\x00", "x" * 300, "sub/../good.png"]),
    st.text(max_size=12),
)
TEMPLATES = st.sampled_from(["", "0", "5", "6", "-1", "x", "1.5", " 3 ", "\u0663", "9" * 5000]) | st.text(max_size=4)
COLUMNS = st.lists(st.sampled_from(["before", "after", "id", "prompt_template", "extra", ""]), max_size=6)


def _csv(header: list[str], rows: list[list[str]]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8", errors="surrogatepass")


@st.composite
def csv_files(draw) -> bytes:
    """Any header, any cells, then perhaps corrupted or given a field over csv's limit."""
    header = draw(
        st.one_of(st.just(["before", "after"]), st.just(["id", "before", "after", "prompt_template"]), COLUMNS)
    )
    rows = draw(st.lists(st.lists(CELLS | TEMPLATES, min_size=0, max_size=len(header) + 1), max_size=5))
    data = _csv(header, rows)
    return draw(st.one_of(st.just(data), mutated(data), st.just(data + b"a" * 140_000 + b"\n")))


#: The four columns in place, cells from the images above: rows that reach the model.
WELL_FORMED = st.lists(
    st.tuples(st.text(max_size=3), st.sampled_from(list(FILES)), st.sampled_from(list(FILES)), TEMPLATES).map(list),
    min_size=1,
    max_size=4,
).map(lambda rows: _csv(["id", "before", "after", "prompt_template"], rows))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    for name, data in FILES.items():
        (root / name).write_bytes(data)
    return root


@fuzz_settings(PARSER, "read_batch_csv", max_examples=200, deadline_ms=10_000)
@given(data=csv_files() | WELL_FORMED)
def test_read_batch_csv(folder, data):
    path = folder / "pairs.csv"
    path.write_bytes(data)
    try:
        good, skipped = read_batch_csv(path)
    except ValueError as err:
        assert str(err).startswith(f"{path}: "), err
        record(PARSER, "refused: ValueError naming the file")
        return
    for row in good:
        assert all(isinstance(im, Image.Image) and im.mode == "RGB" for im in row["images"])
        assert 0 <= row["template"] <= 5
    assert all(isinstance(s["line"], int) and s["line"] >= 2 and s["reason"] for s in skipped)
    record(PARSER, "rows skipped, each named by line" if skipped else "accepted")


@fuzz_settings(PARSER, "CLI", max_examples=40, deadline_ms=30_000)
@given(data=WELL_FORMED | csv_files())
def test_cli(folder, data):
    path = folder / "pairs.csv"
    path.write_bytes(data)
    with contextlib.redirect_stderr(io.StringIO()) as stderr:
        code = main(["--model", str(folder / "no-model"), "--batch", str(path)])
    err = stderr.getvalue()
    assert code in (1, 2) and "Traceback" not in err
    if code == 2:
        assert "geollava-predict: error: " in err
        record(PARSER, "CLI: refused with a message (exit 2)")
    else:
        assert "cannot load" in err
        record(PARSER, "CLI: rows accepted, then the (absent) model refused (exit 1)")
