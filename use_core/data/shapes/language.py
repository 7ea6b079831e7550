"""The shapes corpus' language: referring phrases, captions and region phrases of a scene.

Captions name every object with its attributes, visible parts, pairwise spatial relations and the
background, the way a multi-granularity MLLM caption would (paper, section 3.1).
"""

from __future__ import annotations

import numpy as np

from use_core.data.shapes import vocab as V
from use_core.data.shapes.draw import SceneObject


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _a(phrase: str) -> str:
    return f"{V.article(phrase)} {phrase}"


def _position(obj: SceneObject, size: int) -> str:
    cx, cy = obj.centre
    col = "left" if cx < size / 3 else "right" if cx > 2 * size / 3 else ""
    row = "top" if cy < size / 3 else "bottom" if cy > 2 * size / 3 else ""
    if col and row:
        return f"in the {row} {col} corner"
    if col:
        return f"on the {col}"
    return f"at the {row}" if row else "in the middle"


def assign_refs(objects: list[SceneObject], size: int) -> None:
    """Set each object's referring phrase; same-colour same-kind objects get their position."""
    for obj in objects:
        words = [w for w in (obj.size_word, obj.colour, obj.kind) if w]
        obj.ref = " ".join(words)
        twins = [o for o in objects if (o.kind, o.colour) == (obj.kind, obj.colour)]
        if len(twins) > 1:
            obj.ref += " " + _position(obj, size)


def _relation(a: SceneObject, b: SceneObject, a_index: int, b_index: int) -> str:
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


def part_items(obj: SceneObject, counts: dict[str, int]) -> list[tuple[str, str]]:
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


def captions(
    objects: list[SceneObject],
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
        items = part_items(obj, counts)
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


def object_phrase(obj: SceneObject, size: int, rng: np.random.Generator) -> str:
    plain = f"{obj.colour} {obj.kind}"
    options = [f"the {obj.ref}", _a(f"{plain} {_position(obj, size)}"), plain]
    return options[int(rng.integers(len(options)))]


def part_phrase(obj: SceneObject, noun_phrase: str, rng: np.random.Generator) -> str:
    noun = noun_phrase.split(" ")[-1]
    options = [f"the {noun} of the {obj.ref}", f"the {obj.ref}'s {noun}", noun_phrase]
    return options[int(rng.integers(len(options)))]
