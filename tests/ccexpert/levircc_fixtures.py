"""A tiny LEVIR-CC tree in the official layout (until ``geollava-synth --format levir-cc`` lands, and beside it)."""

import json
from pathlib import Path

import numpy as np
from PIL import Image

from dataset_builder.synthetic.levircc_synth import caption_entry, make_split_folders


CHANGED = [
    " a road has been built along the river .",
    " many houses are built on the bare land .",
    " some buildings are demolished near the road .",
    " a new building appears in the top left corner .",
    " several villas are constructed beside the trees .",
]
UNCHANGED = [
    " there is no difference .",
    " the scene is the same as before .",
    " nothing has changed .",
    " the two scenes seem identical .",
    " no change has occurred .",
]


def write_levircc_tree(
    root: Path, pairs: dict[str, int] | None = None, *, size: int = 64, changeflag: bool = True, seed: int = 0
) -> dict:
    """Write ``LevirCCcaptions.json`` + ``images/{split}/{A,B}/{split}_NNNNNN.png``; return the JSON written.

    Odd pairs of each split are changed (B differs from A by a bright block) and carry changed captions; even ones
    are unchanged (B = A) with no-change captions. File numbers skip every third index, as the real release does.
    """
    pairs = pairs or {"train": 4, "val": 2, "test": 2}
    rng = np.random.default_rng(seed)
    images, imgid, sentid = [], 0, 0
    for split, count in pairs.items():
        make_split_folders(root, split)
        for k in range(count):
            filename = f"{split}_{3 * k // 2:06d}.png"
            before = rng.integers(0, 120, (size, size, 3), dtype=np.uint8)
            changed = k % 2 == 1
            after = before.copy()
            if changed:
                after[size // 4 : size // 2, size // 4 : size // 2] = 250
            Image.fromarray(before).save(root / "images" / split / "A" / filename)
            Image.fromarray(after).save(root / "images" / split / "B" / filename)
            raws = CHANGED if changed else UNCHANGED
            images.append(caption_entry(split, filename, imgid, sentid, raws, changed if changeflag else None))
            imgid += 1
            sentid += len(raws)
    data = {"images": images}
    (root / "LevirCCcaptions.json").write_text(json.dumps(data))
    return data
