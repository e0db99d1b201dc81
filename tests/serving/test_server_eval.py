"""geollava-eval and geollava-predict through a real `transformers serve` of each merged tiny model vLLM serves."""

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from datasets import load_dataset
from PIL import Image

from tests.serving.helpers import SERVED_FAMILIES
from tests.serving.server import SITE, TransformersServer, transformers_serve
from trainer.evaluation import predict, run_eval
from trainer.evaluation.server_backend import chat_request


ROOT = Path(__file__).resolve().parents[2]
EVAL = ["--split", "test", "--max_new_tokens", "8", "--meteor", "false", "--model_metrics", "false"]
#: What differs between two runs of the same predictions: where they were written, how long they took, where they ran.
RUN_ONLY = {"out", "generation_seconds", "rows_per_s", "generation_device", "padding_side", "batch_size"}
RUN_ONLY |= {"rows_generated"}
RUN_ONLY |= {"server", "served_model", "concurrency", "client_seconds_per_row", "server_seconds_per_row"}
RUN_ONLY |= {"retries_by_reason", "timeout_s", "max_retries", "backoff_s", "backoff_max_s"}


def comparable(metrics: dict) -> dict:
    """The metrics without the timings and the run's own settings of how it was generated."""
    out = {k: v for k, v in metrics.items() if k != "timings_s"}
    out["run"] = {k: v for k, v in metrics["run"].items() if k not in RUN_ONLY}
    return out


DECODE = """
import json, sys
import numpy as np
from transformers import AutoProcessor
from transformers.audio_utils import load_audio
processor = AutoProcessor.from_pretrained(sys.argv[1])
parts = json.loads(open(sys.argv[2]).read())
decoded = []
for part in parts:
    if part["type"] == "video_url":
        url = part["video_url"]["url"]
        video, _ = processor.video_processor.fetch_videos(url)  # what the server's processor does with a video_url
        audio = load_audio(url, sampling_rate=16000)  # and with its audio track
        frames = np.asarray(video).transpose(0, 2, 3, 1).tolist()
        decoded.append({"video": frames, "audio_peak": float(abs(audio).max())})
    elif part["type"] == "image_url":
        image = processor.image_processor.fetch_images(part["image_url"]["url"])  # PIL, or a (C, H, W) tensor
        array = np.moveaxis(np.asarray(image), 0, -1) if hasattr(image, "permute") else np.asarray(image)
        decoded.append({"image": array.tolist()})
print(json.dumps(decoded))
"""


@pytest.mark.parametrize("family", SERVED_FAMILIES)
def test_the_server_decodes_exactly_the_dataset_frames(family, release_of, tmp_path):
    rng = np.random.default_rng(3)
    frames = [Image.fromarray(rng.integers(0, 255, (30, 26, 3), dtype=np.uint8)) for _ in range(2)]
    body = chat_request(family, "What changed?", frames, model="m", max_new_tokens=4)
    parts = body["messages"][0]["content"]
    assert parts[-1] == {"type": "text", "text": "What changed?"} and body["temperature"] == 0.0
    (tmp_path / "parts.json").write_text(json.dumps(parts[:-1]))
    env = {**os.environ, "PYTHONPATH": f"{SITE}{os.pathsep}{ROOT}"}  # the server's own import path
    proc = subprocess.run(
        [sys.executable, "-c", DECODE, str(release_of(family).merged), str(tmp_path / "parts.json")],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    decoded = json.loads(proc.stdout.splitlines()[-1])
    want = np.stack([np.asarray(f) for f in frames])
    if family == "qwen2.5-vl":  # two PNG images
        assert [p["type"] for p in parts[:-1]] == ["image_url", "image_url"] and "chat_template_kwargs" not in body
        assert np.array_equal(np.array([d["image"] for d in decoded], dtype=np.uint8), want)
    else:  # one 2-frame clip, every frame asked for, a silent audio track
        assert [p["type"] for p in parts[:-1]] == ["video_url"] and body["chat_template_kwargs"] == {"num_frames": 2}
        assert parts[0]["video_url"]["url"].startswith("data:video/mp4;base64,")
        (clip,) = decoded
        assert np.array_equal(np.array(clip["video"], dtype=np.uint8), want) and clip["audio_peak"] == 0.0


def frames_key(frames: list[np.ndarray], video: bool) -> list[tuple]:
    """How the frames of one request are told apart: one clip ``(T, H, W, 3)``, or one entry per image."""
    arrays = [np.stack(frames)] if video else frames
    return [(a.shape, a.tobytes()) for a in arrays]


@pytest.mark.slow
@pytest.mark.parametrize("family", SERVED_FAMILIES)
def test_eval_through_the_server_equals_in_process_eval(family, release_of, split_dir, tmp_path, capsys, monkeypatch):
    merged = release_of(family).merged
    local = tmp_path / "local"
    assert run_eval.main(["--model", str(merged), "--dataset", str(split_dir), "--out", str(local), *EVAL]) == 0
    decoded = tmp_path / "decoded"
    decoded.mkdir()
    monkeypatch.setenv("GEOLLAVA_SERVE_RECORD", str(decoded))  # the server saves every image and video it decoded
    with transformers_serve(merged, log=tmp_path / "serve.log") as url:
        served = tmp_path / "served"
        args = ["--model", str(merged), "--server", url, "--concurrency", "3"]
        assert run_eval.main([*args, "--dataset", str(split_dir), "--out", str(served), *EVAL]) == 0
        # geollava-predict through the same server says what in-process geollava-predict says
        pair = [str(tmp_path / f"{name}.png") for name in ("before", "after")]
        rng = np.random.default_rng(5)
        for path in pair:
            Image.fromarray(rng.integers(0, 255, (28, 30, 3), dtype=np.uint8)).save(path)
        capsys.readouterr()
        assert predict.main(["--model", str(merged), "--server", url, "--max_new_tokens", "8", *pair]) == 0
        remote_text = capsys.readouterr().out.splitlines()[-1]
    assert predict.main(["--model", str(merged), "--max_new_tokens", "8", *pair]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == remote_text

    # what the server decoded is exactly the dataset's frames (and the pair's), no more, no less
    video = family != "qwen2.5-vl"
    want = Counter()
    for frames in [*load_dataset(str(split_dir), split="test")["frames"], [Image.open(p) for p in pair]]:
        want.update(frames_key([np.asarray(f.convert("RGB")) for f in frames], video))
    seen = Counter((a.shape, a.tobytes()) for a in map(np.load, sorted(decoded.glob("*.npy"))))
    assert seen == want and sorted({p.stem.split("-")[1] for p in decoded.iterdir()}) == [
        "video" if video else "image"
    ]

    assert (served / "predictions.jsonl").read_bytes() == (local / "predictions.jsonl").read_bytes()
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (local, served))
    assert comparable(a) == comparable(b)
    assert b["run"]["served_model"] == str(merged) and b["run"]["server"] == url and b["run"]["rows_generated"] == 6
    assert 0 < b["run"]["client_seconds_per_row"] < b["run"]["server_seconds_per_row"]
    record = json.loads((served / "generation_config.json").read_text())
    assert (
        record["served_model"] == str(merged)
        and json.loads((local / "generation_config.json").read_text())["served_model"] is None
    )


def _eval_process(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "trainer.evaluation.run_eval", *args]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_server_killed_mid_run_names_the_rows_left_and_the_rerun_finishes_them(release_of, tmp_path):
    from tests.serving.helpers import tiny_split

    merged = release_of("llava-next-video").merged
    data = tiny_split(tmp_path, n=10, seed=1)
    out = tmp_path / "eval"
    predictions = out / "predictions.jsonl"
    server = TransformersServer(merged, log=tmp_path / "serve-1.log")
    options = ["--model", str(merged), "--dataset", str(data), "--out", str(out), *EVAL]
    options += ["--concurrency", "1", "--max_retries", "1", "--backoff_s", "0.1", "--backoff_max_s", "0.2"]
    try:
        url = server.start()
        proc = _eval_process([*options, "--server", url])
        deadline = time.monotonic() + 300
        while not (predictions.exists() and len(predictions.read_text().splitlines()) >= 3):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        server.kill()
        _, stderr = proc.communicate(timeout=300)
    finally:
        server.stop()
    assert proc.returncode == 1, stderr[-3000:]
    first = predictions.read_text().splitlines()
    done = [json.loads(line)["id"] for line in first]
    left = [f"farm_{i}_0-farm_{i}_1" for i in range(10) if f"farm_{i}_0-farm_{i}_1" not in done]
    assert 3 <= len(done) < 10
    message = stderr.strip().splitlines()[-1]
    assert f"{len(left)} row(s) left without a prediction: {', '.join(left)}" in message, message
    assert not (out / "metrics.json").exists()

    with transformers_serve(merged, log=tmp_path / "serve-2.log") as url:  # another port: the same served model
        proc = _eval_process([*options, "--server", url])
        _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    final = predictions.read_text().splitlines()
    assert final[: len(first)] == first  # the rows done are neither redone nor rewritten
    assert sorted(json.loads(line)["id"] for line in final) == sorted(done + left)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["rows_generated"] == len(left) and metrics["run"]["rows_reused"] == len(done)
    assert metrics["n_rows"] == 10


def test_server_options_that_mean_nothing_for_a_served_model_are_refused(split_dir, tmp_path, capsys):
    args = ["--model", "m", "--dataset", str(split_dir), "--out", str(tmp_path), "--server", "http://127.0.0.1:9/v1"]
    assert run_eval.main([*args, "--adapter", "a"]) == 1
    assert "geollava-export" in capsys.readouterr().err
    assert run_eval.main([*args, "--num_beams", "3"]) == 1
    assert "beam" in capsys.readouterr().err
    assert run_eval.main([*args[:-1], "127.0.0.1:9"]) == 2
    assert "http(s) URL" in capsys.readouterr().err


@pytest.mark.parametrize("family", SERVED_FAMILIES)
def test_a_dated_sequence_is_asked_as_in_process(family):
    from trainer.models.families import build_messages

    rng = np.random.default_rng(4)
    frames = [rng.integers(0, 255, (20, 22, 3), dtype=np.uint8) for _ in range(3)]
    dates = ["2016-03-02", "2017-08-15", "2019-01-30"]
    body = chat_request(family, "How did it change?", frames, model="m", max_new_tokens=4, dates=dates)
    parts = body["messages"][0]["content"]
    local = build_messages(family, "How did it change?", frames, dates=dates)[0]["content"]
    kinds = {"video": "video_url", "image": "image_url", "text": "text"}
    assert [p["type"] for p in parts] == [kinds[p["type"]] for p in local]  # the same parts, in the same order
    assert [p["text"] for p in parts if p["type"] == "text"] == [p["text"] for p in local if p["type"] == "text"]
    assert any("2017-08-15" in p["text"] for p in parts if p["type"] == "text")
    if "video_url" in [p["type"] for p in parts]:
        assert body["chat_template_kwargs"] == {"num_frames": 3}
    else:
        assert [p["type"] for p in parts].count("image_url") == 3
