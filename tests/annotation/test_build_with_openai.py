import json

from datasets import load_dataset

from dataset_builder.annotation.cli import main as annotate_main
from dataset_builder.build import main as build_main
from tests.annotation.helpers import SECRET, jpeg


def write_tree(root, locations=3, years=(2010, 2012)):
    """A tiny fMoW tree: per location, one image in each of ``years`` (two years apart: a pair between each two)."""
    for loc in range(locations):
        folder = root / "train" / "barn" / f"barn_{loc}"
        folder.mkdir(parents=True)
        for index, year in enumerate(years):
            stem = f"barn_{loc}_{index}"
            (folder / f"{stem}_rgb.jpg").write_bytes(jpeg(100 * loc + index, size=(64, 48)))
            meta = {
                "timestamp": f"{year}-05-01T10:00:00Z",
                "gsd": 0.5,
                "utm": "17S",
                "country_code": "USA",
                "cloud_cover": 0,
                "img_width": 64,
                "img_height": 48,
                "bounding_boxes": [{"ID": 1, "box": [1, 1, 5, 5], "category": "barn"}],
            }
            (folder / f"{stem}_rgb.json").write_text(json.dumps(meta))


def build_args(tmp_path, annotator, options=None, sample_size=0):
    """``geollava-build`` arguments for the tree of :func:`write_tree` into ``tmp_path / "out"``."""
    args = ["--fmow_root", str(tmp_path / "fmow"), "--out", str(tmp_path / "out"), "--splits", "train"]
    args += ["--annotator", annotator, "--no_videos", "--frame_size", "32", "--sample_size", str(sample_size)]
    for key, value in (options or {}).items():
        args += [f"--{key}", str(value)]
    return args


def test_geollava_build_with_the_openai_annotator(tmp_path, server, fast_options, api_key, capsys):
    write_tree(tmp_path / "fmow")
    out = tmp_path / "out"
    args = build_args(tmp_path, "openai", fast_options)
    assert build_main(args) == 0, capsys.readouterr().err
    rows = load_dataset(str(out), split="train")
    assert rows.num_rows == 3
    captions = [row["conversations"][-1]["value"] for row in rows]
    assert all(c.startswith("The first image shows") for c in captions) and len(set(captions)) == 3
    assert server.state.total_successes() == 3
    report = json.loads((out / "build_report.json").read_text())
    assert report["annotation"]["model"] == "gpt-4o-mini"
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert "gpt-4o-mini" in (out / "README.md").read_text()


def test_geollava_annotate_on_a_built_folder_updates_report_official_json_and_card(
    tmp_path, server, fast_options, api_key
):
    write_tree(tmp_path / "fmow")
    out = tmp_path / "out"
    assert build_main(build_args(tmp_path, "none", sample_size=2)) == 0
    assert "gpt-4o-mini" not in (out / "README.md").read_text()
    args = [str(out)]
    for key, value in fast_options.items():
        args += [f"--{key}", str(value)]
    assert annotate_main(args) == 0
    assert server.state.total_successes() == 3  # the 2 sample_10k rows reuse the answers
    report = json.loads((out / "build_report.json").read_text())
    assert report["annotation"]["annotator"] == "openai" and report["annotation"]["not_annotated"] == {}
    official = json.loads((out / "geollava_json" / "train.json").read_text())
    assert all(entry["conversations"][-1]["value"].startswith("The first image") for entry in official)
    card = (out / "README.md").read_text()
    assert "gpt-4o-mini" in card and SECRET not in card
    for config in ("default", "sample_10k"):
        rows = load_dataset(str(out), config, split="train")
        assert all(row["conversations"][-1]["value"] for row in rows)


def test_geollava_build_dry_run_only_estimates_then_the_real_build_sends(
    tmp_path, server, fast_options, api_key, capsys
):
    write_tree(tmp_path / "fmow")
    out = tmp_path / "out"
    args = build_args(tmp_path, "openai", fast_options)
    assert build_main([*args, "--dry_run", "true"]) == 0, capsys.readouterr().err
    assert "dry run: 3 pairs estimated" in capsys.readouterr().out
    assert server.state.requests == 0
    estimate = json.loads((out / "annotation_report.json").read_text())
    assert estimate["tokens"]["estimated_input"] > 0 and estimate["cost_usd"]["estimated"] > 0
    assert not (out / "data").exists() and not (out / "README.md").exists()
    # the dry run is not a different build: the real one goes on in the same folder
    assert build_main(args) == 0, capsys.readouterr().err
    assert load_dataset(str(out), split="train").num_rows == 3
    assert server.state.total_successes() == 3
