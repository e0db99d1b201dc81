"""A synthetic LEVIR-CC tree: the official layout, rendered scenes, 5 short references per pair.

Every reference names its change in words that :func:`dataset_builder.changes.extract_change_kinds` reads back, and
the unchanged ones in words that ``dataset_builder.levircc.infer_changeflag`` recognises.

    geollava-synth --format levir-cc --out outputs/synth-levircc --pairs 60 --seed 0

``LevirCCcaptions.json`` (Karpathy style: ``{"images": [{filepath, filename, imgid, split, sentids, sentences[5],
changeflag}]}``, each ``raw`` lowercase with a leading space and a space before the period, like the release) and
``images/{train,val,test}/{A,B}/{split}_NNNNNN.png`` at 256 x 256. About half of the pairs are unchanged.
"""

from pathlib import Path

import numpy as np

from dataset_builder.atomic import atomic_path, write_json
from dataset_builder.synthetic.render import render
from dataset_builder.synthetic.scenes import apply_change, possible_changes, random_scene


SPLITS = {"train": 0.7, "val": 0.15, "test": 0.15}
SHORT = {
    "building_built": (
        "some buildings are built in the {loc}",
        "new buildings appear in the {loc}",
        "many houses are built in the {loc}",
    ),
    "building_demolished": (
        "the buildings in the {loc} are demolished",
        "some buildings disappear in the {loc}",
        "the houses in the {loc} are removed",
    ),
    "road_built": ("a road is built in the {loc}", "a new road appears in the {loc}", "a road is paved in the {loc}"),
    "road_widened": (
        "the road in the {loc} is widened",
        "the road in the {loc} becomes wider",
        "the road in the {loc} gets wider",
    ),
    "field_to_construction": (
        "a construction site appears in the {loc}",
        "the land in the {loc} is under construction",
        "some bare land in the {loc} is dug up",
    ),
    "forest_cleared": (
        "the trees in the {loc} are cut down",
        "some trees in the {loc} are removed",
        "the woods in the {loc} disappear",
    ),
    "water_expanded": (
        "the lake in the {loc} becomes larger",
        "the water in the {loc} expands",
        "the pond in the {loc} grows",
    ),
    "water_shrunk": (
        "the lake in the {loc} becomes smaller",
        "the water in the {loc} shrinks",
        "the pond in the {loc} dries up",
    ),
}
UNCHANGED = (
    " there is no difference .",
    " the scene is the same as before .",
    " nothing has changed .",
    " the two scenes seem identical .",
    " no change has occurred .",
)


def references_for(change: dict | None, rng: np.random.Generator) -> list[str]:
    """Five LEVIR-style references (``" the road in the north is widened ."``) for one change, or for none."""
    if change is None:
        return list(UNCHANGED)
    loc = change["location"].replace("-", " ")
    options = [t.format(loc=loc) for t in SHORT[change["kind"]]]
    picks = [options[i % len(options)] for i in range(5)]
    rng.shuffle(picks)
    return [f" {text} ." for text in picks]


def make_split_folders(root: Path, split: str) -> None:
    """Create ``images/{split}/A`` and ``images/{split}/B`` under ``root``: where the official layout keeps a split."""
    for side in ("A", "B"):
        (root / "images" / split / side).mkdir(parents=True, exist_ok=True)


def caption_entry(
    split: str, filename: str, imgid: int, first_sentid: int, raws: list[str], changed: bool | None
) -> dict:
    """One pair's entry of ``LevirCCcaptions.json`` as the official release writes it.

    Args:
        split: ``train``, ``val`` or ``test`` (also the entry's ``filepath``).
        filename: The PNG's name in ``images/{split}/A`` and ``B``.
        imgid: The pair's running number over the whole file.
        first_sentid: The running number of its first sentence.
        raws: Its reference sentences, as the release spells them (leading space, spaced full stop).
        changed: Its ``changeflag``; ``None`` leaves the field out (as older copies of the release do).
    """
    sentences = [
        {"tokens": raw.split(), "raw": raw, "imgid": imgid, "sentid": first_sentid + i} for i, raw in enumerate(raws)
    ]
    entry = {"filepath": split, "filename": filename, "imgid": imgid, "split": split}
    entry |= {"sentids": [s["sentid"] for s in sentences], "sentences": sentences}
    if changed is not None:
        entry["changeflag"] = int(changed)
    return entry


def generate_levircc(root: Path, pairs: int, seed: int = 0, size: int = 256) -> dict:
    """Write a synthetic LEVIR-CC tree.

    Args:
        root: Folder to write into.
        pairs: Number of pairs (70 % train, 15 % val, 15 % test, at least one each).
        seed: The same seed writes the same bytes.
        size: Image side in pixels (LEVIR-CC's is 256).

    Returns:
        The number of pairs per split.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    plan, left = {}, pairs
    for split, share in list(SPLITS.items())[1:]:
        plan[split] = max(1, round(pairs * share))
        left -= plan[split]
    plan = {"train": max(1, left), **plan}
    images, imgid, sentid = [], 0, 0
    for split, count in plan.items():
        make_split_folders(root, split)
        for k in range(count):
            filename = f"{split}_{k + 1:06d}.png"
            scene = random_scene(rng)
            kinds = possible_changes(scene)
            change = None
            if rng.random() < 0.5 and kinds:
                after, change = apply_change(scene, str(rng.choice(kinds)), rng)
            else:
                after = scene
            for side, state in (("A", scene), ("B", after)):
                target = root / "images" / split / side / filename
                with atomic_path(target) as tmp:
                    render(state, size, size, rng).save(tmp, format="PNG")
            raws = references_for(change, rng)
            images.append(caption_entry(split, filename, imgid, sentid, raws, change is not None))
            imgid += 1
            sentid += len(raws)
    target = root / "LevirCCcaptions.json"
    write_json(target, {"images": images}, indent=None)
    return plan
