"""Shared tiny releases (base, masked adapter, merged export) and a tiny split, built once per session."""

import pytest

from tests.serving.helpers import tiny_release, tiny_split


@pytest.fixture(scope="session")
def release_of(tmp_path_factory):
    """``release_of(family)``: the family's :class:`~tests.serving.helpers.TinyRelease`, built on first use."""
    built = {}

    def get(family: str):
        if family not in built:
            built[family] = tiny_release(family, tmp_path_factory.mktemp(family))
        return built[family]

    return get


@pytest.fixture(scope="session")
def split_dir(tmp_path_factory):
    """A Hub-layout dataset folder with a 6-row ``test`` split."""
    return tiny_split(tmp_path_factory.mktemp("split"))
