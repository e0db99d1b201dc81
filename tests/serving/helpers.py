"""What the serving tests build the same way: a tiny base, a LoRA adapter with pruning masks, its merged export."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from PIL import Image

from dataset_builder.prompts import PROMPT_TEMPLATES, human_turn
from dataset_builder.rows import features
from tests.trainer.helpers import tiny_base_and_adapter
from trainer.export import export_merged
from trainer.models.families import get_family
from trainer.pruning.masks import save_masks
from trainer.pruning.methods import collect_targets


CAPTIONS = [
    "The first image shows farmland. The second image shows a new building in the north-east.",
    "Both images show the same forest. Nothing changed.",
    "A road was widened in the south. A new building appeared.",
    "The lake expanded to the west.",
    "The forest was cleared for construction.",
    "A parking lot was built next to the road.",
]
CORPUS = [*PROMPT_TEMPLATES, *CAPTIONS]
#: The families vLLM serves (and the tests serve through `transformers serve`).
SERVED_FAMILIES = ("llava-next-video", "llava-onevision", "qwen2.5-vl")


@dataclass(frozen=True)
class TinyRelease:
    """A tiny base, an adapter trained on it (random LoRA B, 30 % random pruning masks) and the merged export."""

    family: str
    base: Path
    adapter: Path
    merged: Path


def random_masks(base: Path, family: str, fraction: float = 0.3, seed: int = 0) -> dict[str, torch.Tensor]:
    """Masks pruning ``fraction`` of every language-model linear weight of ``base``, at random."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(base)
    generator = torch.Generator().manual_seed(seed)
    targets = collect_targets(model, get_family(family))
    return {name: torch.rand(layer.weight.shape, generator=generator) >= fraction for name, layer in targets.items()}


def suppress_special_tokens(model_dir: Path) -> None:
    """Keep a tiny random model from generating special tokens other than its end of text (a trained one does not).

    A random model emits ``<video>`` or ``<|image_pad|>`` mid-answer; servers differ on whether those reach the
    text (``transformers serve`` parses Qwen answers from the raw decode, ``generate`` callers skip special tokens),
    so the tiny releases never generate them, in-process and served alike.
    """
    from transformers import AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = GenerationConfig.from_pretrained(model_dir)
    ends = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    special = {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
    special |= set(tokenizer.all_special_ids)
    config.suppress_tokens = sorted(special - set(ends) - {tokenizer.eos_token_id})
    config.save_pretrained(model_dir)


def tiny_release(family: str, root: Path, *, sparse: bool = False) -> TinyRelease:
    """Build a tiny ``family`` base with a masked adapter in ``root`` and export it merged to ``root/merged``."""
    base, adapter = tiny_base_and_adapter(family, root, CORPUS)
    suppress_special_tokens(base)
    save_masks(random_masks(base, family), adapter, {"method": "random", "target_sparsity": 0.3})
    merged = root / "merged"
    export_merged(adapter, merged, sparse=sparse)
    return TinyRelease(family, base, adapter, merged)


def tiny_split(root: Path, n: int = 6, seed: int = 0) -> Path:
    """A Hub-layout dataset folder with a ``test`` split of ``n`` rows of random frames of several sizes.

    The folder is named for its rows: ``datasets`` caches a local folder by its name and config, not its content, so
    two different splits in folders of the same name would read back as whichever was loaded first.
    """
    rng = np.random.default_rng(seed)
    rows = {
        "id": [f"farm_{i}_0-farm_{i}_1" for i in range(n)],
        "category": [["farm", "forest", "lake"][i % 3] for i in range(n)],
        "frames": [
            [Image.fromarray(rng.integers(0, 255, (24 + i, 28 + 2 * (i % 2), 3), dtype=np.uint8)) for _ in range(2)]
            for i in range(n)
        ],
        "conversations": [
            [{"from": "human", "value": human_turn(i % 6)}, {"from": "gpt", "value": CAPTIONS[i % len(CAPTIONS)]}]
            for i in range(n)
        ],
    }
    data = root / f"dataset-{n}rows-seed{seed}"
    (data / "data" / "default").mkdir(parents=True)
    Dataset.from_dict(rows, features=features(columns=("id", "category", "frames", "conversations"))).to_parquet(
        data / "data" / "default" / "test-00000-of-00001.parquet"
    )
    (data / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: test\n"
        "    path: data/default/test-*.parquet\n---\n# tiny\n"
    )
    return data
