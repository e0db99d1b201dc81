"""Statistics of a build for its report and card: pairs per split, category and gap; sequences' frames and years."""

from collections import Counter, defaultdict

import numpy as np

from dataset_builder.pairs import Pair
from dataset_builder.sequences import ViewSequence


GAP_EDGES = (365, 500, 730, 1095, 1460, 2190)


def gap_histogram(gaps: list[int], edges: tuple[int, ...] = GAP_EDGES) -> dict[str, int]:
    """Pairs per gap bucket, in days (``"365-499"``, ..., ``">=2190"``; ``"<365"`` only when such gaps exist).

    Args:
        gaps: Gaps in whole days.
        edges: Lower bounds of the buckets, increasing.

    Returns:
        Counts per bucket label, in bucket order; they sum to ``len(gaps)``.
    """
    labels = [f"<{edges[0]}"] + [f"{lo}-{hi - 1}" for lo, hi in zip(edges, edges[1:], strict=False)]
    labels.append(f">={edges[-1]}")
    counts = Counter(int(np.searchsorted(edges, gap, side="right")) for gap in gaps)
    hist = {label: counts.get(i, 0) for i, label in enumerate(labels)}
    if not hist[labels[0]]:
        del hist[labels[0]]
    return hist


def pair_statistics(kept: list[Pair]) -> dict:
    """Pairs, categories, locations and images per split, and the gap statistics, of the pairs kept."""
    by_split: dict[str, list[Pair]] = defaultdict(list)
    for p in kept:
        by_split[p.split].append(p)
    gaps = [p.gap_days for p in kept]
    return {
        "pairs_per_split": {s: len(ps) for s, ps in by_split.items()},
        "pairs_per_category": {s: dict(sorted(Counter(p.category for p in ps).items())) for s, ps in by_split.items()},
        "categories_per_split": {s: len({p.category for p in ps}) for s, ps in by_split.items()},
        "locations_per_split": {s: len({p.location_id for p in ps}) for s, ps in by_split.items()},
        "images_in_pairs_per_split": {
            s: len({p.first.stem for p in ps} | {p.second.stem for p in ps}) for s, ps in by_split.items()
        },
        "gap_days": {
            "min": min(gaps) if gaps else None,
            "median": float(np.median(gaps)) if gaps else None,
            "mean": round(float(np.mean(gaps)), 1) if gaps else None,
            "max": max(gaps) if gaps else None,
            "histogram": gap_histogram(gaps),
        },
    }


def _summary(values: list[float]) -> dict:
    return {
        "min": min(values),
        "median": float(np.median(values)),
        "mean": round(float(np.mean(values)), 2),
        "max": max(values),
    }


def sequence_statistics(kept: list[ViewSequence]) -> dict:
    """Per split: rows, locations subsampled to ``max_frames``, frames per row and years spanned, of the rows kept.

    Years spanned by a row: the days between its first and its last view over 365.25, to 0.1 year.
    """
    by_split: dict[str, list[ViewSequence]] = defaultdict(list)
    for sequence in kept:
        by_split[sequence.split].append(sequence)
    stats = {}
    for split, sequences in by_split.items():
        frames = [len(s.views) for s in sequences]
        years = [round((s.views[-1].timestamp - s.views[0].timestamp).days / 365.25, 1) for s in sequences]
        histogram = {str(n): count for n, count in sorted(Counter(frames).items())}
        stats[split] = {
            "rows": len(sequences),
            "subsampled": sum(s.n_views > len(s.views) for s in sequences),
            "frames_per_row": {**_summary(frames), "histogram": histogram},
            "years_spanned": _summary(years),
        }
    return stats
