"""Drawing the shapes corpus: object silhouettes and parts, their layout, stuff backgrounds.

Every mask is a bool ``(size, size)`` array drawn without anti-aliasing; colours are the names of
:data:`use_core.data.shapes.vocab.COLOURS`. All randomness comes from the caller's generator, in
a fixed order, so a scene is byte-identical for a seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from use_core.data.shapes import vocab as V

MIN_VISIBLE_FRACTION = 0.55  # an earlier object keeps at least this share of its silhouette
COMPOSITE_PROBABILITY = 0.4
PLACEMENT_TRIES = 30


@dataclass
class Part:
    """One coloured piece group of an object: a part class (None for a primitive) and its pieces."""

    name: str | None
    colour: str
    pieces: list[np.ndarray]  # bool (H, W) full (unoccluded) masks, drawing order

    @property
    def mask(self) -> np.ndarray:
        return np.logical_or.reduce(self.pieces)


@dataclass
class SceneObject:
    kind: str  # a shape name or a composite object name
    colour: str
    size_t: float  # relative size in [0, 1] within the kind's size range
    centre: tuple[float, float]  # (x, y) pixels
    parts: list[Part]
    silhouette: np.ndarray = field(repr=False)  # bool (H, W)
    ref: str = ""  # disambiguated referring phrase without article, set after layout

    @property
    def size_word(self) -> str | None:
        return "small" if self.size_t < 0.25 else "large" if self.size_t > 0.75 else None


# ---------------------------------------------------------------- rasterising


def _polygon(size: int, points: list[tuple[float, float]]) -> np.ndarray:
    """Bool (size, size) mask of a filled polygon given in pixel (x, y)."""
    img = Image.new("L", (size, size), 0)
    ImageDraw.Draw(img).polygon([(round(x), round(y)) for x, y in points], fill=1)
    return np.asarray(img, dtype=bool)


def _ellipse(size: int, box: tuple[float, float, float, float]) -> np.ndarray:
    """Bool (size, size) mask of a filled ellipse inside the xyxy box."""
    img = Image.new("L", (size, size), 0)
    ImageDraw.Draw(img).ellipse([round(v) for v in box], fill=1)
    return np.asarray(img, dtype=bool)


def _rect(size: int, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return _polygon(size, [(x0, y0), (x1, y0), (x1, y1), (x0, y1)])


def _regular(n: int, radius: float, angle: float) -> list[tuple[float, float]]:
    return [
        (
            radius * math.cos(angle + 2 * math.pi * k / n),
            radius * math.sin(angle + 2 * math.pi * k / n),
        )
        for k in range(n)
    ]


def _shape_outline(kind: str, side: float, rng: np.random.Generator) -> list[tuple[float, float]]:
    """Vertices (x, y) of a primitive centred on the origin; empty list means a circle."""
    deg = math.pi / 180
    if kind == "circle":
        return []
    if kind == "square":
        return _regular(4, side / math.sqrt(2), math.pi / 4 + rng.uniform(-15, 15) * deg)
    if kind == "triangle":
        return _regular(3, side * 0.6, -math.pi / 2 + rng.uniform(-20, 20) * deg)
    if kind == "hexagon":
        return _regular(6, side / 2, rng.uniform(0, 60) * deg)
    if kind == "star":
        start = -math.pi / 2 + rng.uniform(-36, 36) * deg
        outer, inner = side / 2, side * 0.24
        return [
            (r * math.cos(start + k * math.pi / 5), r * math.sin(start + k * math.pi / 5))
            for k, r in ((k, outer if k % 2 == 0 else inner) for k in range(10))
        ]
    if kind == "diamond":
        a = rng.uniform(-10, 10) * deg
        pts = [(0.0, -side / 2), (side * 0.33, 0.0), (0.0, side / 2), (-side * 0.33, 0.0)]
        return [
            (x * math.cos(a) - y * math.sin(a), x * math.sin(a) + y * math.cos(a)) for x, y in pts
        ]
    raise ValueError(f"unknown shape {kind!r}")


def _primitive(kind: str, size: int, rng: np.random.Generator) -> SceneObject:
    t = float(rng.uniform())
    side = size * (1 / 8 + t * (1 / 3.2 - 1 / 8))
    outline = _shape_outline(kind, side, rng)
    extent = max((max(abs(x), abs(y)) for x, y in outline), default=side / 2) + 1
    cx, cy = (float(v) for v in rng.uniform(extent, size - extent, 2))
    if outline:
        mask = _polygon(size, [(cx + x, cy + y) for x, y in outline])
    else:
        mask = _ellipse(size, (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2))
    colour = str(rng.choice(list(V.COLOURS)))
    return SceneObject(kind, colour, t, (cx, cy), [Part(None, colour, [mask])], mask)


# Composite size ranges: (lo, hi) of the box's main dimension as a fraction of the image side,
# and the box's (width / main, height / main) aspect ranges.
_COMPOSITE_BOX: dict[str, tuple[float, float, str]] = {
    "house": (1 / 4.5, 1 / 2.6, "width"),
    "tree": (1 / 4, 1 / 2, "height"),
    "car": (1 / 4, 1 / 2.2, "width"),
    "person": (1 / 3.5, 1 / 2, "height"),
}


def _composite_pieces(
    kind: str, s: int, x0: float, y0: float, w: float, h: float, rng: np.random.Generator
) -> dict[str, list[np.ndarray]]:
    """Full masks of each part's pieces of a composite in the xywh box, keyed by part name."""
    if kind == "house":
        rh = 0.4 * h
        door_c = x0 + w * (0.5 + rng.uniform(-0.05, 0.05))
        win_y = y0 + rh + 0.15 * (h - rh)
        win = 0.16 * w
        sides = [0.18, 0.66] if rng.uniform() < 0.6 else [float(rng.choice([0.18, 0.66]))]
        return {
            "wall": [_rect(s, x0 + 0.08 * w, y0 + rh, x0 + 0.92 * w, y0 + h)],
            "roof": [_polygon(s, [(x0, y0 + rh + 1), (x0 + w, y0 + rh + 1), (x0 + w / 2, y0)])],
            "door": [_rect(s, door_c - 0.1 * w, y0 + 0.65 * h, door_c + 0.1 * w, y0 + h)],
            "window": [_rect(s, x0 + f * w, win_y, x0 + f * w + win, win_y + win) for f in sides],
        }
    if kind == "tree":
        return {
            "trunk": [_rect(s, x0 + 0.4 * w, y0 + 0.5 * h, x0 + 0.6 * w, y0 + h)],
            "crown": [_ellipse(s, (x0, y0, x0 + w, y0 + 0.65 * h))],
        }
    if kind == "car":
        cabin = [(0.2, 0.36), (0.8, 0.36), (0.68, 0.0), (0.3, 0.0)]
        left = [(0.28, 0.33), (0.48, 0.33), (0.48, 0.07), (0.33, 0.07)]
        right = [(0.52, 0.33), (0.72, 0.33), (0.66, 0.07), (0.52, 0.07)]
        r = 0.2 * h

        def poly(pts: list[tuple[float, float]]) -> np.ndarray:
            return _polygon(s, [(x0 + fx * w, y0 + fy * h) for fx, fy in pts])

        return {
            "body": [_rect(s, x0, y0 + 0.35 * h, x0 + w, y0 + 0.8 * h) | poly(cabin)],
            "window": [poly(left), poly(right)],
            "wheel": [
                _ellipse(s, (x0 + f * w - r, y0 + h - 2 * r, x0 + f * w + r, y0 + h))
                for f in (0.22, 0.78)
            ],
        }
    if kind == "person":
        head = 0.26 * h
        cx = x0 + w / 2
        return {
            "leg": [
                _rect(s, cx + d * w - 0.11 * w, y0 + 0.6 * h, cx + d * w + 0.11 * w, y0 + h)
                for d in (-0.16, 0.16)
            ],
            "torso": [_rect(s, cx - 0.3 * w, y0 + 0.24 * h, cx + 0.3 * w, y0 + 0.64 * h)],
            "head": [_ellipse(s, (cx - head / 2, y0, cx + head / 2, y0 + head))],
        }
    raise ValueError(f"unknown composite object {kind!r}")


def _composite(kind: str, size: int, rng: np.random.Generator) -> SceneObject:
    lo, hi, main = _COMPOSITE_BOX[kind]
    t = float(rng.uniform())
    m = size * (lo + t * (hi - lo))
    aspect = {"house": (0.9, 1.25), "tree": (0.6, 0.8), "car": (0.5, 0.6), "person": (0.45, 0.5)}
    a = float(rng.uniform(*aspect[kind]))
    w, h = (m, m * a) if main == "width" else (m * a, m)
    x0, y0 = float(rng.uniform(1, size - w - 2)), float(rng.uniform(1, size - h - 2))
    pieces = _composite_pieces(kind, size, x0, y0, w, h, rng)
    parts: list[Part] = []
    for part in V.OBJECT_PARTS[kind]:
        choices = V.PART_COLOURS[f"{kind} {part}"]
        taken = {p.colour for p in parts}
        free = [c for c in choices if c not in taken] or choices
        parts.append(Part(f"{kind} {part}", str(rng.choice(free)), pieces[part]))
    colour = next(p.colour for p in parts if p.name == f"{kind} {V.MAIN_PART[kind]}")
    silhouette = np.logical_or.reduce([p.mask for p in parts])
    return SceneObject(kind, colour, t, (x0 + w / 2, y0 + h / 2), parts, silhouette)


def _sample_object(size: int, rng: np.random.Generator) -> SceneObject:
    if rng.uniform() < COMPOSITE_PROBABILITY:
        return _composite(str(rng.choice(V.OBJECTS)), size, rng)
    return _primitive(str(rng.choice(V.SHAPES)), size, rng)


def layout(size: int, n: int, rng: np.random.Generator) -> list[SceneObject]:
    """Up to ``n`` objects in drawing order, none occluded below MIN_VISIBLE_FRACTION."""
    owner = np.full((size, size), -1, dtype=np.int64)
    objects: list[SceneObject] = []
    visible: list[int] = []
    for _ in range(n):
        for _try in range(PLACEMENT_TRIES):
            obj = _sample_object(size, rng)
            covered = np.bincount(owner[obj.silhouette] + 1, minlength=len(objects) + 1)[1:]
            left = [v - int(c) for v, c in zip(visible, covered, strict=True)]
            full = [int(o.silhouette.sum()) for o in objects]
            if all(v >= MIN_VISIBLE_FRACTION * f for v, f in zip(left, full, strict=True)):
                owner[obj.silhouette] = len(objects)
                objects.append(obj)
                visible = left + [int(obj.silhouette.sum())]
                break
    return objects


# ---------------------------------------------------------------- backgrounds


def _texture(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Float32 (size, size, 3) RGB texture of a stuff kind (unclipped)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    lum: np.ndarray
    fine = rng.normal(0, 1, (size, size)).astype(np.float32)
    phase = float(rng.uniform(0, 2 * math.pi))
    if kind == "grass":
        blades = np.repeat(rng.normal(0, 1, (size // 4 + 1, size)), 4, axis=0)[:size]
        lum = 14 * blades + 6 * fine
        base = np.array([70, 135, 50], np.float32)
    elif kind == "sand":
        period = size / 12
        lum = 9 * np.sin(2 * np.pi * (y + 6 * np.sin(2 * np.pi * x / size * 2 + phase)) / period)
        lum = lum + 10 * fine
        base = np.array([215, 195, 145], np.float32)
    elif kind == "water":
        period = size / 14
        wave = np.sin(2 * np.pi * y / period + phase + 1.5 * np.sin(2 * np.pi * x / (size / 3)))
        lum = 18 * wave + 5 * fine
        base = np.array([45, 100, 165], np.float32)
    elif kind == "sky":
        grad = (y / max(size - 1, 1))[..., None] * np.array([80, 50, 15], np.float32)
        return np.array([110, 170, 230], np.float32) + grad + 3 * fine[..., None]
    elif kind == "wall":
        bh, bw = max(size // 16, 4), max(size // 8, 8)
        row = (y // bh).astype(np.int64)
        col = ((x + (row % 2) * bw / 2) % bw).astype(np.int64)
        mortar = ((y % bh) < max(bh // 8, 1)) | (col < max(bw // 16, 1))
        lum = np.where(mortar, -40.0, 0.0).astype(np.float32) + 6 * fine
        base = np.array([150, 150, 145], np.float32)
    else:
        raise ValueError(f"unknown stuff {kind!r}")
    return base + lum[..., None]


def background(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Background RGB float32 (H, W, 3) and its stuff label map uint8 (H, W)."""
    if rng.uniform() < 0.5:
        kind = str(rng.choice(V.STUFF))
        label = np.full((size, size), V.SEMANTIC.index(kind), np.uint8)
        return _texture(kind, size, rng), label
    upper, lower = str(rng.choice(V.UPPER_STUFF)), str(rng.choice(V.GROUND_STUFF))
    horizon = int(rng.uniform(0.3, 0.6) * size)
    rgb = _texture(lower, size, rng)
    rgb[:horizon] = _texture(upper, size, rng)[:horizon]
    label = np.full((size, size), V.SEMANTIC.index(lower), np.uint8)
    label[:horizon] = V.SEMANTIC.index(upper)
    return rgb, label
