"""Rendering of synthetic scenes (:mod:`dataset_builder.synthetic.scenes`) into images, and per-pixel labels.

Rendering adds what real imagery has and a model must see through: textures, season tint, illumination, sensor
noise and a small registration shift between dates. The labels (what covers each pixel) feed the tiny models'
vision pretraining.
"""

import numpy as np
from PIL import Image


COLORS = {
    "farmland": (112, 138, 64),
    "grassland": (146, 164, 100),
    "bare ground": (160, 132, 98),
    "water": (30, 62, 118),
    "forest": (30, 70, 36),
    "road": (62, 62, 66),
    "shadow": (40, 40, 46),
    "construction": (228, 208, 166),
    "pit": (96, 80, 60),
    "cleared": (142, 108, 76),
}


ROOFS = ((224, 220, 212), (196, 92, 70), (176, 184, 196))


SEASONS = {
    "summer": (1.0, 1.0, 1.0),
    "autumn": (1.08, 0.96, 0.82),
    "winter": (1.04, 1.04, 1.08),
    "spring": (0.96, 1.06, 0.94),
}


#: What covers a pixel, as :func:`render_with_labels` labels it (a building block's alleys count as buildings).
PIXEL_CLASSES: tuple[str, ...] = ("ground", "cleared", "forest", "water", "road", "construction", "buildings")


def _texture(shape: tuple[int, int], cell: int, rng: np.random.Generator) -> np.ndarray:
    """Blobby noise in [-1, 1]: random values on a coarse grid, blown up to ``shape`` (canopies, soil)."""
    h, w = shape
    coarse = rng.uniform(-1, 1, size=(h // cell + 1, w // cell + 1)).astype(np.float32)
    return np.kron(coarse, np.ones((cell, cell), dtype=np.float32))[:h, :w]


def _ground_rng(scene: dict, item: dict | None = None) -> np.random.Generator:
    """Random numbers fixed by the place, not the date: textures of ground, canopy and sites stay put."""
    key = [scene.get("texture_seed", 0)]
    if item is not None:
        key += [int(v * 1e6) for v in item["box"][:2]]
    return np.random.default_rng(key)


def render(scene: dict, width: int, height: int, rng: np.random.Generator, season: str = "summer") -> Image.Image:
    """Render a scene.

    Args:
        scene: A scene from :func:`random_scene` / :func:`apply_change`.
        width: Image width in pixels.
        height: Image height in pixels.
        rng: Random generator of this date: illumination, sensor noise and the registration shift (textures follow
            from the scene, so unchanged ground looks the same at every date).
        season: A key of :data:`SEASONS` (colour tint).

    Returns:
        An RGB image.
    """
    return _render(scene, width, height, rng, season)[0]


def render_with_labels(
    scene: dict, width: int, height: int, rng: np.random.Generator, season: str = "summer"
) -> tuple[Image.Image, np.ndarray]:
    """Render a scene and label every pixel with what covers it (the image is the one :func:`render` draws).

    Returns:
        The RGB image and a ``(height, width)`` array of indices into :data:`PIXEL_CLASSES`.
    """
    return _render(scene, width, height, rng, season, labels=True)


def _render(
    scene: dict, width: int, height: int, rng: np.random.Generator, season: str, labels: bool = False
) -> tuple[Image.Image, np.ndarray | None]:
    # registration error between dates: up to 3 px per axis at 256 px, 1 px at <= 127 px
    reach = max(1, min(3, round(min(width, height) / 85)))
    shift = rng.integers(-reach, reach + 1, size=2)
    pad = 4
    w, h = width + 2 * pad, height + 2 * pad
    blob = max(2, min(width, height) // 48)
    img = np.empty((h, w, 3), dtype=np.float32)
    img[:] = COLORS[scene["base"]]
    label = np.zeros((h, w), dtype=np.uint8) if labels else None

    def mark(region, name: str) -> None:
        if label is not None:
            label[region] = PIXEL_CLASSES.index(name)

    if scene["base"] == "farmland":  # crop rows in parcels of alternating direction
        yy, xx = np.mgrid[0:h, 0:w]
        parcel = ((xx // max(8, w // 5)) + (yy // max(8, h // 4))) % 2
        rows = np.where(parcel == 0, np.sin(xx * 1.1), np.sin(yy * 1.1))
        img += (rows * 9)[..., None]
    img += (_texture((h, w), blob * 3, _ground_rng(scene)) * 8)[..., None]

    def box_px(box: list[float]) -> tuple[int, int, int, int]:
        x0, y0 = int(round(box[0] * width)) + pad, int(round(box[1] * height)) + pad
        return x0, y0, max(2, int(round(box[2] * width))), max(2, int(round(box[3] * height)))

    for item in scene["cleared"]:
        x0, y0, bw, bh = box_px(item["box"])
        texture = _texture((bh, bw), blob, _ground_rng(scene, item))
        img[y0 : y0 + bh, x0 : x0 + bw] = np.array(COLORS["cleared"]) + (texture * 10)[..., None]
        mark((slice(y0, y0 + bh), slice(x0, x0 + bw)), "cleared")
    for item in scene["forests"]:
        x0, y0, bw, bh = box_px(item["box"])
        texture = _texture((bh, bw), blob, _ground_rng(scene, item))
        img[y0 : y0 + bh, x0 : x0 + bw] = np.array(COLORS["forest"]) + (texture * 14)[..., None]
        mark((slice(y0, y0 + bh), slice(x0, x0 + bw)), "forest")
    if scene["water"]:
        x0, y0, bw, bh = box_px(scene["water"]["box"])
        ys, xs = np.ogrid[0:h, 0:w]
        inside = ((ys - (y0 + bh / 2)) / (bh / 2)) ** 2 + ((xs - (x0 + bw / 2)) / (bw / 2)) ** 2 <= 1
        img[inside] = COLORS["water"]
        mark(inside, "water")
    for road in scene["roads"]:
        span = height if road["axis"] == "h" else width
        c, half = road["pos"] * span + pad, max(1.0, road["width"] * span / 2)
        lo, hi = int(round(c - half)), int(round(c + half))
        band = (slice(lo, hi), slice(None)) if road["axis"] == "h" else (slice(None), slice(lo, hi))
        img[band] = COLORS["road"]
        mark(band, "road")
    for item in scene["construction"]:
        x0, y0, bw, bh = box_px(item["box"])
        site = img[y0 : y0 + bh, x0 : x0 + bw]
        site[:] = COLORS["construction"]
        site[(_ground_rng(scene, item).random((bh, bw)) < 0.06)] = COLORS["pit"]  # machines, spoil heaps
        site[:, :1] = site[:, -1:] = site[:1, :] = site[-1:, :] = COLORS["pit"]  # the fence
        mark((slice(y0, y0 + bh), slice(x0, x0 + bw)), "construction")
    for item in scene["buildings"]:
        x0, y0, bw, bh = box_px(item["box"])
        img[y0 : y0 + bh, x0 : x0 + bw] = COLORS["shadow"]  # alleys and shadows
        mark((slice(y0, y0 + bh), slice(x0, x0 + bw)), "buildings")
        n = 2 if min(bw, bh) < 40 else 3
        gw, gh = bw / n, bh / n
        gap = max(1, int(min(gw, gh) / 6))
        for i in range(n):
            for j in range(n):
                rx0, ry0 = x0 + int(i * gw), y0 + int(j * gh)
                # roof colours follow from the block's place, so an unchanged block looks the same at every date
                roof = np.array(ROOFS[(int(item["box"][0] * 997) + 3 * i + j) % len(ROOFS)], dtype=np.float32)
                img[ry0 : ry0 + int(gh) - gap, rx0 : rx0 + int(gw) - gap] = roof
    img *= np.array(SEASONS[season], dtype=np.float32) * float(rng.uniform(0.9, 1.1))  # season and illumination
    img += rng.normal(0, 2, size=(h, w, 1)).astype(np.float32)  # sensor noise
    crop = (slice(pad + shift[1], pad + shift[1] + height), slice(pad + shift[0], pad + shift[0] + width))
    return Image.fromarray(np.clip(img[crop], 0, 255).astype(np.uint8)), None if label is None else label[crop]
