"""The predictions JSONL of geollava-score, fuzzed: every non-blank line is scored or skipped with its line and
reason; the CLI exits 0 (metrics written) or 2 (a message); never an exception."""

import io
import json
import tempfile
from pathlib import Path
from unittest import mock

from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.outcomes import fuzz_settings, record
from tests.fuzz.strategies import deep_nesting, json_values
from trainer.evaluation import metrics
from trainer.evaluation.score import collect_rows, main


PARSER = "predictions JSONL (geollava-score)"
WORDS = st.text(st.sampled_from("abc .\n\t\u00e9\u2028"), max_size=30)
ROW = st.fixed_dictionaries(
    {},
    optional={
        "id": st.integers(0, 5) | st.text(max_size=3) | json_values(),
        "prediction": WORDS | json_values(),
        "references": st.lists(WORDS, max_size=3) | json_values(),
        "reference": WORDS | json_values(),
        "category": st.sampled_from(["barn", "dam"]) | json_values(),
        "changes": st.lists(
            st.fixed_dictionaries({"kind": st.sampled_from(["building", ""]) | json_values()}), max_size=2
        )
        | json_values(),
    },
)
LINE = st.one_of(
    ROW.map(lambda r: json.dumps(r).encode()),
    json_values().map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=40).filter(lambda b: b"\n" not in b),
    st.integers(1, 100_000).map(deep_nesting),
    st.sampled_from(
        [b"", b"   ", b"\xff\xfe", b'{"id": 1, "prediction": "a", "references": ["b"]', b"\xef\xbb\xbf{}"]
    ),
)
FILES = st.lists(LINE, max_size=8).map(b"\n".join)
SENTENCE = st.lists(
    st.sampled_from(["a", "new", "building", "road", "no", "change", ".", "\u00e9", "\n"]), min_size=1, max_size=8
)
GOOD_ROW = st.fixed_dictionaries(
    {
        "id": st.text(max_size=4),
        "prediction": SENTENCE.map(" ".join),
        "references": st.lists(SENTENCE.map(" ".join), min_size=1, max_size=3),
    },
    optional={
        "category": st.sampled_from(["barn", "dam"]),
        "changes": st.lists(st.fixed_dictionaries({"kind": st.sampled_from(["building", "road"])}), max_size=2),
    },
)
#: Mostly scorable files, so that the CLI goes past reading into scoring.
MOSTLY_GOOD = st.lists(GOOD_ROW.map(lambda r: json.dumps(r).encode()) | LINE, min_size=1, max_size=6).map(b"\n".join)


def _non_blank_lines(data: bytes) -> int:
    text = data.decode("utf-8", errors="surrogateescape")
    return sum(1 for line in io.StringIO(text, newline=None) if line.strip())


@fuzz_settings(PARSER, "collect_rows", max_examples=200, deadline_ms=5000)
@given(data=FILES, references=st.none() | FILES | MOSTLY_GOOD)
def test_collect_rows(data, references):
    with tempfile.TemporaryDirectory() as tmp:
        path, refs_path = Path(tmp) / "predictions.jsonl", Path(tmp) / "references.jsonl"
        path.write_bytes(data)
        if references is not None:
            refs_path.write_bytes(references)
        rows, skipped, n_empty = collect_rows(path, refs_path if references is not None else None)
    own = [s for s in skipped if s["file"] == str(path)]
    assert len(rows) + len(own) == _non_blank_lines(data)
    assert all(s["file"] in (str(path), str(refs_path)) and s["reason"] for s in skipped)
    assert all(isinstance(s["line"], int) for s in own)
    for row in rows:
        assert isinstance(row.id, str) and isinstance(row.prediction, str)
        assert row.references and all(isinstance(r, str) and r.strip() for r in row.references)
        assert row.category is None or isinstance(row.category, str)
        assert row.changes is None or all(isinstance(c["kind"], str) for c in row.changes)
    assert 0 <= n_empty <= len(rows)
    record(PARSER, "some lines skipped, each named by line" if skipped else "accepted")


@fuzz_settings(PARSER, "CLI", max_examples=40, deadline_ms=30_000)
@given(data=MOSTLY_GOOD)
def test_cli(data):
    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(metrics, "java_available", return_value=False):
        path, out = Path(tmp) / "predictions.jsonl", Path(tmp) / "metrics.json"
        path.write_bytes(data)
        code = main(["--predictions", str(path), "--out", str(out), "--meteor", "false", "--model_metrics", "false"])
        assert code in (0, 2)
        if code == 0:
            result = json.loads(out.read_text())
            assert result["n_rows"] >= 1 and result["n_skipped"] == len(result["skipped"])
            record(PARSER, "CLI: scored (exit 0), skipped lines listed in the output")
        else:
            assert not out.exists()
            record(PARSER, "CLI: refused with a message (exit 2)")
