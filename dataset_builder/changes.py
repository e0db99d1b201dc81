"""The vocabulary of changes: kinds, places, sizes, how captions phrase them, and how to read them back.

The synthetic describer only writes phrasings that :func:`extract_change_kinds` recognises, so the grounding metric
(which change kinds a prediction names, against the ground truth the generator wrote) is exact on references and
reasonable on free text: it also knows the usual synonyms ("torn down", "deforestation", "the lake receded"), the
short present-tense LEVIR-CC style ("many houses are built in the north ."), and skips a kind named in a negated
clause ("no new buildings").
"""

import json
import re
from pathlib import Path


CHANGE_KINDS: tuple[str, ...] = (
    "building_built",
    "building_demolished",
    "road_built",
    "road_widened",
    "field_to_construction",
    "forest_cleared",
    "water_expanded",
    "water_shrunk",
)
NO_CHANGE = "no_change"

#: The 3 x 3 grid cells of an image, north at the top.
LOCATIONS: tuple[str, ...] = (
    "north-west",
    "north",
    "north-east",
    "west",
    "center",
    "east",
    "south-west",
    "south",
    "south-east",
)

#: Size of a change by the fraction of the image it covers: small < 7 %, medium < 12 %, large otherwise.
SIZES: tuple[str, ...] = ("small", "medium", "large")
SIZE_THRESHOLDS = (0.07, 0.12)


def size_of(area_fraction: float) -> str:
    """The size name of a change covering ``area_fraction`` of the image."""
    if area_fraction < SIZE_THRESHOLDS[0]:
        return "small"
    if area_fraction < SIZE_THRESHOLDS[1]:
        return "medium"
    return "large"


def location_of(x: float, y: float) -> str:
    """The grid cell name of a point in normalised image coordinates (``x`` right, ``y`` down, both in [0, 1])."""
    col = min(max(int(x * 3), 0), 2)
    row = min(max(int(y * 3), 0), 2)
    return LOCATIONS[3 * row + col]


#: Caption templates per kind (``{size}`` and ``{loc}`` are filled in); two phrasings each.
PHRASES: dict[str, tuple[str, ...]] = {
    "building_built": (
        "a {size} group of new buildings was built in the {loc}",
        "new buildings were constructed in the {loc}, covering a {size} area",
    ),
    "building_demolished": (
        "a {size} group of buildings was demolished in the {loc}",
        "buildings in the {loc} were torn down, clearing a {size} area",
    ),
    "road_built": (
        "a new road was built across the {loc}",
        "a new road now runs through the {loc}",
    ),
    "road_widened": (
        "the road in the {loc} was widened",
        "the road through the {loc} has been widened",
    ),
    "field_to_construction": (
        "a {size} plot in the {loc} became a construction site",
        "a construction site replaced a {size} plot in the {loc}",
    ),
    "forest_cleared": (
        "a {size} patch of forest was cleared in the {loc}",
        "trees were cut down in the {loc}, clearing a {size} patch of forest",
    ),
    "water_expanded": (
        "the water in the {loc} expanded over a {size} area",
        "the lake in the {loc} grew, flooding a {size} area",
    ),
    "water_shrunk": (
        "the water in the {loc} shrank, exposing a {size} area",
        "the lake in the {loc} receded, leaving a {size} area dry",
    ),
}
#: One phrase per kind for several changes of that kind at once (``{locs}``: "north, the east and the center").
PLURAL_PHRASES: dict[str, str] = {
    "building_built": "new buildings were built in the {locs}",
    "building_demolished": "buildings were demolished in the {locs}",
    "road_built": "new roads were built across the {locs}",
    "road_widened": "the roads were widened in the {locs}",
    "field_to_construction": "construction sites replaced plots in the {locs}",
    "forest_cleared": "patches of forest were cleared in the {locs}",
    "water_expanded": "the water expanded in the {locs}",
    "water_shrunk": "the water shrank in the {locs}",
}
NO_CHANGE_PHRASES: tuple[str, ...] = (
    "No significant changes are visible between the two images.",
    "The scene looks unchanged between the two images.",
)
#: A sequence's sentence for one interval with changes (``{start}``/``{end}``: the months of its two dates, YYYY-MM).
INTERVAL_PHRASE = "Between {start} and {end}, {changes}."
#: A sequence's sentence when nothing changed at any date (``{n}``: how many dates).
SEQUENCE_NO_CHANGE_PHRASES: tuple[str, ...] = (
    "No change is visible across the {n} dates.",
    "The scene stays unchanged across the {n} dates.",
)


def _near(subjects: str, verbs: str) -> str:
    """A subject followed, within the same clause, by a verb phrase ("the lake in the north-east expanded")."""
    return rf"\b(?:{subjects})\b[\w -]{{0,40}}?\b(?:{verbs})\b"


_BUILDINGS = r"buildings?|houses?|structures?|homes?|villas?|dwellings?|warehouses?|factories|blocks? of flats"
_ROADS = r"roads?|streets?|highways?|motorways?|lanes?|tracks?"
_TREES = r"forests?|trees|woods?|woodlands?|vegetation"
_WATER = r"water|lakes?|ponds?|rivers?|reservoirs?|shoreline|water level"
_BE = r"(?:was|were|is|are|has been|have been|had been|being|got|get|gets)"

PATTERNS: dict[str, re.Pattern] = {
    "building_built": re.compile(
        "|".join(
            [
                rf"\bnew (?:\w+ )?(?:{_BUILDINGS})\b",
                _near(_BUILDINGS, rf"{_BE} (?:built|constructed|erected|added|put up)|appear\w*|sprang up|sprung up"),
                rf"\b(?:built|constructed|erected) (?:some |many |several |a few |a group of )?(?:{_BUILDINGS})",
            ]
        ),
        re.I,
    ),
    "building_demolished": re.compile(
        "|".join(
            [
                r"\b(?:demolish\w*|torn down|tore down|tear\w* down|razed|knocked down|bulldoz\w*)",
                _near(_BUILDINGS, rf"{_BE} (?:removed|destroyed|cleared|demolished)|disappear\w*|vanish\w*|gone"),
                rf"\bremoval of (?:the )?(?:{_BUILDINGS})",
            ]
        ),
        re.I,
    ),
    "road_built": re.compile(
        "|".join(
            [
                r"\bnew (?:\w+ )?(?:road|street|highway|motorway|lane)s?\b",
                _near(_ROADS, rf"{_BE} (?:built|paved|constructed|laid|added)|appear\w*"),
                r"\b(?:built|constructed|paved) (?:a |an |some )?(?:new )?(?:road|street|highway)s?\b",
            ]
        ),
        re.I,
    ),
    "road_widened": re.compile(
        "|".join(
            [
                _near(_ROADS, r"widen\w*|broaden\w*|wider|expanded|extra lanes?"),
                r"\b(?:widen\w*|broaden\w*) (?:the |a |an )?(?:\w+ )?(?:road|street|highway|motorway)s?\b",
                r"\bwider (?:road|street|highway)s?\b",
            ]
        ),
        re.I,
    ),
    "field_to_construction": re.compile(
        r"\b(?:construction sites?|under construction|building sites?|excavat\w*|dug up|construction (?:work|began|"
        r"started|has started|is underway))",
        re.I,
    ),
    "forest_cleared": re.compile(
        "|".join(
            [
                r"\b(?:deforest\w*|cut down|felled|logg(?:ed|ing))\b",
                _near(_TREES, rf"{_BE} (?:cleared|cut|removed|destroyed|logged)|disappear\w*|vanish\w*|gone"),
                rf"\bclear(?:ed|ing|ance of) (?:a |the |some |an )?(?:\w+ )?(?:patch (?:of )?)?(?:{_TREES})\b",
            ]
        ),
        re.I,
    ),
    "water_expanded": re.compile(
        "|".join(
            [
                _near(
                    _WATER,
                    r"expand\w*|grew|grow\w*|rose|rise\w*|risen|widened|flooded|spread|(?:became|becomes|is|got) "
                    r"(?:larger|bigger|wider)",
                ),
                r"\b(?:flooding|rising water|more water|new (?:lake|pond|reservoir))\b",
            ]
        ),
        re.I,
    ),
    "water_shrunk": re.compile(
        "|".join(
            [
                _near(
                    _WATER,
                    r"shr[aiu]nk\w*|reced\w*|dried|dries|dry up|retreat\w*|fell|fallen|dropped|(?:became|becomes|is|"
                    r"got) smaller",
                ),
                r"\b(?:dried up|falling water|less water|drought)\b",
            ]
        ),
        re.I,
    ),
}
NO_CHANGE_PATTERN = re.compile(
    r"\b(?:no (?:significant |visible |notable |major |obvious |apparent |noticeable )?(?:changes?|difference)|"
    r"unchanged|nothing (?:has |have )?(?:changed|happened)|(?:remains|remained|stays|stayed|is|are|looks?|seems?) "
    r"(?:exactly |largely )?(?:the )?same|same as before|identical|no change has occurred)",
    re.I,
)
_NEGATION = re.compile(r"\b(?:no|not|never|without|neither|nor|none)\b|n't\b", re.I)
_CLAUSE_START = re.compile(r"[.;:!?,]|\bbut\b|\bwhile\b|\bwhereas\b|\bhowever\b", re.I)
_LOCATION_PATTERN = re.compile(
    r"\b(north[- ]?west|north[- ]?east|south[- ]?west|south[- ]?east|north|south|east|west|cent(?:er|re)|middle)\b",
    re.I,
)


def _negated(text: str, start: int) -> bool:
    """Whether the clause holding position ``start`` says "no"/"not"/... before it."""
    clause = text[:start]
    cuts = [m.end() for m in _CLAUSE_START.finditer(clause)]
    return bool(_NEGATION.search(clause[cuts[-1] if cuts else 0 :]))


def extract_change_kinds(text: str) -> set[str]:
    """The change kinds a caption names.

    A kind counts when one of its phrasings occurs outside a negated clause ("there are no new buildings" names no
    ``building_built``).

    Args:
        text: A caption or any free text.

    Returns:
        The kinds (a subset of :data:`CHANGE_KINDS`); ``{"no_change"}`` when the caption says nothing changed and
        names no kind; an empty set when it names neither.
    """
    text = text or ""
    kinds = {
        kind
        for kind, pattern in PATTERNS.items()
        if any(not _negated(text, m.start()) for m in pattern.finditer(text))
    }
    if not kinds and NO_CHANGE_PATTERN.search(text):
        return {NO_CHANGE}
    return kinds


#: A dated clause of a sequence caption, "between 2016-03 and 2017-08" (days optional): the interval of what follows.
_DATED_CLAUSE = re.compile(
    r"\bbetween\s+(\d{4}-(?:0[1-9]|1[0-2]))(?:-\d{2})?\s+and\s+(\d{4}-(?:0[1-9]|1[0-2]))(?:-\d{2})?\b", re.I
)
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def extract_dated_changes(text: str) -> list[dict]:
    """The changes a sequence caption places in time, each with the interval its sentence gives it.

    Every "between YYYY-MM[-DD] and YYYY-MM[-DD]" clause gives its interval (months) to each kind that
    :func:`extract_change_kinds` finds after it, up to the next such clause or the end of its sentence: "Between
    2016-03 and 2017-08, a road was built in the north and a small building was built in the east." names
    ``road_built`` and ``building_built`` from 2016-03 to 2017-08. Text outside such a stretch places nothing.

    Args:
        text: A caption or any free text.

    Returns:
        ``[{"kind", "start": "YYYY-MM", "end": "YYYY-MM"}]`` in the order of the clauses (kinds of one clause in
        :data:`CHANGE_KINDS` order); ``start <= end`` (the clause's two dates sorted).
    """
    text = text or ""
    clauses = list(_DATED_CLAUSE.finditer(text))
    events = []
    for i, clause in enumerate(clauses):
        stop = clauses[i + 1].start() if i + 1 < len(clauses) else len(text)
        sentence_end = _SENTENCE_END.search(text, clause.end(), stop)
        kinds = extract_change_kinds(text[clause.end() : sentence_end.start() if sentence_end else stop])
        start, end = sorted((clause.group(1), clause.group(2)))
        events += [{"kind": kind, "start": start, "end": end} for kind in CHANGE_KINDS if kind in kinds]
    return events


def extract_locations(text: str) -> set[str]:
    """Which of the 9 grid cells a caption names (``"northeast"`` and ``"north east"`` count as ``"north-east"``)."""
    found = set()
    for match in _LOCATION_PATTERN.finditer(text or ""):
        word = match.group(1).lower().replace(" ", "").replace("-", "")
        if word.startswith("cent") or word == "middle":
            found.add("center")
        elif len(word) > 5:
            found.add(f"{word[:5]}-{word[5:]}")
        else:
            found.add(word)
    return found


def true_kinds(changes: list[dict] | None) -> set[str]:
    """The kinds of a ground-truth change list (``{"no_change"}`` for an empty list)."""
    kinds = {change["kind"] for change in changes or []}
    return kinds or {NO_CHANGE}


def load_ground_truth(fmow_root: Path, fmow_split: str) -> dict[str, list[dict]] | None:
    """The true changes per pair id that ``geollava-synth`` wrote beside a tree (``None`` for a real fMoW tree).

    Raises:
        ValueError: If a line of ``groundtruth/{split}.jsonl`` is not a location (naming the file and line).
    """
    path = fmow_root / "groundtruth" / f"{fmow_split}.jsonl"
    if not path.exists():
        return None
    changes = {}
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            try:
                for pair_id, pair in json.loads(line)["pairs"].items():
                    changes[pair_id] = pair["changes"]
            except (ValueError, KeyError, TypeError, AttributeError) as err:
                raise ValueError(f"{path} line {number}: not a ground-truth location ({err!r})") from err
    return changes
