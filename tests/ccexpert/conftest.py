"""Shared tiny CCExpert for the area's tests (built once per session, a few seconds)."""

import numpy as np
import pytest

from trainer.tiny.ccexpert import build_tiny_ccexpert


CORPUS = [
    "there is no difference",
    "the scene is the same as before",
    "a road has been built along the river",
    "many houses are built on the bare land",
    "some buildings are demolished near the road",
    "What difference happened from Image1 to Image2?",
] * 5


@pytest.fixture(scope="session")
def tiny_ccexpert(tmp_path_factory):
    """Folder of a tiny CCExpert (output gate 1, as the authors' residual add)."""
    return build_tiny_ccexpert(tmp_path_factory.mktemp("tiny-ccexpert"), corpus=CORPUS)


@pytest.fixture
def random_pair():
    """``random_pair(seed)``: two random 64 px RGB frames."""

    def make(seed: int, size: int = 64) -> list[np.ndarray]:
        rng = np.random.default_rng(seed)
        return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(2)]

    return make
