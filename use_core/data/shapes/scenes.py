"""The procedural "shapes" demo corpus: seeded scenes with exact instance, part and stuff masks.

Each scene is a textured background (one or two "stuff" kinds, e.g. sky above grass) with
2–5 objects: coloured primitives (``red circle``) and composites with named parts
(``house``: wall, roof, door, window). Objects are drawn in order, later ones occluding earlier
ones; a placement that would leave an earlier object with less than
:data:`MIN_VISIBLE_FRACTION` of its silhouette visible is rejected, so every drawn object is
annotated and every annotation is visible. Drawing is done without anti-aliasing on boolean
masks, so image pixels, label maps and masks agree exactly.

Layout written under ``out_dir`` (all JSON sorted-key and compact, byte-identical for a seed)::

    classes.json                       class lists; list index == label id == COCO category_id
    {split}/images/{split}_{i:05d}.png RGB uint8, HWC
    {split}/semantic/{stem}.png        uint8 index into classes["semantic"] (every pixel labelled)
    {split}/parts_sem/{stem}.png       uint8 index into classes["parts"], 255 = not a part
    {split}/instances.json             COCO instances (objects and stuff), RLE masks
    {split}/parts.json                 COCO parts, each with ``parent_id`` (its object annotation)
    {split}/captions.json              COCO captions, 1–2 per image
    {split}/regions.json               Visual-Genome region descriptions (xywh int pixel boxes)

Masks are *visible* pixels: an instance mask is what is left of the object after occlusion, a part
mask is the visible pixels of that part, hence always a subset of its parent's instance mask.
Boxes are COCO ``[x, y, w, h]`` of the tight box around the mask (``w = x_max - x_min + 1``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils
from tqdm import tqdm

from use_core.data.shapes import vocab as V

SPLITS: tuple[str, ...] = ("train", "val")
MIN_VISIBLE_FRACTION = 0.55  # an earlier object keeps at least this share of its silhouette
COMPOSITE_PROBABILITY = 0.4
PLACEMENT_TRIES = 30
COLOUR_JITTER = 12  # per-part uniform RGB offset, ±
PIXEL_NOISE_STD = 4.0  # per-pixel Gaussian noise on objects
IGNORE = 255


@dataclass
class _Part:
    """One coloured piece group of an object: a part class (None for a primitive) and its pieces."""

    name: str | None
    colour: str
    pieces: list[np.ndarray]  # bool (H, W) full (unoccluded) masks, drawing order

    @property
    def mask(self) -> np.ndarray:
        return np.logical_or.reduce(self.pieces)


@dataclass
class _Object:
    kind: str  # a shape name or a composite object name
    colour: str
    size_t: float  # relative size in [0, 1] within the kind's size range
    centre: tuple[float, float]  # (x, y) pixels
    parts: list[_Part]
    silhouette: np.ndarray = field(repr=False)  # bool (H, W)
    ref: str = ""  # disambiguated referring phrase without article, set after layout

    @property
    def size_word(self) -> str | None:
        return "small" if self.size_t < 0.25 else "large" if self.size_t > 0.75 else None


@dataclass
class _Scene:
    image: np.ndarray  # uint8 (H, W, 3)
    semantic: np.ndarray  # uint8 (H, W)
    parts_sem: np.ndarray  # uint8 (H, W)
    instances: list[dict[str, Any]]  # mask, category, colour, colour_shape, parts=[...]
    captions: list[str]
    regions: list[tuple[str, tuple[int, int, int, int]]]  # phrase, xywh


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


def _primitive(kind: str, size: int, rng: np.random.Generator) -> _Object:
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
    return _Object(kind, colour, t, (cx, cy), [_Part(None, colour, [mask])], mask)


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


def _composite(kind: str, size: int, rng: np.random.Generator) -> _Object:
    lo, hi, main = _COMPOSITE_BOX[kind]
    t = float(rng.uniform())
    m = size * (lo + t * (hi - lo))
    aspect = {"house": (0.9, 1.25), "tree": (0.6, 0.8), "car": (0.5, 0.6), "person": (0.45, 0.5)}
    a = float(rng.uniform(*aspect[kind]))
    w, h = (m, m * a) if main == "width" else (m * a, m)
    x0, y0 = float(rng.uniform(1, size - w - 2)), float(rng.uniform(1, size - h - 2))
    pieces = _composite_pieces(kind, size, x0, y0, w, h, rng)
    parts: list[_Part] = []
    for part in V.OBJECT_PARTS[kind]:
        choices = V.PART_COLOURS[f"{kind} {part}"]
        taken = {p.colour for p in parts}
        free = [c for c in choices if c not in taken] or choices
        parts.append(_Part(f"{kind} {part}", str(rng.choice(free)), pieces[part]))
    colour = next(p.colour for p in parts if p.name == f"{kind} {V.MAIN_PART[kind]}")
    silhouette = np.logical_or.reduce([p.mask for p in parts])
    return _Object(kind, colour, t, (x0 + w / 2, y0 + h / 2), parts, silhouette)


def _sample_object(size: int, rng: np.random.Generator) -> _Object:
    if rng.uniform() < COMPOSITE_PROBABILITY:
        return _composite(str(rng.choice(V.OBJECTS)), size, rng)
    return _primitive(str(rng.choice(V.SHAPES)), size, rng)


def _layout(size: int, n: int, rng: np.random.Generator) -> list[_Object]:
    """Up to ``n`` objects in drawing order, none occluded below MIN_VISIBLE_FRACTION."""
    owner = np.full((size, size), -1, dtype=np.int64)
    objects: list[_Object] = []
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


def _background(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
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


# ---------------------------------------------------------------- language


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _a(phrase: str) -> str:
    return f"{V.article(phrase)} {phrase}"


def _position(obj: _Object, size: int) -> str:
    cx, cy = obj.centre
    col = "left" if cx < size / 3 else "right" if cx > 2 * size / 3 else ""
    row = "top" if cy < size / 3 else "bottom" if cy > 2 * size / 3 else ""
    if col and row:
        return f"in the {row} {col} corner"
    if col:
        return f"on the {col}"
    return f"at the {row}" if row else "in the middle"


def _assign_refs(objects: list[_Object], size: int) -> None:
    """Set each object's referring phrase; same-colour same-kind objects get their position."""
    for obj in objects:
        words = [w for w in (obj.size_word, obj.colour, obj.kind) if w]
        obj.ref = " ".join(words)
        twins = [o for o in objects if (o.kind, o.colour) == (obj.kind, obj.colour)]
        if len(twins) > 1:
            obj.ref += " " + _position(obj, size)


def _relation(a: _Object, b: _Object, a_index: int, b_index: int) -> str:
    """Spatial relation word(s) for 'a <rel> b'."""
    if a_index > b_index and (a.silhouette & b.silhouette).any():
        return "in front of"
    if b_index > a_index and (a.silhouette & b.silhouette).any():
        return "behind"
    dx, dy = a.centre[0] - b.centre[0], a.centre[1] - b.centre[1]
    if abs(dx) >= abs(dy):
        return "to the left of" if dx < 0 else "to the right of"
    return "above" if dy < 0 else "below"


_INVERSE = {
    "in front of": "behind",
    "behind": "in front of",
    "to the left of": "to the right of",
    "to the right of": "to the left of",
    "above": "below",
    "below": "above",
}


def _stuff_phrase(kind: str) -> str:
    words = f"{V.STUFF_COLOUR_WORD[kind]} {kind}"
    return _a(words) if kind in V.UPPER_STUFF else words


def _part_items(obj: _Object, counts: dict[str, int]) -> list[tuple[str, str]]:
    """(noun phrase, verb) for each visible part, e.g. ('two black wheels', 'are')."""
    items = []
    for part in obj.parts:
        n = counts.get(part.name or "", 0)
        if part.name is None or n == 0:
            continue
        noun = part.name.split(" ", 1)[1]
        if n == 1:
            items.append((_a(f"{part.colour} {noun}"), "is"))
        else:
            items.append((f"{V.NUMBER_WORDS.get(n, str(n))} {part.colour} {V.plural(noun)}", "are"))
    return items


def _captions(
    objects: list[_Object],
    stuff: list[str],
    part_counts: list[dict[str, int]],
    rng: np.random.Generator,
) -> list[str]:
    """1–2 captions naming every object, its attributes, parts, relations and the background."""
    vague = str(rng.choice(V.VAGUE_SCENE_WORDS))
    listing = _join([_a(o.ref) for o in objects])
    are = "is" if len(objects) == 1 else "are"
    opening = [
        f"{_cap(vague)} shows {listing}.",
        f"In {vague} there is {listing}.",
        f"{_cap(listing)} {are} in {vague}.",
    ][int(rng.integers(3))]
    sentences = [opening]
    order = rng.permutation(len(objects))
    for i, j in zip(order[:-1][:2], order[1:][:2], strict=True):
        a, b = objects[i], objects[j]
        rel = _relation(a, b, int(i), int(j))
        sentences.append(
            [
                f"The {a.ref} is {rel} the {b.ref}.",
                f"{_cap(rel)} the {b.ref} there is {_a(a.ref)}.",
                f"The {b.ref} is {_INVERSE[rel]} the {a.ref}.",
            ][int(rng.integers(3))]
        )
    for obj, counts in zip(objects, part_counts, strict=True):
        items = _part_items(obj, counts)
        if not items:
            continue
        if rng.uniform() < 0.6 or len(items) < 2:
            sentences.append(f"The {obj.ref} has {_join([p for p, _ in items])}.")
        else:
            sentences.append(f"The {obj.ref} has {_join([p for p, _ in items[:-1]])}.")
            noun, verb = items[-1]
            sentences.append(f"Its {noun.split(' ')[-1]} {verb} {noun.split(' ')[-2]}.")
    ground = stuff[-1]
    if len(stuff) == 2:
        sentences.append(
            f"{_cap(_stuff_phrase(stuff[0]))} fills the top of {vague} "
            f"and {_stuff_phrase(ground)} covers the bottom."
        )
    elif ground in V.UPPER_STUFF:
        sentences.append(f"Behind the objects there is {_stuff_phrase(ground)}.")
    else:
        sentences.append(
            [f"The background is {_stuff_phrase(ground)}.", f"Everything stands on {ground}."][
                int(rng.integers(2))
            ]
        )
    captions = [" ".join(sentences)]
    if rng.uniform() < 0.7:
        where = "in front of" if ground in V.UPPER_STUFF else "on"
        captions.append(f"A picture of {listing} {where} {_stuff_phrase(ground)}.")
    return captions


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight xywh int box of a non-empty bool mask."""
    ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)


def _object_phrase(obj: _Object, size: int, rng: np.random.Generator) -> str:
    plain = f"{obj.colour} {obj.kind}"
    options = [f"the {obj.ref}", _a(f"{plain} {_position(obj, size)}"), plain]
    return options[int(rng.integers(len(options)))]


def _part_phrase(obj: _Object, noun_phrase: str, rng: np.random.Generator) -> str:
    noun = noun_phrase.split(" ")[-1]
    options = [f"the {noun} of the {obj.ref}", f"the {obj.ref}'s {noun}", noun_phrase]
    return options[int(rng.integers(len(options)))]


# ---------------------------------------------------------------- one scene


def _render_scene(size: int, n_objects: int, rng: np.random.Generator) -> _Scene:
    """Sample and draw one scene with its annotations (masks are bool (H, W))."""
    rgb, semantic = _background(size, rng)
    stuff = [V.SEMANTIC[int(v)] for v in dict.fromkeys(semantic[:, 0].tolist())]
    objects = _layout(size, n_objects, rng)
    _assign_refs(objects, size)
    noise = rng.normal(0, PIXEL_NOISE_STD, (size, size, 3)).astype(np.float32)
    owner = np.full((size, size), -1, np.int64)
    parts_sem = np.full((size, size), IGNORE, np.uint8)
    part_owner = np.full((size, size), -1, np.int64)  # (object, part, piece) flat code
    for k, obj in enumerate(objects):
        semantic[obj.silhouette] = V.SEMANTIC.index(obj.kind)
        owner[obj.silhouette] = k
        for p, part in enumerate(obj.parts):
            tint = np.asarray(V.COLOURS[part.colour], np.float32)
            tint = tint + rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, 3).astype(np.float32)
            label = IGNORE if part.name is None else V.PARTS.index(part.name)
            for q, piece in enumerate(part.pieces):
                rgb[piece] = tint + noise[piece]
                parts_sem[piece] = label
                part_owner[piece] = (k * 16 + p) * 16 + q
    image = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)

    instances: list[dict[str, Any]] = []
    regions: list[tuple[str, tuple[int, int, int, int]]] = []
    part_counts: list[dict[str, int]] = []
    for k, obj in enumerate(objects):
        mask = owner == k
        parts, counts = [], {}
        for p, part in enumerate(obj.parts):
            codes = [(k * 16 + p) * 16 + q for q in range(len(part.pieces))]
            pieces = [part_owner == c for c in codes]
            n_visible = sum(bool(m.any()) for m in pieces)
            if part.name is None or n_visible == 0:
                continue
            counts[part.name] = n_visible
            parts.append(
                {"mask": np.logical_or.reduce(pieces), "name": part.name, "colour": part.colour}
            )
        part_counts.append(counts)
        instances.append(
            {
                "mask": mask,
                "category": obj.kind,
                "colour": obj.colour,
                "colour_shape": f"{obj.colour} {obj.kind}",
                "parts": parts,
            }
        )
        regions.append((_object_phrase(obj, size, rng), _box(mask)))
        for part_ann, (noun_phrase, _) in zip(parts, _part_items(obj, counts), strict=True):
            regions.append((_part_phrase(obj, noun_phrase, rng), _box(part_ann["mask"])))
    for kind in stuff:
        mask = semantic == V.SEMANTIC.index(kind)
        if not mask.any():
            continue
        instances.append(
            {
                "mask": mask,
                "category": kind,
                "colour": V.STUFF_COLOUR_WORD[kind],
                "colour_shape": kind,
                "parts": [],
            }
        )
        if rng.uniform() < 0.5:
            regions.append((f"the {kind}", _box(mask)))
    if rng.uniform() < 0.3:
        regions.append((str(rng.choice(V.VAGUE_SCENE_WORDS)), (0, 0, size, size)))
    captions = _captions(objects, stuff, part_counts, rng)
    return _Scene(image, semantic, parts_sem, instances, captions, regions)


# ---------------------------------------------------------------- writing


def _rle(mask: np.ndarray) -> tuple[dict[str, Any], float, list[float]]:
    """COCO RLE (counts as str), area and xywh float bbox of a bool (H, W) mask."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    bbox = [float(v) for v in mask_utils.toBbox(rle)]
    area = float(mask_utils.area(rle))
    return (
        {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
        area,
        bbox,
    )


def _write_json(path: Path, obj: Any) -> None:
    """Write sorted-key compact JSON via a temporary file and an atomic rename."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, sort_keys=True, separators=(",", ":")), encoding="utf-8")
    os.replace(tmp, path)


def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG", compress_level=3)


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Per-image generator: depends only on (seed, split, index), not on split sizes."""
    entropy = [abs(seed), int(seed < 0), SPLITS.index(split), index]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def _write_split(
    split_dir: Path,
    split: str,
    n_images: int,
    size: int,
    objects_range: tuple[int, int],
    seed: int,
    progress: tqdm,
) -> dict[str, int]:
    for sub in ("images", "semantic", "parts_sem"):
        (split_dir / sub).mkdir(parents=True)
    images: list[dict[str, Any]] = []
    instances: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    captions: list[dict[str, Any]] = []
    regions: list[dict[str, Any]] = []
    n_regions = 0
    for i in range(n_images):
        rng = _image_rng(seed, split, i)
        scene = _render_scene(size, int(rng.integers(objects_range[0], objects_range[1] + 1)), rng)
        stem = f"{split}_{i:05d}"
        image_id = i + 1
        _save_png(scene.image, split_dir / "images" / f"{stem}.png")
        _save_png(scene.semantic, split_dir / "semantic" / f"{stem}.png")
        _save_png(scene.parts_sem, split_dir / "parts_sem" / f"{stem}.png")
        images.append({"id": image_id, "file_name": f"{stem}.png", "height": size, "width": size})
        for inst in scene.instances:
            rle, area, bbox = _rle(inst["mask"])
            ann_id = len(instances) + 1
            instances.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": V.SEMANTIC.index(inst["category"]),
                    "segmentation": rle,
                    "area": area,
                    "bbox": bbox,
                    "iscrowd": 0,
                    "colour": inst["colour"],
                    "colour_shape": inst["colour_shape"],
                }
            )
            for part in inst["parts"]:
                rle, area, bbox = _rle(part["mask"])
                parts.append(
                    {
                        "id": len(parts) + 1,
                        "image_id": image_id,
                        "category_id": V.PARTS.index(part["name"]),
                        "segmentation": rle,
                        "area": area,
                        "bbox": bbox,
                        "iscrowd": 0,
                        "parent_id": ann_id,
                        "colour": part["colour"],
                    }
                )
        for text in scene.captions:
            captions.append({"id": len(captions) + 1, "image_id": image_id, "caption": text})
        image_regions: list[dict[str, Any]] = []
        for phrase, (x, y, w, h) in scene.regions:
            n_regions += 1
            image_regions.append(
                {"region_id": n_regions, "image_id": image_id, "phrase": phrase}
                | {"x": x, "y": y, "width": w, "height": h}
            )
        regions.append({"id": image_id, "file_name": f"{stem}.png", "regions": image_regions})
        progress.update(1)
    categories = [
        {"id": i, "name": n, "supercategory": V.SUPERCATEGORY[n]} for i, n in enumerate(V.SEMANTIC)
    ]
    part_categories = [
        {"id": i, "name": n, "supercategory": n.split(" ")[0]} for i, n in enumerate(V.PARTS)
    ]
    _write_json(
        split_dir / "instances.json",
        {"images": images, "categories": categories, "annotations": instances},
    )
    _write_json(
        split_dir / "parts.json",
        {"images": images, "categories": part_categories, "annotations": parts},
    )
    _write_json(split_dir / "captions.json", {"images": images, "annotations": captions})
    _write_json(split_dir / "regions.json", regions)
    n_objects = sum(
        1 for a in instances if V.SUPERCATEGORY[V.SEMANTIC[a["category_id"]]] != "stuff"
    )
    return {
        "images": len(images),
        "instances": len(instances),
        "objects": n_objects,
        "parts": len(parts),
        "captions": len(captions),
        "regions": n_regions,
    }


def generate_shapes(
    out_dir: Path,
    *,
    train_images: int = 200,
    val_images: int = 50,
    image_size: int = 448,
    min_objects: int = 2,
    max_objects: int = 5,
    seed: int = 0,
    show_progress: bool = True,
) -> dict[str, dict[str, int]]:
    """Generate the shapes corpus under ``out_dir`` (layout in the module docstring).

    Arguments:
      out_dir: target folder; its ``train``/``val`` folders and ``classes.json`` are replaced.
      train_images, val_images: number of scenes per split (>= 1).
      image_size: square image side in pixels (>= 64).
      min_objects, max_objects: objects attempted per scene (a placement that would hide an
        earlier object too much is retried, then skipped, so a scene can hold fewer).
      seed: same seed → byte-identical files; image ``i`` of a split depends only on
        (seed, split, i), so val does not change with ``train_images``.
      show_progress: show a tqdm progress bar.

    Returns:
      per split: counts of images, instances (objects + stuff), objects, parts, captions, regions.
    """
    if train_images < 1 or val_images < 1:
        raise ValueError(
            f"train_images and val_images must be >= 1, got {train_images}, {val_images}"
        )
    if image_size < 64:
        raise ValueError(f"image_size must be >= 64, got {image_size}")
    if not 1 <= min_objects <= max_objects:
        raise ValueError(f"need 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {"train": train_images, "val": val_images}
    summary: dict[str, dict[str, int]] = {}
    with tqdm(total=train_images + val_images, desc="shapes", disable=not show_progress) as bar:
        for split in SPLITS:
            staging = out_dir / f".{split}.partial"
            if staging.exists():
                shutil.rmtree(staging)
            summary[split] = _write_split(
                staging, split, counts[split], image_size, (min_objects, max_objects), seed, bar
            )
            final = out_dir / split
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging, final)
    _write_json(out_dir / "classes.json", V.classes_document())
    return summary
