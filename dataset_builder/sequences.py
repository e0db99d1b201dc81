"""The sequences rule: every usable view of a location, in time order, as one row (at most ``max_frames`` of them).

A location's usable views (the scan's, after the same drops as the pairs) are sorted by timestamp, ties broken by the
fMoW index ``T``; a location with at least 3 gives one sequence; with more than ``max_frames`` = K, the views at
indices ``floor(i * (n - 1) / (K - 1) + 1/2)``, i = 0..K-1, are kept (the first and last always). See docs/dataset.md.
"""

from dataclasses import dataclass

from dataset_builder.fmow import FmowImage
from dataset_builder.pairs import dataset_split


#: The config's name: its shards are ``data/sequences/{split}-NNNNN-of-NNNNN.parquet``.
SEQUENCES_CONFIG = "sequences"
#: Fewest usable views a location needs to give a sequence (two views are a pair's business).
MIN_VIEWS = 3


@dataclass(frozen=True)
class ViewSequence:
    """The kept views of one location, in time order.

    Attributes:
        id: The location's folder name (``airport_0``): the row id.
        split: The dataset split (fMoW ``val`` -> ``test``).
        views: The kept views, earliest first.
        n_views: The location's usable views before subsampling (``len(views)`` when none was left out).
    """

    id: str
    split: str
    views: tuple[FmowImage, ...]
    n_views: int

    @property
    def key(self) -> str:
        """``{split}/{id}``: unique across splits (fMoW numbers the locations of each split from 0)."""
        return f"{self.split}/{self.id}"

    @property
    def category(self) -> str:
        """The fMoW category."""
        return self.views[0].category

    @property
    def timestamps(self) -> tuple[str, ...]:
        """The kept views' JSON timestamps, as written, in time order."""
        return tuple(view.timestamp_text for view in self.views)


def subsample_indices(n: int, max_frames: int) -> list[int]:
    """The indices of the views kept out of ``n`` in time order: all of them, or ``max_frames`` spread evenly.

    Index ``i`` of ``K = max_frames`` is ``floor(i * (n - 1) / (K - 1) + 1/2)``, computed in integers (no rounding
    error), so the first and the last view are always kept and the kept indices are distinct.

    Args:
        n: Number of views.
        max_frames: Most views to keep (at least 2).

    Returns:
        Increasing indices into the time-ordered views.

    Raises:
        ValueError: If ``max_frames`` is under 2.
    """
    if max_frames < 2:
        raise ValueError(f"max_frames {max_frames}: must be at least 2 (the first and the last view)")
    if n <= max_frames:
        return list(range(n))
    k = max_frames - 1
    return [(2 * i * (n - 1) + k) // (2 * k) for i in range(max_frames)]


def find_sequence(images: list[FmowImage], max_frames: int) -> ViewSequence | None:
    """The sequence of one location's usable images, or ``None`` with fewer than :data:`MIN_VIEWS`.

    Args:
        images: Usable images of one location (any order).
        max_frames: Most views a sequence keeps.

    Returns:
        The sequence.
    """
    if len(images) < MIN_VIEWS:
        return None
    ordered = sorted(images, key=lambda im: (im.timestamp, im.index))
    views = tuple(ordered[i] for i in subsample_indices(len(ordered), max_frames))
    first = views[0]
    return ViewSequence(id=first.location_id, split=dataset_split(first.split), views=views, n_views=len(ordered))


def sequence_changes(views: tuple[FmowImage, ...], truth: dict[str, list[dict]]) -> list[dict]:
    """The true changes of a sequence, each with the interval of the two consecutive kept views it falls between.

    A change between views that were left out falls in the interval of the kept views around it: the ground truth's
    entry for (kept view i, kept view i + 1) is the diff of those two states.

    Args:
        views: The kept views, in time order.
        truth: True changes per pair id (``{stem_a}-{stem_b}``, earlier first) of the location's fMoW split.

    Returns:
        ``{"kind", "location", "size", "start", "end"}`` records, in time order; ``start``/``end`` are the two views'
        timestamps as written. Empty: nothing changed over the whole sequence.
    """
    return [
        {**change, "start": a.timestamp_text, "end": b.timestamp_text}
        for a, b in zip(views, views[1:], strict=False)
        for change in truth.get(f"{a.stem}-{b.stem}", [])
    ]
