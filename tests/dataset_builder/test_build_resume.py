import json
import os
import subprocess
import sys
import time

import pytest

from dataset_builder.build import STATE_FILE, BuildConfig, build
from dataset_builder.synthetic.synth import SynthConfig, generate_tree


OPTIONS = {"frame_size": 32, "shard_rows": 2, "sample_size": 5}


def _tree(path, locations=14, seed=7):
    generate_tree(SynthConfig(out=str(path), locations=locations, seed=seed, image_size=64, oversize_fraction=0))
    return path


def _build(fmow, out, **kw):
    return build(BuildConfig(fmow_root=str(fmow), out=str(out), **{**OPTIONS, **kw}))


def _listing(folder):
    """Every file a user would see, with its bytes (the build report without its timing and process count)."""
    files = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_file() and not path.name.startswith("."):
            data = path.read_bytes()
            if rel == "build_report.json":
                report = json.loads(data)
                report.pop("seconds")
                report["options"].pop("num_proc")
                data = json.dumps(report, sort_keys=True).encode()
            files[rel] = data
    return files


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    fmow = _tree(root / "fmow")
    _build(fmow, root / "ref")
    return fmow, root / "ref"


def _kill_then_rerun(fmow, out, marker: str, *extra: str) -> dict:
    """Start a build, SIGKILL it once its state records a shard whose path holds ``marker``, rerun it; the state."""
    args = [sys.executable, "-m", "dataset_builder.build", "--fmow-root", str(fmow), "--out", str(out), *extra]
    args += [x for k, v in OPTIONS.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_path = out / STATE_FILE
    deadline = time.time() + 120
    while time.time() < deadline and not (state_path.exists() and marker in state_path.read_text()):
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    state = json.loads(state_path.read_text())
    assert not (out / "README.md").exists()  # an interrupted folder never looks complete
    rerun = subprocess.run(args, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resuming" in rerun.stderr
    return state


def test_kill_9_mid_build_then_rerun_gives_the_same_folder(reference, tmp_path):
    fmow, ref = reference
    out = tmp_path / "out"
    state = _kill_then_rerun(fmow, out, '"rows"')
    n_shards = sum(1 for p in (ref / "data").glob("*-of-*.parquet"))
    assert not state.get("complete") and 0 < len(state["shards"]) < n_shards, "the kill did not land mid-build"
    assert _listing(out) == _listing(ref)
    assert not list(out.rglob("*.tmp"))


@pytest.fixture(scope="module")
def sequence_reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume_sequences")
    fmow = root / "fmow"
    generate_tree(SynthConfig(out=str(fmow), locations=14, seed=7, image_size=64, oversize_fraction=0, min_dates=3))
    _build(fmow, root / "ref", sequences=True, max_frames=4)
    return fmow, root / "ref"


def test_kill_9_while_writing_the_sequences_then_rerun_gives_the_same_folder(sequence_reference, tmp_path):
    fmow, ref = sequence_reference
    out = tmp_path / "out"
    state = _kill_then_rerun(fmow, out, '"data/sequences/', "--sequences", "--max-frames", "4")
    done = [path for path in state["shards"] if path.startswith("data/sequences/")]
    n_shards = sum(1 for p in (ref / "data" / "sequences").glob("*-of-*.parquet"))
    assert not state.get("complete") and 0 < len(done) < n_shards, "the kill did not land among the sequences"
    assert _listing(out) == _listing(ref)
    assert not list(out.rglob("*.tmp"))


def test_num_proc_writes_the_same_sequences(sequence_reference, tmp_path):
    fmow, ref = sequence_reference
    _build(fmow, tmp_path / "par", sequences=True, max_frames=4, num_proc=2)
    assert _listing(tmp_path / "par") == _listing(ref)


def test_num_proc_writes_the_same_folder(reference, tmp_path):
    fmow, ref = reference
    _build(fmow, tmp_path / "par", num_proc=2)
    assert _listing(tmp_path / "par") == _listing(ref)


def test_a_rerun_skips_finished_shards_and_reuses_answers(reference, tmp_path, caplog):
    fmow, _ = reference
    out = tmp_path / "out"
    _build(fmow, out)
    shards = sorted((out / "data").glob("*-of-*.parquet"))
    stamps = {p: p.stat().st_mtime_ns for p in shards}
    shards[0].unlink()
    state = json.loads((out / STATE_FILE).read_text())
    state.pop("complete")
    (out / STATE_FILE).write_text(json.dumps(state))
    caplog.set_level("INFO")
    _build(fmow, out)
    assert shards[0].exists()
    assert all(p.stat().st_mtime_ns == stamps[p] for p in shards[1:])
    assert "answer(s) already written" in caplog.text and f"{len(stamps) - 1} of {len(stamps)} shards" in caplog.text


def test_other_options_into_the_same_folder_start_over(reference, tmp_path):
    fmow, _ = reference
    out = tmp_path / "out"
    _build(fmow, out)
    _build(fmow, out, no_videos=True, shard_rows=3, sample_size=0)
    _build(fmow, tmp_path / "fresh", no_videos=True, shard_rows=3, sample_size=0)
    assert _listing(out) == _listing(tmp_path / "fresh")
    assert not (out / "videos").exists()


def test_other_inputs_into_the_same_folder_start_over(tmp_path):
    fmow = _tree(tmp_path / "fmow", locations=6, seed=1)
    _build(fmow, tmp_path / "out", no_videos=True)
    first = json.loads((tmp_path / "out" / STATE_FILE).read_text())["fingerprint"]
    extra = next((fmow / "train").rglob("*_rgb.jpg"))
    os.utime(extra, ns=(1, 1))  # the same files, touched: a new listing
    _build(fmow, tmp_path / "out", no_videos=True)
    assert json.loads((tmp_path / "out" / STATE_FILE).read_text())["fingerprint"] != first
