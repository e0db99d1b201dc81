"""The synthetic describer: ground truth turned into reference text, and the `synthetic` annotator.

A pair's caption describes the first image, the second, then each change with its kind, place and size (as
GPT-4o-mini was asked to); a sequence's, the first and the last view, then each interval's changes with its dates.
Each sentence slot has two phrasings, picked deterministically from the id. See docs/synthetic-data.md.
"""

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from dataset_builder.annotation.base import AnnotationRequest, AnnotationResult
from dataset_builder.changes import (
    INTERVAL_PHRASE,
    NO_CHANGE_PHRASES,
    PHRASES,
    PLURAL_PHRASES,
    SEQUENCE_NO_CHANGE_PHRASES,
)
from dataset_builder.prompts import month_of
from dataset_builder.synthetic.scenes import apply_random_changes, describe_objects, diff_scenes, random_scene


logger = logging.getLogger(__name__)

SIZE_WORDS = {"small": "small", "medium": "medium-sized", "large": "large"}
NUMBERS = {2: "two", 3: "three"}  # four or more: "several", so the vocabulary stays closed
SCENE_OPENERS = (
    ("The first image shows {scene}.", "The second image shows {scene}."),
    ("The earlier image shows {scene}.", "The later image shows {scene}."),
)
CHANGE_OPENERS = ("Between the two dates, {changes}.", "Over time, {changes}.")
SEQUENCE_OPENERS = (
    ("The first image, from {month}, shows {scene}.", "The last image, from {month}, shows {scene}."),
    ("The earliest image, taken in {month}, shows {scene}.", "The latest image, taken in {month}, shows {scene}."),
)


def _rng_for(pair_id: str) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.sha256(pair_id.encode()).digest()[:8], "big"))


def _count(n: int, singular: str, plural: str) -> str:
    if n == 1:
        return f"{'an' if singular[0] in 'aeiou' else 'a'} {singular}"
    return f"{NUMBERS.get(n, 'several')} {plural}"


def describe_scene(objects: list[dict]) -> str:
    """One image's content as a phrase, e.g. ``"farmland with a lake, two roads and a group of buildings"``."""
    kinds = [o["kind"] for o in objects]
    base = next((o["value"] for o in objects if o["kind"] == "land_cover"), "open land")
    parts = []
    if "water" in kinds:
        parts.append("a lake")
    if kinds.count("forest"):
        parts.append(_count(kinds.count("forest"), "patch of forest", "patches of forest"))
    if kinds.count("road"):
        parts.append(_count(kinds.count("road"), "road", "roads"))
    if kinds.count("buildings"):
        parts.append(_count(kinds.count("buildings"), "group of buildings", "groups of buildings"))
    if kinds.count("construction_site"):
        parts.append(_count(kinds.count("construction_site"), "area of earthworks", "areas of earthworks"))
    if kinds.count("cleared_land"):
        parts.append(_count(kinds.count("cleared_land"), "patch of bare soil", "patches of bare soil"))
    if not parts:
        return f"open {base}"
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{base} with {listed}"


def describe_changes(changes: list[dict], rng: np.random.Generator) -> str:
    """The change sentence of a caption: one clause per kind, in the order the kinds first appear.

    A kind that happened once gets one of its :data:`~dataset_builder.changes.PHRASES` (with place and size); a kind
    that happened in several places gets its :data:`~dataset_builder.changes.PLURAL_PHRASES` listing the places.
    """
    if not changes:
        return NO_CHANGE_PHRASES[int(rng.integers(len(NO_CHANGE_PHRASES)))]
    joined = _clauses(changes, rng)  # drawn before the opener: the order a seed's captions were written in
    return CHANGE_OPENERS[int(rng.integers(len(CHANGE_OPENERS)))].format(changes=joined)


def _clauses(changes: list[dict], rng: np.random.Generator) -> str:
    """The changes as joined clauses, one per kind (phrasings drawn from ``rng``, in order)."""
    by_kind: dict[str, list[dict]] = {}
    for change in changes:
        by_kind.setdefault(change["kind"], []).append(change)
    clauses = []
    for kind, group in by_kind.items():
        if len(group) == 1:
            options = PHRASES[kind]
            template = options[int(rng.integers(len(options)))]
            clauses.append(template.format(loc=group[0]["location"], size=SIZE_WORDS[group[0]["size"]]))
        else:
            places = [c["location"] for c in group]
            clauses.append(PLURAL_PHRASES[kind].format(locs=", the ".join(places[:-1]) + " and the " + places[-1]))
    return clauses[0] if len(clauses) == 1 else ", and ".join([", ".join(clauses[:-1]), clauses[-1]])


def describe_pair(location_gt: dict, pair_id: str) -> str:
    """Reference text for one pair of a location's ground truth (see docs/CONTRACTS.md §1).

    Args:
        location_gt: One line of ``groundtruth/{split}.jsonl``.
        pair_id: ``{stemA}-{stemB}``, earlier image first.

    Returns:
        The caption: the first image, the second image, then the changes.

    Raises:
        KeyError: If the ground truth has no such pair.
    """
    stem_a, stem_b = _split_pair_id(pair_id, location_gt["location_id"])
    changes = location_gt["pairs"][pair_id]["changes"]
    rng = _rng_for(pair_id)
    first, second = SCENE_OPENERS[int(rng.integers(len(SCENE_OPENERS)))]
    return " ".join(
        [
            first.format(scene=describe_scene(location_gt["images"][stem_a]["objects"])),
            second.format(scene=describe_scene(location_gt["images"][stem_b]["objects"])),
            describe_changes(changes, rng),
        ]
    )


def describe_sequence(location_gt: dict, stems: list[str], timestamps: list[str]) -> str:
    """Reference text for a sequence of a location's views (docs/CONTRACTS.md §2, the ``sequences`` config).

    The first and the last view, then one sentence per interval between consecutive views in which something
    changed, "Between 2016-03 and 2017-08, ..." (months of the two views' timestamps), its changes as a pair's
    caption phrases them; with no change at all, a sentence that says so. A change between views left out of the
    sequence falls in the interval of the kept views around it (the ground truth's diff of those two states).

    Args:
        location_gt: One line of ``groundtruth/{split}.jsonl``.
        stems: The kept views' stems, in time order (at least 2).
        timestamps: Their timestamps as written, in the same order.

    Returns:
        The caption.

    Raises:
        KeyError: If the ground truth lacks a view or the pair of two consecutive views.
    """
    rng = _rng_for(location_gt["location_id"] + ":" + ",".join(stems))
    first, last = SEQUENCE_OPENERS[int(rng.integers(len(SEQUENCE_OPENERS)))]
    sentences = [
        first.format(month=month_of(timestamps[0]), scene=describe_scene(location_gt["images"][stems[0]]["objects"])),
        last.format(month=month_of(timestamps[-1]), scene=describe_scene(location_gt["images"][stems[-1]]["objects"])),
    ]
    for i in range(len(stems) - 1):
        changes = location_gt["pairs"][f"{stems[i]}-{stems[i + 1]}"]["changes"]
        if changes:
            start, end = month_of(timestamps[i]), month_of(timestamps[i + 1])
            sentences.append(INTERVAL_PHRASE.format(start=start, end=end, changes=_clauses(changes, rng)))
    if len(sentences) == 2:
        options = SEQUENCE_NO_CHANGE_PHRASES
        sentences.append(options[int(rng.integers(len(options)))].format(n=len(stems)))
    return " ".join(sentences)


def _split_pair_id(pair_id: str, location_id: str) -> tuple[str, str]:
    prefix = f"{location_id}_"
    head, sep, tail = pair_id.partition(f"-{prefix}")
    if not sep or not head.startswith(prefix):
        raise KeyError(f"pair id {pair_id!r} does not belong to location {location_id!r}")
    return head, prefix + tail


def describe_corpus(n: int, seed: int = 0) -> list[str]:
    """``n`` captions of random scenes and changes: the vocabulary the describer can emit (for tokenizers).

    Each caption describes a random scene before and after a chain of 0-5 changes, composed as the generator
    composes them for non-consecutive dates, so object counts and change lists reach what a real tree holds.
    """
    rng = np.random.default_rng(seed)
    captions = []
    for i in range(n):
        scene = random_scene(rng)
        after = apply_random_changes(scene, int(rng.choice([0, 1, 1, 1, 2, 2, 3, 5])), rng)
        a, b = f"x_0_{2 * i}", f"x_0_{2 * i + 1}"  # distinct ids: the phrasing is seeded by the pair id
        location = {
            "location_id": "x_0",
            "images": {a: {"objects": describe_objects(scene)}, b: {"objects": describe_objects(after)}},
            "pairs": {f"{a}-{b}": {"changes": diff_scenes(scene, after)}},
        }
        captions.append(describe_pair(location, f"{a}-{b}"))
    return captions


class SyntheticAnnotator:
    """The ``synthetic`` annotator: captions from the ground truth that ``geollava-synth`` wrote beside the tree.

    A pair request is answered by :func:`describe_pair`; a sequence request (one with ``timestamps``; its
    ``metadata`` names the ``location_id`` and the views' ``stems``) by :func:`describe_sequence`.
    """

    name = "synthetic"
    model = None
    prompt = None
    sequence_prompt = None

    def __init__(self, fmow_root: Path | str | None = None):
        """Read ground truth under ``fmow_root`` (else under each request's ``metadata["fmow_root"]``)."""
        self.fmow_root = Path(fmow_root) if fmow_root else None
        self._cache: dict[tuple[str, str], dict[str, dict]] = {}

    def _ground_truth(self, root: Path, split: str) -> dict[str, dict]:
        """Each location's ground truth by its pair ids and by its location id (the two never look alike)."""
        key = (str(root), split)
        if key not in self._cache:
            path = root / "groundtruth" / f"{split}.jsonl"
            index = {}
            if path.exists():
                with open(path, encoding="utf-8") as fh:
                    for line in fh:
                        location = json.loads(line)
                        index[location["location_id"]] = location
                        for pair_id in location["pairs"]:
                            index[pair_id] = location
            self._cache[key] = index
        return self._cache[key]

    def annotate(self, requests: Iterable[AnnotationRequest]) -> Iterator[AnnotationResult]:
        """Yield the describer's caption for each request (status ``"missing"`` without ground truth)."""
        for request in requests:
            root = self.fmow_root or Path(request.metadata.get("fmow_root", "."))
            split = request.metadata.get("split", "train")
            where = f"{root}/groundtruth/{split}.jsonl"
            if request.timestamps is not None:
                yield self._sequence(request, self._ground_truth(root, split), where)
                continue
            location = self._ground_truth(root, split).get(request.id)
            if location is None:
                yield AnnotationResult(request.id, None, "missing", f"no ground truth for {request.id} in {where}")
                continue
            yield AnnotationResult(request.id, describe_pair(location, request.id))

    @staticmethod
    def _sequence(request: AnnotationRequest, truth: dict[str, dict], where: str) -> AnnotationResult:
        stems = request.metadata.get("stems") or []
        location = truth.get(request.metadata.get("location_id"))
        try:
            if location is None:
                raise KeyError(request.metadata.get("location_id"))
            return AnnotationResult(request.id, describe_sequence(location, stems, list(request.timestamps)))
        except KeyError as err:
            return AnnotationResult(
                request.id, None, "missing", f"no ground truth for {request.id} ({err}) in {where}"
            )
