"""Temporal grounding of sequence captions: is each true change named with its kind and an interval that holds it?

A row's true events are the (kind, start month, end month) of its changes (the ``changes`` column of a synthetic
``sequences`` row), or what its annotator's reference states in the same dated form; predicted events come from
``dataset_builder.changes.extract_dated_changes``. Scores are micro-averaged over rows, like grounding's.
See docs/evaluation.md "Temporal grounding (sequences)".
"""

from collections import Counter
from collections.abc import Callable, Sequence

from dataset_builder.changes import extract_change_kinds, extract_dated_changes
from trainer.evaluation.grounding import NO_CHANGE, grounding_scores
from trainer.evaluation.metric_sets import TEMPORAL_KEYS, MetricSet


#: One dated change: (kind, start month, end month), months as ``YYYY-MM``.
Event = tuple[str, str, str]


def month(value: str) -> str:
    """The ``YYYY-MM`` month of an ISO 8601 timestamp, date or month.

    Raises:
        ValueError: If ``value`` does not start with ``YYYY-MM``.
    """
    text = str(value).strip()
    if len(text) < 7 or not (text[:4].isdigit() and text[4] == "-" and text[5:7].isdigit()):
        raise ValueError(f"{value!r} is not an ISO 8601 date (YYYY-MM...)")
    if not 1 <= int(text[5:7]) <= 12:
        raise ValueError(f"{value!r} has no month {text[5:7]}")
    return text[:7]


def true_events(changes: Sequence[dict]) -> list[Event]:
    """The distinct (kind, start month, end month) of a row's true changes, in time order.

    Two changes of one kind in one interval are one event: the metric scores kinds and intervals, not places.

    Raises:
        ValueError: If a change lacks its ``kind``, ``start`` or ``end``.
    """
    events = set()
    for i, change in enumerate(changes):
        if not isinstance(change, dict) or not all(change.get(key) for key in ("kind", "start", "end")):
            raise ValueError(f"change {i} needs 'kind', 'start' and 'end': {change!r}")
        events.add((change["kind"], month(change["start"]), month(change["end"])))
    return sorted(events, key=lambda e: (e[1], e[2], e[0]))


def predicted_events(text: str, extract: Callable[[str], list[dict]] | None = None) -> list[Event]:
    """The distinct dated events a caption states (by default through ``extract_dated_changes``), in its order."""
    found = (extract or extract_dated_changes)(text)
    return list(dict.fromkeys((e["kind"], e["start"], e["end"]) for e in found))


def reference_events(reference: str) -> list[Event] | None:
    """The events an annotator's reference states: its dated changes, ``[]`` if it says nothing changed, else None."""
    events = predicted_events(reference)
    if events:
        return events
    return [] if extract_change_kinds(reference) == {NO_CHANGE} else None


def row_truth(changes: Sequence[dict] | None, references: Sequence[str]) -> tuple[list[Event] | None, str | None]:
    """A row's true events and where they come from: ``"changes"``, ``"annotation"``, or ``(None, None)``."""
    if changes is not None:
        return true_events(changes), "changes"
    for reference in references:
        events = reference_events(reference)
        if events is not None:
            return events, "annotation"
    return None, None


def _months(value: str) -> int:
    return int(value[:4]) * 12 + int(value[5:7])


def match_events(predicted: Sequence[Event], truth: Sequence[Event], shown: Sequence[str]) -> tuple[int, int, int]:
    """True positives, false positives and false negatives of one row.

    A predicted event matches a true one of its kind when its interval holds the true interval and no shown date
    lies strictly inside it (as tight as the shown dates allow); one to one, the tightest predictions first. No
    predicted event claims ``no_change``: one true positive on a row without change, else a false positive.

    Args:
        predicted: The caption's events.
        truth: The row's true events (empty: no change).
        shown: The months of the frames the model was shown.
    """
    if not predicted:
        return (1, 0, 0) if not truth else (0, 1, len(truth))
    if not truth:
        return 0, len(predicted), 1
    free = list(truth)
    tp = 0
    for kind, start, end in sorted(predicted, key=lambda e: (_months(e[2]) - _months(e[1]), e[1], e[0])):
        if any(start < shown_month < end for shown_month in shown):
            continue
        hit = next((t for t in free if t[0] == kind and start <= t[1] and end >= t[2]), None)
        if hit is not None:
            free.remove(hit)
            tp += 1
    return tp, len(predicted) - tp, len(truth) - tp


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def event_scores(
    predicted: Sequence[Sequence[Event]], truths: Sequence[Sequence[Event]], timestamps: Sequence[Sequence[str]]
) -> dict:
    """Micro precision, recall and F1 of predicted events against true ones, over rows (:func:`match_events`).

    Returns:
        ``temporal_precision``, ``temporal_recall``, ``temporal_f1``, ``temporal_rows`` and ``temporal_counts``
        (``{"tp", "fp", "fn"}``).
    """
    if not len(predicted) == len(truths) == len(timestamps):
        raise ValueError(f"{len(predicted)} predictions, {len(truths)} truths and {len(timestamps)} date lists")
    counts = Counter()
    for row_predicted, truth, row_timestamps in zip(predicted, truths, timestamps, strict=True):
        shown = [month(t) for t in row_timestamps]
        counts.update(dict(zip(("tp", "fp", "fn"), match_events(row_predicted, truth, shown), strict=True)))
    precision, recall, f1 = _prf(counts["tp"], counts["fp"], counts["fn"])
    return {
        "temporal_precision": precision,
        "temporal_recall": recall,
        "temporal_f1": f1,
        "temporal_rows": len(truths),
        "temporal_counts": {key: counts[key] for key in ("tp", "fp", "fn")},
    }


def temporal_scores(
    predictions: Sequence[str],
    truths: Sequence[Sequence[Event]],
    timestamps: Sequence[Sequence[str]],
    extract: Callable[[str], list[dict]] | None = None,
) -> dict:
    """:func:`event_scores` of captions: their events read by ``extract`` (default ``extract_dated_changes``)."""
    return event_scores([predicted_events(p, extract) for p in predictions], truths, timestamps)


def _gap_of(event: Event, shown: Sequence[str]) -> int | None:
    """The index i of the interval (shown frame i, i + 1) an event spans, if it spans exactly one."""
    return next((i for i in range(len(shown) - 1) if (shown[i], shown[i + 1]) == event[1:]), None)


def majority_events(kinds: Sequence[str], gaps: dict[str, int], timestamps: Sequence[str]) -> list[Event]:
    """The majority answer rendered with a row's own dates: each kind in its interval (the row's last if shorter)."""
    shown = [month(t) for t in timestamps]
    last = len(shown) - 2
    return [(kind, shown[min(gaps[kind], last)], shown[min(gaps[kind], last) + 1]) for kind in kinds]


def temporal_majority(
    truths: Sequence[Sequence[Event]],
    timestamps: Sequence[Sequence[str]],
    changes: Sequence[Sequence[dict] | None] | None = None,
) -> dict:
    """The score of the constant answer that sees no image but reads the prompt's dates.

    It names the split's ``k`` most common kinds (by rows holding them), each in the interval (frame i to i + 1)
    where that kind happens most often, rendered with each row's dates; ``k`` (0 = "no change") is chosen for the
    best temporal F1, the fewest kinds on a tie. Scored by :func:`event_scores`, and on its kinds alone by
    ``grounding_scores`` over the rows whose ``changes`` are given.

    Args:
        truths: Each row's true events.
        timestamps: Each row's frame timestamps.
        changes: Each row's ``changes`` (for grounding), or ``None``.

    Returns:
        ``kinds``, ``gaps`` (kind -> interval index), the ``temporal_*`` scores and, with ``changes``, the
        ``grounding_precision``, ``grounding_recall`` and ``grounding_f1`` of the same answer.

    Raises:
        ValueError: If there is no row.
    """
    if not truths:
        raise ValueError("no row: the majority answer needs the true events of at least one row")
    rows = Counter(kind for truth in truths for kind in {e[0] for e in truth})
    ranked = sorted(rows, key=lambda kind: (-rows[kind], kind))
    gap_counts: dict[str, Counter] = {kind: Counter() for kind in ranked}
    for truth, row_timestamps in zip(truths, timestamps, strict=True):
        shown = [month(t) for t in row_timestamps]
        for event in truth:
            gap = _gap_of(event, shown)
            if gap is not None:
                gap_counts[event[0]][gap] += 1
    gaps = {kind: min(c, key=lambda g, c=c: (-c[g], g)) if c else 0 for kind, c in gap_counts.items()}
    best: dict = {}
    for k in range(len(ranked) + 1):
        kinds = ranked[:k]
        predicted = [majority_events(kinds, gaps, t) for t in timestamps]
        scores = event_scores(predicted, truths, timestamps)
        if not best or scores["temporal_f1"] > best["temporal_f1"]:
            best = {"kinds": kinds, "gaps": {kind: gaps[kind] for kind in kinds}, **scores}
    known = [c for c in changes or [] if c is not None]
    if known:
        answer = set(best["kinds"]) or {NO_CHANGE}
        grounding = grounding_scores([""] * len(known), known, extract=lambda _text: answer)
        best.update({key: grounding[key] for key in ("grounding_precision", "grounding_recall", "grounding_f1")})
    return best


def temporal_set(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    changes: Sequence[Sequence[dict] | None] | None,
    timestamps: Sequence[Sequence[str] | None] | None,
) -> MetricSet:
    """Temporal grounding over the sequence rows (those with ``timestamps``); nothing for pairs.

    A row's truth is its ``changes`` when given, else its reference's dated changes (:func:`row_truth`); rows with
    neither are left out and counted. ``temporal_majority`` holds :func:`temporal_majority` over the same rows.
    """
    sequences = [i for i, row_timestamps in enumerate(timestamps or []) if row_timestamps is not None]
    if not sequences:
        return MetricSet()
    changes = changes or [None] * len(predictions)
    truths, sources, rows = [], Counter(), []
    for i in sequences:
        truth, source = row_truth(changes[i], references[i])
        sources[source or "none"] += 1
        if truth is not None:
            truths.append(truth)
            rows.append(i)
    if not rows:
        why = (
            f"none of the {len(sequences)} sequence rows has true dated changes: no 'changes' (synthetic data) and "
            "no reference that states its changes as 'Between YYYY-MM and YYYY-MM, ...' or says nothing changed"
        )
        return MetricSet(unavailable=dict.fromkeys(TEMPORAL_KEYS, why))
    shown = [timestamps[i] for i in rows]
    values = temporal_scores([predictions[i] for i in rows], truths, shown)
    values["temporal_truth"] = {key: sources[key] for key in ("changes", "annotation", "none")}
    if sources["none"]:
        values["temporal_note"] = f"{sources['none']} sequence rows state no dated changes and are not in temporal_*"
    values["temporal_majority"] = temporal_majority(truths, shown, [changes[i] for i in rows])
    return MetricSet(values=values)
