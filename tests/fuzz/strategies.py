"""Hypothesis strategies for hostile inputs: wrong-typed JSON, corrupted and truncated bytes, deep nesting."""

import json

from hypothesis import strategies as st


def json_values(max_leaves: int = 10):
    """Any JSON value: the wrong type for every field."""
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=max_leaves,
    )


@st.composite
def mutated(draw, seed: bytes) -> bytes:
    """``seed`` as is, truncated, with bytes overwritten (mostly in the header), spliced, or replaced by noise."""
    data = bytearray(seed)
    kind = draw(st.sampled_from(["as_is", "truncate", "overwrite", "splice", "noise"]))
    if kind == "truncate":
        del data[draw(st.integers(0, max(0, len(data) - 1))) :]
    elif kind == "overwrite" and data:
        for _ in range(draw(st.integers(1, 8))):
            end = len(data) - 1 if draw(st.booleans()) else min(len(data) - 1, 300)  # headers live up front
            data[draw(st.integers(0, end))] = draw(st.integers(0, 255))
    elif kind == "splice":
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(min_size=1, max_size=64))
    elif kind == "noise":
        data = bytearray(draw(st.binary(max_size=600)))
    return bytes(data)


def deep_nesting(depth: int) -> bytes:
    """``[[[...]]]``: deeper than Python's recursion limit for large ``depth``."""
    return b"[" * depth + b"]" * depth


def hostile_json(valid) -> st.SearchStrategy[bytes]:
    """Bytes of a JSON file: ``valid`` (a strategy of Python objects) dumped, or that text corrupted, or worse."""
    dumped = valid.map(lambda obj: json.dumps(obj).encode())
    return st.one_of(
        dumped,
        dumped.flatmap(mutated),
        json_values().map(lambda obj: json.dumps(obj).encode()),
        st.integers(1, 200_000).map(deep_nesting),
        st.just(b"1" * 5000),  # past Python's int-parsing digit limit
        st.binary(max_size=200),
        st.sampled_from([b"", b"\xef\xbb\xbf{}", b"NaN", b"\xff\xfe{\x00}\x00", b"{" * 3]),
    )
