"""The GeoLLaVA pairing rule (reproduces the released validation sheet).

Within a location, images sorted by timestamp; every consecutive pair (i, i+1) whose gap is at least
``min_gap_days`` (``timedelta.days``) is a pair. Consecutive passing gaps chain; an intermediate image closer than
``min_gap_days`` breaks the chain. Oversize images are dropped before this rule runs.
"""

from dataclasses import dataclass

from dataset_builder.fmow import FmowImage


#: fMoW split -> dataset split (the paper used fMoW val as its test set).
SPLIT_NAMES = {"train": "train", "val": "test"}


@dataclass(frozen=True)
class Pair:
    """Two images of one location, earlier first."""

    id: str
    split: str
    first: FmowImage
    second: FmowImage
    gap_days: int

    @property
    def category(self) -> str:
        """The fMoW category."""
        return self.first.category

    @property
    def location_id(self) -> str:
        """``{category}_{loc}``."""
        return self.first.location_id


def dataset_split(fmow_split: str) -> str:
    """The dataset split an fMoW split maps to (``val`` -> ``test``; others keep their name)."""
    return SPLIT_NAMES.get(fmow_split, fmow_split)


def find_pairs(images: list[FmowImage], min_gap_days: int = 365) -> list[Pair]:
    """The pairs of one location's images, in time order.

    Args:
        images: Usable images of one location (any order).
        min_gap_days: Smallest gap, in whole days, between consecutive images of a pair.

    Returns:
        The pairs; their id is ``{stem_a}-{stem_b}``.
    """
    ordered = sorted(images, key=lambda im: (im.timestamp, im.index))
    pairs = []
    for a, b in zip(ordered, ordered[1:], strict=False):
        gap = (b.timestamp - a.timestamp).days
        if gap >= min_gap_days:
            pairs.append(Pair(id=f"{a.stem}-{b.stem}", split=dataset_split(a.split), first=a, second=b, gap_days=gap))
    return pairs
