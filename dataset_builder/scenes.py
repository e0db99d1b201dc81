"""Synthetic satellite scenes: a small scene model, changes applied to it, and a renderer.

A scene lives in normalised coordinates (x right, y down, both in [0, 1]) so that the same place renders at any
size: land cover, a lake, forest patches, full-width roads, building clusters and construction sites. A change edits
the scene and reports its kind, its grid cell and its size. Rendering adds what real imagery has and the model must
see through: field textures, season tint, illumination and a small registration shift between dates.
"""

import copy
import math

import numpy as np
from PIL import Image

from dataset_builder.changes import location_of, size_of


BASE_COVERS = ("farmland", "grassland", "bare ground")
COLORS = {
    "farmland": (118, 140, 70),
    "grassland": (140, 160, 96),
    "bare ground": (168, 146, 112),
    "water": (38, 72, 122),
    "forest": (34, 78, 40),
    "road": (128, 128, 126),
    "roof": (214, 208, 198),
    "shadow": (52, 52, 56),
    "construction": (196, 170, 120),
    "cleared": (150, 118, 84),
}
SEASONS = {
    "summer": (1.0, 1.0, 1.0),
    "autumn": (1.08, 0.96, 0.82),
    "winter": (1.04, 1.04, 1.08),
    "spring": (0.96, 1.06, 0.94),
}


def _cell_box(cell: int, frac: float, rng: np.random.Generator) -> list[float]:
    """A square box of ``frac`` of the image area, centred (with jitter) in grid cell ``cell``."""
    side = math.sqrt(frac)
    cx = (cell % 3 + 0.5) / 3 + rng.uniform(-0.04, 0.04)
    cy = (cell // 3 + 0.5) / 3 + rng.uniform(-0.04, 0.04)
    x0 = float(np.clip(cx - side / 2, 0.0, 1.0 - side))
    y0 = float(np.clip(cy - side / 2, 0.0, 1.0 - side))
    return [x0, y0, side, side]


def _centre(box: list[float]) -> tuple[float, float]:
    return box[0] + box[2] / 2, box[1] + box[3] / 2


def _road_cell(road: dict) -> tuple[float, float]:
    return (0.5, road["pos"]) if road["axis"] == "h" else (road["pos"], 0.5)


def random_scene(rng: np.random.Generator) -> dict:
    """A random scene: base cover, optional lake, forest patches, roads, building clusters."""
    cells = list(rng.permutation(9))
    scene = {
        "base": str(rng.choice(BASE_COVERS)),
        "water": None,
        "forests": [],
        "roads": [],
        "buildings": [],
        "construction": [],
        "cleared": [],
    }
    if rng.random() < 0.4:
        cell = int(cells.pop())
        scene["water"] = {"cell": cell, "box": _cell_box(cell, float(rng.uniform(0.06, 0.1)), rng)}
    for _ in range(int(rng.integers(0, 3))):
        cell = int(cells.pop())
        scene["forests"].append({"box": _cell_box(cell, float(rng.uniform(0.05, 0.09)), rng)})
    for _ in range(int(rng.integers(0, 3))):
        cell = int(cells.pop())
        scene["buildings"].append({"box": _cell_box(cell, float(rng.uniform(0.04, 0.08)), rng)})
    axes = rng.permutation(["h", "v"])
    for axis in axes[: int(rng.integers(0, 3))]:
        scene["roads"].append({"axis": str(axis), "pos": float(rng.choice([1 / 6, 0.5, 5 / 6])), "width": 0.03})
    return scene


def _free_cells(scene: dict) -> list[int]:
    used = set()
    for item in [*scene["forests"], *scene["buildings"], *scene["construction"], *scene["cleared"]]:
        x, y = _centre(item["box"])
        used.add(min(int(y * 3), 2) * 3 + min(int(x * 3), 2))
    if scene["water"]:
        used.add(scene["water"]["cell"])
    return [c for c in range(9) if c not in used]


def possible_changes(scene: dict) -> list[str]:
    """The change kinds that can happen to this scene."""
    kinds = []
    free = _free_cells(scene)
    if free:
        kinds += ["building_built", "field_to_construction"]
    if scene["buildings"]:
        kinds.append("building_demolished")
    if len(scene["roads"]) < 3:
        kinds.append("road_built")
    if any(road["width"] < 0.05 for road in scene["roads"]):
        kinds.append("road_widened")
    if scene["forests"]:
        kinds.append("forest_cleared")
    if scene["water"]:
        w = scene["water"]["box"][2]
        if w < 0.42:
            kinds.append("water_expanded")
        if w > 0.2:
            kinds.append("water_shrunk")
    return kinds


def apply_change(scene: dict, kind: str, rng: np.random.Generator) -> tuple[dict, dict]:
    """Apply one change; return the new scene and the change record ``{"kind", "location", "size"}``."""
    scene = copy.deepcopy(scene)
    if kind in ("building_built", "field_to_construction"):
        cell = int(rng.choice(_free_cells(scene)))
        frac = float(rng.choice([0.045, 0.09, 0.14]))
        box = _cell_box(cell, frac, rng)
        scene["buildings" if kind == "building_built" else "construction"].append({"box": box})
        return scene, {"kind": kind, "location": location_of(*_centre(box)), "size": size_of(frac)}
    if kind == "building_demolished":
        item = scene["buildings"].pop(int(rng.integers(len(scene["buildings"]))))
        scene["cleared"].append(item)
        return scene, {"kind": kind, "location": location_of(*_centre(item["box"])), "size": _box_size(item["box"])}
    if kind == "forest_cleared":
        item = scene["forests"].pop(int(rng.integers(len(scene["forests"]))))
        scene["cleared"].append(item)
        return scene, {"kind": kind, "location": location_of(*_centre(item["box"])), "size": _box_size(item["box"])}
    if kind == "road_built":
        taken = {(r["axis"], r["pos"]) for r in scene["roads"]}
        options = [(a, p) for a in ("h", "v") for p in (1 / 6, 0.5, 5 / 6) if (a, p) not in taken]
        axis, pos = options[int(rng.integers(len(options)))]
        road = {"axis": axis, "pos": pos, "width": 0.035}
        scene["roads"].append(road)
        return scene, {"kind": kind, "location": location_of(*_road_cell(road)), "size": size_of(road["width"])}
    if kind == "road_widened":
        narrow = [r for r in scene["roads"] if r["width"] < 0.05]
        road = narrow[int(rng.integers(len(narrow)))]
        added = 0.07 - road["width"]
        road["width"] = 0.07
        return scene, {"kind": kind, "location": location_of(*_road_cell(road)), "size": size_of(added)}
    if kind in ("water_expanded", "water_shrunk"):
        box = scene["water"]["box"]
        old = box[2] * box[3]
        factor = 1.45 if kind == "water_expanded" else 0.65
        cx, cy = _centre(box)
        side = float(np.clip(box[2] * factor, 0.12, 0.5))
        scene["water"]["box"] = [
            float(np.clip(cx - side / 2, 0, 1 - side)),
            float(np.clip(cy - side / 2, 0, 1 - side)),
            side,
            side,
        ]
        return scene, {"kind": kind, "location": location_of(cx, cy), "size": size_of(abs(side * side - old))}
    raise ValueError(f"unknown change kind {kind!r}")


def _box_size(box: list[float]) -> str:
    return size_of(box[2] * box[3])


def describe_objects(scene: dict) -> list[dict]:
    """The scene's objects as ground truth: kind and grid cell of each."""
    objects = [{"kind": "land_cover", "value": scene["base"]}]
    if scene["water"]:
        objects.append({"kind": "water", "location": location_of(*_centre(scene["water"]["box"]))})
    for key, kind in (("forests", "forest"), ("buildings", "buildings"), ("construction", "construction_site")):
        objects += [{"kind": kind, "location": location_of(*_centre(item["box"]))} for item in scene[key]]
    objects += [
        {"kind": "road", "location": location_of(*_road_cell(road)), "width": road["width"]} for road in scene["roads"]
    ]
    return objects


def render(scene: dict, width: int, height: int, rng: np.random.Generator, season: str = "summer") -> Image.Image:
    """Render a scene at ``width`` x ``height`` with texture, season tint, illumination and a small shift."""
    shift = rng.integers(-2, 3, size=2)
    pad = 4
    w, h = width + 2 * pad, height + 2 * pad
    img = np.empty((h, w, 3), dtype=np.float32)
    img[:] = COLORS[scene["base"]]
    yy, xx = np.mgrid[0:h, 0:w]
    if scene["base"] == "farmland":  # rows of crops
        img += (np.sin(xx * 0.9 + yy * 0.15) * 10)[..., None]
    img += rng.normal(0, 6, size=(h, w, 1))

    def box_px(box):
        x0 = int(round(box[0] * width)) + pad
        y0 = int(round(box[1] * height)) + pad
        return x0, y0, max(2, int(round(box[2] * width))), max(2, int(round(box[3] * height)))

    for item in scene["cleared"]:
        x0, y0, bw, bh = box_px(item["box"])
        img[y0 : y0 + bh, x0 : x0 + bw] = COLORS["cleared"]
    for item in scene["forests"]:
        x0, y0, bw, bh = box_px(item["box"])
        patch = np.array(COLORS["forest"], dtype=np.float32) + rng.normal(0, 9, size=(bh, bw, 1))
        img[y0 : y0 + bh, x0 : x0 + bw] = patch
    if scene["water"]:
        x0, y0, bw, bh = box_px(scene["water"]["box"])
        cy, cx, ry, rx = y0 + bh / 2, x0 + bw / 2, bh / 2, bw / 2
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        img[inside] = COLORS["water"]
    for road in scene["roads"]:
        if road["axis"] == "h":
            c, half = road["pos"] * height + pad, max(1, road["width"] * height / 2)
            img[int(c - half) : int(c + half) + 1, :] = COLORS["road"]
        else:
            c, half = road["pos"] * width + pad, max(1, road["width"] * width / 2)
            img[:, int(c - half) : int(c + half) + 1] = COLORS["road"]
    for item in scene["construction"]:
        x0, y0, bw, bh = box_px(item["box"])
        img[y0 : y0 + bh, x0 : x0 + bw] = COLORS["construction"]
        dots = rng.random((bh, bw)) < 0.08
        img[y0 : y0 + bh, x0 : x0 + bw][dots] = (90, 80, 60)
    for item in scene["buildings"]:
        x0, y0, bw, bh = box_px(item["box"])
        img[y0 : y0 + bh, x0 : x0 + bw] = COLORS["shadow"]
        # a 2 x 2 block of roofs with streets between them and shadows to the south-east
        gw, gh = max(1, bw // 2), max(1, bh // 2)
        for i in range(2):
            for j in range(2):
                rx0, ry0 = x0 + i * gw + 1, y0 + j * gh + 1
                img[ry0 : ry0 + gh - 2, rx0 : rx0 + gw - 2] = COLORS["roof"]
    img *= np.array(SEASONS[season], dtype=np.float32)
    img *= float(rng.uniform(0.9, 1.1))  # illumination
    img = img[pad + shift[1] : pad + shift[1] + height, pad + shift[0] : pad + shift[0] + width]
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
