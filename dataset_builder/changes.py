"""The vocabulary of changes: kinds, places, sizes, how captions phrase them, and how to read them back.

The synthetic describer only writes phrasings that :func:`extract_change_kinds` recognises, so the grounding metric
(which change kinds a prediction names, against the ground truth the generator wrote) is exact on references and
reasonable on free text.
"""

import re


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

#: Size of a change by the fraction of the image it covers: small < 6 %, medium < 12 %, large otherwise.
SIZES: tuple[str, ...] = ("small", "medium", "large")
SIZE_THRESHOLDS = (0.06, 0.12)


def size_of(area_fraction: float) -> str:
    """The size name of a change covering ``area_fraction`` of the image."""
    if area_fraction < SIZE_THRESHOLDS[0]:
        return "small"
    if area_fraction < SIZE_THRESHOLDS[1]:
        return "medium"
    return "large"


def location_of(x: float, y: float) -> str:
    """The grid cell name of a point in normalised image coordinates (``x`` right, ``y`` down, both in [0, 1])."""
    col = min(int(x * 3), 2)
    row = min(int(y * 3), 2)
    return LOCATIONS[3 * row + col]


#: Caption templates per kind (``{size}`` and ``{loc}`` are filled in); two or three phrasings each.
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
NO_CHANGE_PHRASES: tuple[str, ...] = (
    "No significant changes are visible between the two images.",
    "The scene looks unchanged between the two images.",
)

_NEG = r"(?<!\bno )(?<!\bnot )(?<!\bnever )"
PATTERNS: dict[str, re.Pattern] = {
    "building_built": re.compile(
        _NEG + r"\b(new (buildings?|houses?|structures?)|buildings? (were|was|have been|has been) "
        r"(built|constructed|erected|added)|(built|constructed|erected) (new )?buildings?)",
        re.I,
    ),
    "building_demolished": re.compile(
        r"\b(demolish\w*|torn down|tore down|razed|buildings? (were|was|have been) removed|"
        r"removal of (the )?buildings?)",
        re.I,
    ),
    "road_built": re.compile(
        _NEG + r"\b(new (road|street|highway)s?|roads? (was|were|has been|have been) (built|paved))", re.I
    ),
    "road_widened": re.compile(r"\b(widen\w*|broaden\w*|road\w* (became|is now|are now) wider)", re.I),
    "field_to_construction": re.compile(r"\b(construction sites?|under construction)", re.I),
    "forest_cleared": re.compile(
        r"\b(deforest\w*|forest (was|were|has been|had been) cleared|clear(ed|ing) (a |the |some )?(\w+ )?"
        r"(patch of )?(forest|trees|woodland)|trees (were|have been) (cut|felled|removed)|"
        r"(patch of )?forest was cleared|cut down)",
        re.I,
    ),
    "water_expanded": re.compile(
        r"\b((water|lake|pond|river|reservoir)\w* [\w -]{0,25}?(expanded|grew|rose|widened|flooded)|flooding|"
        r"(more|rising) water)",
        re.I,
    ),
    "water_shrunk": re.compile(
        r"\b((water|lake|pond|river|reservoir)\w* [\w -]{0,25}?(shrank|shrunk|receded|dried|retreated)|"
        r"(less|falling) water|dried up)",
        re.I,
    ),
}
NO_CHANGE_PATTERN = re.compile(
    r"\b(no (significant |visible |notable |major |obvious )?(changes?|difference)|unchanged|"
    r"nothing (has )?changed|(remains|remained|stays|stayed) the same|same as before)",
    re.I,
)
_LOCATION_PATTERN = re.compile(
    r"\b(north-west|north-east|south-west|south-east|northwest|northeast|southwest|southeast|north|south|east|west|"
    r"cent(?:er|re))\b",
    re.I,
)


def extract_change_kinds(text: str) -> set[str]:
    """The change kinds a caption names.

    Returns:
        The kinds (a subset of :data:`CHANGE_KINDS`); ``{"no_change"}`` when the caption says nothing changed and
        names no kind; an empty set when it names neither.
    """
    kinds = {kind for kind, pattern in PATTERNS.items() if pattern.search(text or "")}
    if not kinds and NO_CHANGE_PATTERN.search(text or ""):
        return {NO_CHANGE}
    return kinds


def extract_locations(text: str) -> set[str]:
    """Which of the 9 grid cells a caption names (``"northeast"`` counts as ``"north-east"``)."""
    found = set()
    for match in _LOCATION_PATTERN.finditer(text or ""):
        word = match.group(1).lower()
        if word.startswith("cent"):
            found.add("center")
        elif len(word) > 5 and "-" not in word:
            found.add(f"{word[:5]}-{word[5:]}")
        else:
            found.add(word)
    return found


def true_kinds(changes: list[dict] | None) -> set[str]:
    """The kinds of a ground-truth change list (``{"no_change"}`` for an empty list)."""
    kinds = {change["kind"] for change in changes or []}
    return kinds or {NO_CHANGE}
