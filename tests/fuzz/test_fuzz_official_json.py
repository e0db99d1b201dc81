"""The official GeoLLaVA JSON (``--annotator import:PATH``), fuzzed: answers and per-entry problems naming the file
and the entry, or one ValueError naming the file; never another exception."""

from hypothesis import given
from hypothesis import strategies as st

from dataset_builder.annotation.imported import read_official
from tests.fuzz.hostile import file_with
from tests.fuzz.outcomes import fuzz_settings, record
from tests.fuzz.strategies import hostile_json, json_values


PARSER = "official GeoLLaVA JSON (import:PATH)"
TURN = st.fixed_dictionaries(
    {}, optional={"from": st.sampled_from(["human", "gpt"]) | json_values(), "value": st.text() | json_values()}
)
ENTRY = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text() | json_values(),
        "video": st.text() | json_values(),
        "conversations": st.lists(TURN | json_values(), max_size=3) | json_values(),
    },
)
FILES = hostile_json(st.lists(ENTRY | json_values(), max_size=6))


@fuzz_settings(PARSER, "file", max_examples=200, deadline_ms=5000)
@given(data=FILES)
def test_official_json(data):
    with file_with(data, "test.json") as path:
        try:
            answers, problems = read_official(path)
        except ValueError as err:
            assert str(path) in str(err), err
            record(PARSER, "refused: ValueError naming the file")
            return
    assert all(isinstance(k, str) and k and isinstance(v, str) for k, v in answers.items())
    assert all(p.startswith(f"{path} entry ") for p in problems)
    record(PARSER, "accepted, bad entries reported by index" if problems else "accepted")
