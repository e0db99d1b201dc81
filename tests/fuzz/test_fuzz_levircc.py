"""LEVIR-CC's captions JSON and images, fuzzed through read_captions and geollava-build-levircc: a ValueError naming
the file and the entry, a pair skipped and reported (``--skip_missing``), or exit 1 with a message; never an
exception, never a file read from outside the tree."""

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dataset_builder.levircc import SKIP_KINDS, main, read_captions
from tests.fuzz.hostile import file_with, png_bytes, png_header_bomb
from tests.fuzz.outcomes import fuzz_settings, record
from tests.fuzz.strategies import hostile_json, json_values, mutated


PARSER = "LEVIR-CC captions JSON + images (geollava-build-levircc)"
NAMES = ["train_000000.png", "val_000000.png", "missing.png", "bad.png", "../A/train_000000.png", "", "."]
SENTENCE = st.sampled_from([" a road is built .", " there is no difference .", " ", ""]) | st.text(max_size=10)
ENTRY = st.fixed_dictionaries(
    {},
    optional={
        "filename": st.sampled_from(NAMES) | json_values(),
        "split": st.sampled_from(["train", "val", "test", "dev"]) | json_values(),
        "sentences": st.lists(
            SENTENCE | st.fixed_dictionaries({"raw": SENTENCE | json_values()}) | json_values(), max_size=3
        )
        | json_values(),
        "imgid": st.integers(-(2**40), 2**40) | st.sampled_from(["7", "x", "--1"]) | json_values(),
        "changeflag": st.sampled_from([0, 1, "0", "1", 2, None, True]) | json_values(),
    },
)
WELL_TYPED = st.fixed_dictionaries(
    {
        "filename": st.sampled_from(NAMES),
        "split": st.sampled_from(["train", "val", "test"]),
        "sentences": st.lists(SENTENCE, max_size=3),
    },
    optional={"imgid": st.integers(-5, 5), "changeflag": st.sampled_from([0, 1, None])},
)
CAPTIONS = st.one_of(
    st.fixed_dictionaries({"images": st.lists(WELL_TYPED, min_size=1, max_size=4)}).map(
        lambda d: json.dumps(d).encode()
    ),
    hostile_json(st.fixed_dictionaries({"images": st.lists(WELL_TYPED | ENTRY | json_values(), max_size=4)})),
)


@fuzz_settings(PARSER, "read_captions", max_examples=200, deadline_ms=5000)
@given(data=CAPTIONS)
def test_read_captions(data):
    with file_with(data, "LevirCCcaptions.json") as path:
        try:
            entries = read_captions(path)
        except ValueError as err:
            assert str(err).startswith(f"{path}: "), err
            record(PARSER, "refused: ValueError naming the file (and the entry)")
            return
    for entry in entries:
        assert Path(entry["filename"]).name == entry["filename"] not in ("", ".", "..")
    record(PARSER, "accepted")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("levir")
    for split, side in [(s, x) for s in ("train", "val") for x in ("A", "B")]:
        folder = root / "images" / split / side
        folder.mkdir(parents=True)
        (folder / f"{split}_000000.png").write_bytes(png_bytes(ord(side), (16, 16)))
        (folder / "bad.png").write_bytes(png_bytes(0, (16, 16))[:60])
    return root


def _build(root: Path, captions: bytes, skip: bool) -> str:
    (root / "LevirCCcaptions.json").write_bytes(captions)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        args = ["--root", str(root), "--out", str(out), "--splits", "train,val", "--skip_missing", str(skip).lower()]
        code = main(args)
        assert code in (0, 1)
        if code == 1:
            return "CLI: refused with a message (exit 1)"
        report = json.loads((out / "build_report.json").read_text())
        entries = [e for e in read_captions(root / "LevirCCcaptions.json") if e["split"] in ("train", "val")]
        assert sum(report["pairs_per_split"].values()) + len(report["skipped"]) == len(entries)
        assert {s["kind"] for s in report["skipped"]} <= set(SKIP_KINDS)
        assert sum(report["skipped_counts"].values()) == len(report["skipped"])
        return "CLI: built (exit 0), bad pairs skipped and reported" if report["skipped"] else "CLI: built (exit 0)"


@fuzz_settings(PARSER, "CLI captions", max_examples=30, deadline_ms=30_000)
@given(data=CAPTIONS, skip=st.booleans())
def test_cli_captions(tree, data, skip):
    record(PARSER, _build(tree, data, skip))


GOOD = {
    "images": [
        {"filename": "train_000000.png", "split": "train", "imgid": 0, "sentences": [" a road is built ."]},
        {"filename": "val_000000.png", "split": "val", "imgid": 1, "sentences": [" there is no difference ."]},
    ]
}


@fuzz_settings(PARSER, "CLI images", max_examples=30, deadline_ms=30_000)
@given(
    image=mutated(png_bytes(0, (16, 16)))
    | st.tuples(st.integers(1, 2**31 - 1), st.integers(1, 2**31 - 1)).map(lambda wh: png_header_bomb(*wh)),
    skip=st.booleans(),
)
def test_cli_images(tmp_path_factory, image, skip):
    root = tmp_path_factory.mktemp("levir-images")
    for split in ("train", "val"):
        for side in ("A", "B"):
            (root / "images" / split / side).mkdir(parents=True)
            (root / "images" / split / side / f"{split}_000000.png").write_bytes(png_bytes(1, (16, 16)))
    (root / "images" / "train" / "B" / "train_000000.png").write_bytes(image)
    record(PARSER, _build(root, json.dumps(GOOD).encode(), skip))
