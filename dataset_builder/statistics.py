"""Statistics of a build's pairs for its report and card: per split, per category, and the gaps between dates."""

from collections import Counter, defaultdict

import numpy as np

from dataset_builder.pairs import Pair


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
