"""Synthetic satellite scenes: a small scene model and the changes applied to it (rendering: ``render.py``).

A scene lives in normalised coordinates (x right, y down, both in [0, 1]) so that the same place renders at any
size: a base land cover, a lake, forest patches, full-width roads, building blocks and construction sites. A change
edits the scene and reports its kind, its grid cell and its size. Every change covers at least ~4 % of the image
with strong contrast, so it stays visible when a frame is shrunk to the 32-64 px the tiny models see.
"""

import copy
import math

import numpy as np

from dataset_builder.changes import SIZES, location_of, size_of


BASE_COVERS = ("farmland", "grassland", "bare ground")
#: Box areas (fractions of the image) of new buildings and construction sites: one small, medium and large each.
NEW_AREAS = (0.05, 0.09, 0.13)
#: Lake sides (fraction of the image side) by level; one level apart is >= 4 % of the image (lakes are ellipses).
WATER_SIDES = (0.24, 0.34, 0.44, 0.54)
ROAD_WIDTH, NEW_ROAD_WIDTH, WIDE_ROAD_WIDTH = 0.04, 0.065, 0.105
ROAD_POSITIONS = (1 / 6, 0.5, 5 / 6)


def _cell_box(cell: int, frac: float, rng: np.random.Generator) -> list[float]:
    """A box of ``frac`` of the image area (aspect 0.8-1.25), centred with a little jitter in grid cell ``cell``."""
    aspect = float(rng.uniform(0.8, 1.25))
    w, h = math.sqrt(frac * aspect), math.sqrt(frac / aspect)
    cx = (cell % 3 + 0.5) / 3 + rng.uniform(-0.02, 0.02)
    cy = (cell // 3 + 0.5) / 3 + rng.uniform(-0.02, 0.02)
    x0 = float(np.clip(cx - w / 2, 0.0, 1.0 - w))
    y0 = float(np.clip(cy - h / 2, 0.0, 1.0 - h))
    return [x0, y0, w, h]


def _water_box(cell: int, level: int) -> list[float]:
    side = WATER_SIDES[level]
    cx, cy = (cell % 3 + 0.5) / 3, (cell // 3 + 0.5) / 3
    return [float(np.clip(cx - side / 2, 0, 1 - side)), float(np.clip(cy - side / 2, 0, 1 - side)), side, side]


def _ellipse_area(level: int) -> float:
    return math.pi / 4 * WATER_SIDES[level] ** 2


def _centre(box: list[float]) -> tuple[float, float]:
    return box[0] + box[2] / 2, box[1] + box[3] / 2


def _road_point(road: dict) -> tuple[float, float]:
    return (0.5, road["pos"]) if road["axis"] == "h" else (road["pos"], 0.5)


def random_scene(rng: np.random.Generator) -> dict:
    """A random scene: base cover, optional lake, 0-2 forest patches, 0-2 roads, 0-2 building blocks."""
    cells = [int(c) for c in rng.permutation(9)]
    scene = {
        "base": str(rng.choice(BASE_COVERS)),
        "texture_seed": int(rng.integers(2**31)),  # the ground's texture is the same at every date
        "water": None,
        "forests": [],
        "roads": [],
        "buildings": [],
        "construction": [],
        "cleared": [],
    }
    if rng.random() < 0.4:
        cell = cells.pop()
        level = int(rng.integers(1, 3))
        scene["water"] = {"cell": cell, "level": level, "box": _water_box(cell, level)}
    for _ in range(int(rng.integers(0, 3))):
        scene["forests"].append({"box": _cell_box(cells.pop(), float(rng.uniform(0.05, 0.13)), rng)})
    for _ in range(int(rng.integers(0, 3))):
        scene["buildings"].append({"box": _cell_box(cells.pop(), float(rng.uniform(0.05, 0.12)), rng)})
    for axis in [str(a) for a in rng.permutation(["h", "v"])][: int(rng.integers(0, 3))]:
        scene["roads"].append({"axis": axis, "pos": float(rng.choice(ROAD_POSITIONS)), "width": ROAD_WIDTH})
    return scene


def _free_cells(scene: dict) -> list[int]:
    used = set()
    for item in [*scene["forests"], *scene["buildings"], *scene["construction"], *scene["cleared"]]:
        x, y = _centre(item["box"])
        used.add(min(int(y * 3), 2) * 3 + min(int(x * 3), 2))
    if scene["water"]:
        used.add(scene["water"]["cell"])
        if scene["water"]["level"] >= 2:  # a big lake reaches into its neighbours
            used |= {
                c
                for c in range(9)
                if abs(c % 3 - scene["water"]["cell"] % 3) + abs(c // 3 - scene["water"]["cell"] // 3) == 1
            }
    return [c for c in range(9) if c not in used]


def _road_free(scene: dict, axis: str, pos: float, width: float) -> bool:
    """Whether a road band would stay mostly in view (at most 30 % of its length under buildings, sites, crossings)."""
    covered = np.zeros(100, dtype=bool)
    for item in [*scene["buildings"], *scene["construction"]]:
        x, y, w, h = item["box"]
        across, along, size_across, size_along = (y, x, h, w) if axis == "h" else (x, y, w, h)
        if across < pos + width / 2 and across + size_across > pos - width / 2:
            covered[int(along * 100) : int(np.ceil((along + size_along) * 100))] = True
    for road in scene["roads"]:
        if road["axis"] != axis:
            covered[
                int((road["pos"] - road["width"] / 2) * 100) : int(np.ceil((road["pos"] + road["width"] / 2) * 100))
            ] = True
    return covered.mean() <= 0.3


def _road_options(scene: dict) -> list[tuple[str, float]]:
    taken = {(r["axis"], r["pos"]) for r in scene["roads"]}
    return [
        (a, p)
        for a in ("h", "v")
        for p in ROAD_POSITIONS
        if (a, p) not in taken and _road_free(scene, a, p, NEW_ROAD_WIDTH)
    ]


def _narrow_roads(scene: dict) -> list[dict]:
    return [
        r
        for r in scene["roads"]
        if r["width"] < WIDE_ROAD_WIDTH and _road_free(scene, r["axis"], r["pos"], WIDE_ROAD_WIDTH)
    ]


def possible_changes(scene: dict) -> list[str]:
    """The change kinds that can happen to this scene."""
    kinds = []
    if _free_cells(scene):
        kinds += ["building_built", "field_to_construction"]
    if any(not b.get("new") for b in scene["buildings"]):
        kinds.append("building_demolished")
    if _road_options(scene):
        kinds.append("road_built")
    if _narrow_roads(scene):
        kinds.append("road_widened")
    if scene["forests"]:
        kinds.append("forest_cleared")
    if scene["water"]:
        if scene["water"]["level"] < len(WATER_SIDES) - 1:
            kinds.append("water_expanded")
        if scene["water"]["level"] > 0:
            kinds.append("water_shrunk")
    return kinds


def apply_change(scene: dict, kind: str, rng: np.random.Generator) -> tuple[dict, dict]:
    """Apply one change to a copy of ``scene``.

    Args:
        scene: A scene from :func:`random_scene` (not modified).
        kind: One of :func:`possible_changes` for this scene.
        rng: The random generator deciding where and how large.

    Returns:
        The new scene and the change record ``{"kind", "location", "size"}``.

    Raises:
        ValueError: If ``kind`` is not a change kind.
    """
    scene = copy.deepcopy(scene)
    if kind in ("building_built", "field_to_construction"):
        cell = int(rng.choice(_free_cells(scene)))
        frac = float(rng.choice(NEW_AREAS))
        box = _cell_box(cell, frac, rng)
        # "new" buildings stay: one built then demolished between two dates would leave a change with no name.
        scene["buildings" if kind == "building_built" else "construction"].append({"box": box, "new": True})
        return scene, {"kind": kind, "location": location_of(*_centre(box)), "size": size_of(frac)}
    if kind in ("building_demolished", "forest_cleared"):
        group = scene["buildings" if kind == "building_demolished" else "forests"]
        candidates = [k for k, item in enumerate(group) if not item.get("new")]
        item = group.pop(candidates[int(rng.integers(len(candidates)))])
        scene["cleared"].append(item)
        box = item["box"]
        return scene, {"kind": kind, "location": location_of(*_centre(box)), "size": size_of(box[2] * box[3])}
    if kind == "road_built":
        options = _road_options(scene)
        axis, pos = options[int(rng.integers(len(options)))]
        road = {"axis": axis, "pos": pos, "width": NEW_ROAD_WIDTH}
        scene["roads"].append(road)
        return scene, {"kind": kind, "location": location_of(*_road_point(road)), "size": size_of(road["width"])}
    if kind == "road_widened":
        narrow = _narrow_roads(scene)
        road = narrow[int(rng.integers(len(narrow)))]
        added = WIDE_ROAD_WIDTH - road["width"]
        road["width"] = WIDE_ROAD_WIDTH
        return scene, {"kind": kind, "location": location_of(*_road_point(road)), "size": size_of(added)}
    if kind in ("water_expanded", "water_shrunk"):
        water = scene["water"]
        old = water["level"]
        room = len(WATER_SIDES) - 1 - old if kind == "water_expanded" else old
        step = int(rng.integers(1, min(room, 2) + 1))
        water["level"] = old + step if kind == "water_expanded" else old - step
        water["box"] = _water_box(water["cell"], water["level"])
        area = abs(_ellipse_area(water["level"]) - _ellipse_area(old))
        return scene, {"kind": kind, "location": location_of(*_centre(water["box"])), "size": size_of(area)}
    raise ValueError(f"unknown change kind {kind!r}")


def apply_random_changes(scene: dict, n: int, rng: np.random.Generator) -> dict:
    """``scene`` after up to ``n`` random changes, one after another (fewer where nothing more can change)."""
    for _ in range(n):
        kinds = possible_changes(scene)
        if not kinds:
            break
        scene, _ = apply_change(scene, str(rng.choice(kinds)), rng)
    return scene


def diff_scenes(before: dict, after: dict) -> list[dict]:
    """The changes between two states of one location's scene (``after`` reached by :func:`apply_change` steps).

    This is how ground truth composes over several steps: every object added or removed is one change; a lake is
    compared by its level, so one that grew and shrank back is no change and the size is the net area; a road built
    then widened is a built road; two changes of one kind in one place are one change. Buildings built along the way
    are never demolished (see :func:`apply_change`), so "built then demolished" cannot happen. For one step the result
    is that step's change record.

    Returns:
        Change records ``{"kind", "location", "size"}`` in :data:`~dataset_builder.changes.CHANGE_KINDS` order.
    """
    changes = []

    def box_change(kind: str, box: list[float]) -> None:
        changes.append({"kind": kind, "location": location_of(*_centre(box)), "size": size_of(box[2] * box[3])})

    def new_boxes(kind: str, layer: str, old: dict, new: dict) -> None:
        """One ``kind`` change per box of ``layer`` in ``new`` and not in ``old``."""
        old_boxes = [item["box"] for item in old[layer]]
        for box in (item["box"] for item in new[layer]):
            if box not in old_boxes:
                box_change(kind, box)

    new_boxes("building_built", "buildings", before, after)
    new_boxes("building_demolished", "buildings", after, before)
    old_roads = {(r["axis"], r["pos"]): r["width"] for r in before["roads"]}
    for road in after["roads"]:
        key, point = (road["axis"], road["pos"]), location_of(*_road_point(road))
        if key not in old_roads:
            changes.append({"kind": "road_built", "location": point, "size": size_of(road["width"])})
    for road in after["roads"]:
        old = old_roads.get((road["axis"], road["pos"]))
        if old is not None and road["width"] > old:
            size = size_of(road["width"] - old)
            changes.append({"kind": "road_widened", "location": location_of(*_road_point(road)), "size": size})
    new_boxes("field_to_construction", "construction", before, after)
    new_boxes("forest_cleared", "forests", after, before)
    if before["water"] and after["water"] and before["water"]["level"] != after["water"]["level"]:
        old, new = before["water"]["level"], after["water"]["level"]
        changes.append(
            {
                "kind": "water_expanded" if new > old else "water_shrunk",
                "location": location_of(*_centre(after["water"]["box"])),
                "size": size_of(abs(_ellipse_area(new) - _ellipse_area(old))),
            }
        )
    # two roads through the centre changed alike: one change there, of the larger size
    merged: dict[tuple[str, str], dict] = {}
    for change in changes:
        key = (change["kind"], change["location"])
        if key not in merged or SIZES.index(change["size"]) > SIZES.index(merged[key]["size"]):
            merged[key] = change
    return list(merged.values())


def describe_objects(scene: dict) -> list[dict]:
    """The scene's objects as ground truth: kind and grid cell of each (see docs/synthetic-data.md)."""
    objects = [{"kind": "land_cover", "value": scene["base"]}]
    if scene["water"]:
        objects.append({"kind": "water", "location": location_of(*_centre(scene["water"]["box"]))})
    for key, kind in (
        ("forests", "forest"),
        ("buildings", "buildings"),
        ("construction", "construction_site"),
        ("cleared", "cleared_land"),
    ):
        objects += [{"kind": kind, "location": location_of(*_centre(item["box"]))} for item in scene[key]]
    objects += [
        {"kind": "road", "location": location_of(*_road_point(road)), "width": road["width"]}
        for road in scene["roads"]
    ]
    return objects
