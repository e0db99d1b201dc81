"""fMoW metadata JSON and images, fuzzed through the scan of geollava-build: every seen image is usable or dropped
with one reason, never an exception; a usable image decodes or fails in a way the build reports (``pairs_failed``)."""

import json
import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from dataset_builder.fmow import DROP_REASONS, scan_fmow
from dataset_builder.frames import load_frame
from tests.fuzz.hostile import jpeg_bomb, jpeg_bytes, png_bytes
from tests.fuzz.outcomes import fuzz_settings, record
from tests.fuzz.strategies import hostile_json, json_values, mutated


PARSER = "fMoW metadata + images (geollava-build scan)"
TIMESTAMPS = st.from_regex(
    r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:?[0-9]{2})?\Z"
)
METADATA = st.fixed_dictionaries(
    {"timestamp": TIMESTAMPS | json_values()},
    optional={
        "gsd": st.floats() | json_values(),
        "cloud_cover": st.integers() | json_values(),
        "country_code": json_values(),
        "img_width": json_values(),
    },
)
GOOD_JPEG = jpeg_bytes(0, (40, 32))


def _scan(meta: bytes, image: bytes):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "train" / "barn" / "barn_0"
        folder.mkdir(parents=True)
        (folder / "barn_0_0_rgb.jpg").write_bytes(image)
        (folder / "barn_0_0_rgb.json").write_bytes(meta)
        scan = scan_fmow(tmp, ["train"], max_image_bytes=1_000_000)
        assert scan.images_seen == 1 == scan.images_usable + sum(len(v) for v in scan.dropped.values())
        assert set(scan.dropped) <= set(DROP_REASONS)
        if scan.images_usable:
            (image,) = scan.locations[("train", "barn_0")]
            assert image.timestamp.tzinfo is not None and isinstance(image.timestamp_text, str)
            assert image.gsd is None or isinstance(image.gsd, float)
            assert image.cloud_cover is None or isinstance(image.cloud_cover, int)
            return "accepted", Path(folder / "barn_0_0_rgb.jpg").read_bytes()
        (reason,) = scan.dropped
        assert all(p.startswith(str(folder)) for p in scan.dropped[reason])  # names the file
        return f"dropped and reported: {reason}", None


@fuzz_settings(PARSER, "metadata", max_examples=200, deadline_ms=5000)
@given(meta=hostile_json(METADATA))
def test_metadata_json(meta):
    outcome, _ = _scan(meta, GOOD_JPEG)
    record(PARSER, outcome)


IMAGES = st.one_of(
    mutated(GOOD_JPEG),
    mutated(png_bytes(0)),
    st.tuples(st.integers(1, 65535), st.integers(1, 65535)).map(lambda wh: jpeg_bomb(*wh)),
)


@fuzz_settings(PARSER, "image", max_examples=150, deadline_ms=10_000)
@given(image=IMAGES)
def test_image_bytes(image):
    outcome, kept = _scan(json.dumps({"timestamp": "2012-04-02T10:32:22Z"}).encode(), image)
    if kept is not None:
        # the shard writer decodes it next; a failure there drops the pair as `corrupt_image` in pairs_failed
        with tempfile.NamedTemporaryFile(suffix=".jpg") as f:
            f.write(kept)
            f.flush()
            try:
                frame = load_frame(f.name, 32)
                assert frame.size == (32, 32) and frame.mode == "RGB"
            except (OSError, ValueError) as err:
                outcome = f"accepted by the scan, failed to decode ({type(err).__name__}): pair reported"
    record(PARSER, outcome)
