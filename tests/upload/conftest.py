"""Fixtures of the upload tests: a small dataset built by the real builder from a synthetic fMoW tree."""

import pytest

from dataset_builder.build import BuildConfig, build
from dataset_builder.synthetic.synth import SynthConfig, generate_tree


@pytest.fixture(scope="session")
def build_small_dataset(tmp_path_factory):
    """Builds the 16-location synthetic dataset (38 files: shards, clips, JSON, card) in a new folder."""

    def build_one(name: str):
        root = tmp_path_factory.mktemp(name)
        synth = SynthConfig(out=str(root / "fmow"), locations=16, seed=11, image_size=64, oversize_fraction=0)
        generate_tree(synth)
        cfg = BuildConfig(
            fmow_root=str(root / "fmow"), out=str(root / "dataset"), frame_size=32, shard_rows=6, sample_size=5
        )
        build(cfg)
        return root / "dataset"

    return build_one
