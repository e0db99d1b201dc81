import base64
import json
import math
from dataclasses import replace

import pyarrow.parquet as pq
import pytest
from datasets import load_dataset

from dataset_builder.annotation import get_annotator
from dataset_builder.annotation.cli import main as annotate_main
from dataset_builder.annotation.cli import row_answers
from dataset_builder.annotation.openai.annotator import OpenAIAnnotator
from dataset_builder.annotation.openai.cache import sha256_hex
from dataset_builder.build import main as build_main
from dataset_builder.prompts import ANNOTATION_PROMPT, SEQUENCE_ANNOTATION_PROMPT
from tests.annotation.helpers import pair_requests, sequence_requests
from tests.annotation.test_build_with_openai import build_args, write_tree


def run(options, reqs, **kw):
    annotator = get_annotator("openai", **{**options, **kw})
    try:
        results = {r.id: r for r in annotator.annotate(reqs)}
    finally:
        annotator.close()
    return annotator, results


def _images(body: dict) -> list[bytes]:
    parts = body["messages"][0]["content"]
    return [base64.b64decode(p["image_url"]["url"].split(",", 1)[1]) for p in parts if p["type"] == "image_url"]


def _check_bodies(bodies: list[dict], requests) -> None:
    """Each sequence went as the sequences prompt, then each of its frames after "Image k (its date):"."""
    by_images = {tuple(_images(body)): body for body in bodies}
    for request in requests:
        content = by_images[request.frames_jpeg]["messages"][0]["content"]
        if request.timestamps is None:
            assert content[0] == {"type": "text", "text": ANNOTATION_PROMPT} and len(content) == 3
            continue
        assert content[0] == {"type": "text", "text": SEQUENCE_ANNOTATION_PROMPT}
        labels = [part["text"] for part in content[1::2]]
        assert labels == [f"Image {k} ({ts[:10]}):" for k, ts in enumerate(request.timestamps, 1)]
        assert [part["type"] for part in content[2::2]] == ["image_url"] * len(request.timestamps)


def test_a_sequence_is_asked_with_each_frame_after_its_date(server, fast_options, api_key):
    server.state.record_bodies = True
    reqs = [*sequence_requests(2, frames=3), *sequence_requests(1, frames=5, start=2), *pair_requests(1)]
    annotator, results = run(fast_options, reqs)
    assert {r.status for r in results.values()} == {"ok"} and len(results) == 4
    _check_bodies(server.state.bodies, reqs)
    report = annotator.report()
    assert (report["pairs"], report["sequences"], report["sequence_prompt"]) == (4, 3, SEQUENCE_ANNOTATION_PROMPT)
    # the estimate counts every image and every label, as the server bills them
    tokens = report["tokens"]
    assert tokens["actual_input"] == tokens["estimated_input"] == tokens["estimated_input_of_answered"]
    five = annotator.plan(reqs[2]).input_tokens
    labels = sum(math.ceil(len(f"Image {k} (2004-01-10):") / 4) for k in range(1, 6))
    assert five == 6 + math.ceil(len(SEQUENCE_ANNOTATION_PROMPT) / 4) + labels + 5 * 2833
    before = server.state.requests
    annotator, again = run(fast_options, reqs)
    assert server.state.requests == before and annotator.report()["cached"] == 4
    assert {k: r.text for k, r in again.items()} == {k: r.text for k, r in results.items()}


def test_the_cache_key_holds_every_frame_and_every_date_shown(fast_options):
    annotator = OpenAIAnnotator(**fast_options)
    try:
        (seq,) = sequence_requests(1, frames=4)
        frames, dates = list(seq.frames_jpeg), list(seq.timestamps)
        key = annotator.plan(seq).key
        other_frame = replace(seq, frames_jpeg=(*frames[:2], frames[3], frames[3]))
        other_date = replace(seq, timestamps=(*dates[:2], "2009-09-09T10:30:00Z", dates[3]))
        other_time = replace(seq, timestamps=(*dates[:2], dates[2].replace("10:30", "23:59"), dates[3]))
        assert annotator.plan(other_frame).key != key and annotator.plan(other_date).key != key
        assert annotator.plan(other_time).key == key  # the same dates are shown: the same request
        assert annotator.plan(replace(seq, timestamps=None, frames_jpeg=tuple(frames[:2]))).key != key
        with pytest.raises(ValueError, match="4 images but 3 timestamps"):
            annotator.plan(replace(seq, timestamps=tuple(dates[:3])))
        # a pair's key is what it always was: its prompt and parameters, and its two images
        (pair,) = pair_requests(1)
        params = {"prompt": ANNOTATION_PROMPT, "temperature": 0.2, "max_tokens": 300}
        params |= {"image_detail": "low", "image_max_side": 512}
        expected = f"{pair.id}|gpt-4o-mini|{sha256_hex(json.dumps(params, sort_keys=True))}|"
        assert annotator.plan(pair).key == expected + sha256_hex(*pair.frames_jpeg)
    finally:
        annotator.close()


def test_sequences_through_the_batch_api(server, fast_options, api_key):
    server.state.record_bodies = True
    reqs = [*sequence_requests(3, frames=4), *pair_requests(2)]
    annotator, results = run(fast_options, reqs, batch=True)
    assert {r.status for r in results.values()} == {"ok"} and len(results) == 5
    _check_bodies(server.state.bodies, reqs)
    assert annotator.report()["sequences"] == 3
    billed = dict(server.state.billed)
    annotator, again = run(fast_options, reqs, batch=True)
    assert dict(server.state.billed) == billed and max(billed.values()) == 1 and annotator.report()["cached"] == 5


def test_the_budget_counts_every_frame_of_a_sequence(server, fast_options, api_key):
    reqs = sequence_requests(4, frames=6)
    probe = OpenAIAnnotator(**fast_options)
    sequence, pair = probe.plan(reqs[0]), probe.plan(pair_requests(1)[0])
    assert sequence.input_tokens > 2.9 * pair.input_tokens  # six images, not two
    cap = probe.worst_case_usd(sequence) * 1.5  # room for one sequence at its worst case
    probe.close()
    annotator, results = run({**fast_options, "concurrency": 1}, reqs, max_cost_usd=cap)
    report = annotator.report()
    assert report["budget_stopped"] and report["succeeded"] == 1 and report["not_sent_budget"] == 3
    _, results = run(fast_options, reqs, max_cost_usd=cap * 10)
    assert {r.status for r in results.values()} == {"ok"}
    assert max(server.state.successes.values()) == 1 and server.state.total_successes() == 4


def test_row_answers_strip_a_sequence_s_split():
    assert row_answers({"train/barn_0": "a", "barn_0_1-barn_0_0": "b"}) == {"barn_0": "a", "barn_0_1-barn_0_0": "b"}


def test_geollava_build_with_openai_writes_the_sequences_config(tmp_path, server, fast_options, api_key, capsys):
    write_tree(tmp_path / "fmow", years=(2010, 2012, 2014))
    server.state.record_bodies = True
    out = tmp_path / "out"
    args = [*build_args(tmp_path, "openai", fast_options), "--sequences"]
    assert build_main([*args, "--dry_run", "true"]) == 0, capsys.readouterr().err
    assert "dry run: 6 pairs and 3 sequences estimated" in capsys.readouterr().out
    assert server.state.requests == 0
    assert build_main(args) == 0, capsys.readouterr().err
    assert server.state.total_successes() == 9  # 2 pairs and a sequence per location
    sequences = load_dataset(str(out), "sequences", split="train")
    assert sequences.num_rows == 3 and all(len(row["frames"]) == 3 for row in sequences)
    assert all(row["conversations"][1]["value"].startswith("The first image shows") for row in sequences)
    bodies = [b for b in server.state.bodies if b["messages"][0]["content"][0]["text"] == SEQUENCE_ANNOTATION_PROMPT]
    assert len(bodies) == 3 and all(len(_images(body)) == 3 for body in bodies)
    labels = {part["text"] for body in bodies for part in body["messages"][0]["content"][1::2]}
    assert labels == {"Image 1 (2010-05-01):", "Image 2 (2012-05-01):", "Image 3 (2014-05-01):"}
    report = json.loads((out / "build_report.json").read_text())
    assert report["annotation"]["sequence_prompt"] == SEQUENCE_ANNOTATION_PROMPT
    assert report["annotation"]["sequences_not_annotated"] == {} and report["sequences"]["rows_per_split"] == {
        "train": 3
    }
    assert json.loads((out / "annotation_report.json").read_text())["sequences"] == 3
    assert SEQUENCE_ANNOTATION_PROMPT in (out / "README.md").read_text()


@pytest.mark.parametrize("batch", [False, True])
def test_geollava_annotate_fills_the_sequences_config(batch, tmp_path, server, fast_options, api_key):
    write_tree(tmp_path / "fmow", years=(2010, 2012, 2014, 2016))
    server.state.record_bodies = True
    out = tmp_path / "out"
    assert build_main([*build_args(tmp_path, "none", sample_size=2), "--sequences"]) == 0
    args = [str(out), *(x for key, value in fast_options.items() for x in (f"--{key}", str(value)))]
    assert annotate_main([*args, "--batch", str(batch)]) == 0
    # 9 pairs and 3 sequences asked; the 2 sample_10k rows reuse their pairs' answers
    assert server.state.total_successes() == 12 and max(server.state.successes.values()) == 1
    for config in ("default", "sample_10k", "sequences"):
        rows = load_dataset(str(out), config, split="train")
        assert all(row["conversations"][-1]["value"] for row in rows), config
    stored = pq.read_table(out / "data" / "sequences" / "train-00000-of-00001.parquet", columns=["frames"])
    asked = [b for b in server.state.bodies if b["messages"][0]["content"][0]["text"] == SEQUENCE_ANNOTATION_PROMPT]
    assert sorted(len(_images(b)) for b in asked) == [4, 4, 4]
    assert {tuple(_images(b)) for b in asked} == {
        tuple(f["bytes"] for f in row) for row in stored["frames"].to_pylist()
    }
    assert "config_name: sequences" in (out / "README.md").read_text()
