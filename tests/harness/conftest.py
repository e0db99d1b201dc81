"""Fixtures of the harness tests: small datasets built by the project's own commands, a tiny model, served."""

from pathlib import Path

import pytest

from dataset_builder.build import main as build_main
from dataset_builder.levircc import main as build_levircc
from dataset_builder.synthetic.synth import main as synth_main
from tests.serving.server import transformers_serve
from trainer.tiny.build import build_tiny_model


@pytest.fixture(scope="session")
def geollava_dataset(tmp_path_factory) -> Path:
    """The GeoLLaVA pairs of a synthetic fMoW tree (true ``changes`` known), as ``geollava-build`` writes them."""
    root = tmp_path_factory.mktemp("geollava")
    synth_main(["--out", str(root / "fmow"), "--locations", "16", "--seed", "11", "--image_size", "64"])
    build_main(["--fmow_root", str(root / "fmow"), "--out", str(root / "dataset"), "--frame_size", "32"])
    return root / "dataset"


@pytest.fixture(scope="session")
def sequences_dataset(tmp_path_factory) -> Path:
    """A synthetic fMoW tree whose every location has 3 dates or more, built with ``--sequences`` (5 test rows)."""
    root = tmp_path_factory.mktemp("sequences")
    synth_main(
        ["--out", str(root / "fmow"), "--locations", "24", "--seed", "11", "--image_size", "64", "--min_dates", "3"]
    )
    build_main(
        ["--fmow_root", str(root / "fmow"), "--out", str(root / "dataset"), "--frame_size", "32", "--sequences"]
    )
    return root / "dataset"


@pytest.fixture(scope="session")
def levircc_dataset(tmp_path_factory) -> Path:
    """A synthetic LEVIR-CC tree (5 references a pair), as ``geollava-build-levircc`` writes it."""
    root = tmp_path_factory.mktemp("levircc")
    synth_main(["--format", "levir-cc", "--out", str(root / "levir"), "--pairs", "24", "--seed", "3"])
    build_levircc(["--root", str(root / "levir"), "--out", str(root / "dataset")])
    return root / "dataset"


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory) -> Path:
    """A tiny Qwen2.5-VL: the family that takes the two dates as two images, as lmms-eval's model classes send them."""
    return build_tiny_model("qwen2.5-vl", tmp_path_factory.mktemp("tiny-qwen"), image_size=32)


@pytest.fixture(scope="session")
def served_qwen(tiny_qwen, tmp_path_factory) -> str:
    """The tiny Qwen2.5-VL behind ``transformers serve``: its OpenAI base URL."""
    with transformers_serve(tiny_qwen, log=tmp_path_factory.mktemp("serve") / "serve.log") as url:
        yield url
