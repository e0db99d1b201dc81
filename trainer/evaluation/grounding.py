"""Grounding: does a caption name the kinds of change that really happened (and "no change" when none did)?

On synthetic data the generator wrote the true changes of every pair (``changes`` column, CONTRACTS.md §1-2), so a
prediction can be checked against them: the kinds it names (``dataset_builder.changes.extract_change_kinds``)
against the true kinds (``{c["kind"] for c in changes}``, or ``{"no_change"}`` for an empty list).

Headline numbers are **micro-averaged** over rows (true/false positives and false negatives summed over all rows,
then precision, recall and F1); the macro averages (mean of per-row values) and per-kind counts are reported too.
"""

from collections import Counter
from collections.abc import Callable, Sequence

from dataset_builder.changes import extract_change_kinds


NO_CHANGE = "no_change"
_HEADLINE = ("grounding_precision", "grounding_recall", "grounding_f1")


def true_kinds(changes: Sequence[dict] | None) -> set[str]:
    """The true change kinds of a pair: the ``kind`` of each change, or ``{"no_change"}`` when there is none.

    Raises:
        ValueError: If a change has no ``kind``.
    """
    kinds = set()
    for i, change in enumerate(changes or []):
        if not isinstance(change, dict) or not change.get("kind"):
            raise ValueError(f"change {i} has no 'kind': {change!r}")
        kinds.add(change["kind"])
    return kinds or {NO_CHANGE}


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def row_kinds(prediction: str, extract: Callable[[str], set[str]] | None = None) -> set[str]:
    """The kinds a prediction names (``{"no_change"}`` when it names none)."""
    kinds = set((extract or extract_change_kinds)(prediction))
    return kinds or {NO_CHANGE}


def grounding_scores(
    predictions: Sequence[str],
    changes: Sequence[Sequence[dict] | None],
    extract: Callable[[str], set[str]] | None = None,
) -> dict:
    """Precision, recall and F1 of the change kinds the predictions name, against the true changes.

    Args:
        predictions: One caption per row.
        changes: The true ``changes`` list of each row (empty = no change).
        extract: Text -> set of kinds; by default ``dataset_builder.changes.extract_change_kinds``.

    Returns:
        ``grounding_precision``, ``grounding_recall``, ``grounding_f1`` (micro), their ``_macro`` forms,
        ``grounding_exact_match`` (share of rows whose kinds are exactly right), ``grounding_rows`` and
        ``grounding_per_kind`` (``{kind: {"tp", "fp", "fn", "precision", "recall", "f1"}}``).
    """
    if len(predictions) != len(changes):
        raise ValueError(f"{len(predictions)} predictions but {len(changes)} change lists")
    extract = extract or extract_change_kinds
    counts: dict[str, Counter] = {}
    per_row = []
    exact = 0
    for prediction, row_changes in zip(predictions, changes, strict=True):
        truth = true_kinds(row_changes)
        named = row_kinds(prediction, extract)
        for kind in truth | named:
            c = counts.setdefault(kind, Counter())
            c["tp"] += kind in truth and kind in named
            c["fp"] += kind in named and kind not in truth
            c["fn"] += kind in truth and kind not in named
        tp = len(truth & named)
        per_row.append(_prf(tp, len(named - truth), len(truth - named)))
        exact += truth == named
    tp, fp, fn = (sum(c[k] for c in counts.values()) for k in ("tp", "fp", "fn"))
    precision, recall, f1 = _prf(tp, fp, fn)
    n = len(per_row)
    out = {
        "grounding_precision": precision,
        "grounding_recall": recall,
        "grounding_f1": f1,
        "grounding_precision_macro": sum(r[0] for r in per_row) / n if n else float("nan"),
        "grounding_recall_macro": sum(r[1] for r in per_row) / n if n else float("nan"),
        "grounding_f1_macro": sum(r[2] for r in per_row) / n if n else float("nan"),
        "grounding_exact_match": exact / n if n else float("nan"),
        "grounding_rows": n,
        "grounding_per_kind": {},
    }
    for kind in sorted(counts):
        c = counts[kind]
        p, r, f = _prf(c["tp"], c["fp"], c["fn"])
        out["grounding_per_kind"][kind] = {
            "tp": c["tp"],
            "fp": c["fp"],
            "fn": c["fn"],
            "precision": p,
            "recall": r,
            "f1": f,
        }
    return out


def majority_baseline(changes: Sequence[Sequence[dict] | None]) -> dict:
    """The score of always giving one answer: the split's most common change kinds, from its ground truth alone.

    Kinds (``no_change`` among them) are ranked by the number of rows holding them; the answer names the ``k`` most
    common, ``k`` chosen for the best micro F1 (the fewest kinds on a tie). It is scored by :func:`grounding_scores`,
    as a model's captions are: the bar a model must clear to show it looks at the images.

    Args:
        changes: The true ``changes`` list of each row (empty = no change).

    Returns:
        ``kinds`` (the answer), ``grounding_precision``, ``grounding_recall``, ``grounding_f1``, ``grounding_rows``.

    Raises:
        ValueError: If there is no row.
    """
    if not changes:
        raise ValueError("no row: the majority answer needs the true changes of at least one row")
    counts = Counter(kind for row_changes in changes for kind in true_kinds(row_changes))
    ranked = sorted(counts, key=lambda kind: (-counts[kind], kind))
    best: dict = {}
    for k in range(1, len(ranked) + 1):
        answer = set(ranked[:k])
        scores = grounding_scores([""] * len(changes), changes, extract=lambda _text, answer=answer: answer)
        if not best or scores["grounding_f1"] > best["grounding_f1"]:
            best = {"kinds": ranked[:k], **{key: scores[key] for key in (*_HEADLINE, "grounding_rows")}}
    return best
