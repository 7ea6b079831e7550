"""Vocabulary of the procedural "shapes" corpus: colours, shapes, objects, parts, stuff.

Everything here is data. The order of :data:`SEMANTIC` defines the semantic label ids (value of
``semantic/*.png`` pixels) and the COCO ``category_id`` of ``instances.json`` (identical, 0-based);
the order of :data:`PARTS` does the same for ``parts_sem/*.png`` and ``parts.json``.
"""

from __future__ import annotations

# Named colours as RGB uint8 triples; chosen far apart so the nearest name is unambiguous.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 35),
    "green": (20, 190, 60),
    "blue": (35, 70, 225),
    "yellow": (245, 220, 30),
    "orange": (250, 135, 15),
    "purple": (135, 45, 180),
    "pink": (250, 140, 200),
    "brown": (115, 65, 25),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}

SHAPES: list[str] = ["circle", "square", "triangle", "star", "hexagon", "diamond"]

# Composite objects: part names in drawing order (later parts cover earlier ones) and the colours
# each part may take. The first colour list is the object's "main" colour (the object's colour).
OBJECT_PARTS: dict[str, list[str]] = {
    "house": ["wall", "roof", "door", "window"],
    "tree": ["trunk", "crown"],
    "car": ["body", "window", "wheel"],
    "person": ["leg", "torso", "head"],
}
MAIN_PART: dict[str, str] = {"house": "wall", "tree": "crown", "car": "body", "person": "torso"}
PART_COLOURS: dict[str, list[str]] = {
    "house wall": ["red", "blue", "yellow", "orange", "purple", "pink", "white", "brown"],
    "house roof": ["red", "brown", "black", "blue", "purple"],
    "house door": ["brown", "black", "red", "blue", "green"],
    "house window": ["white", "blue", "yellow", "black"],
    "tree trunk": ["brown", "black"],
    "tree crown": ["green", "orange", "yellow", "red", "pink"],
    "car body": ["red", "blue", "yellow", "orange", "purple", "pink", "white", "black", "green"],
    "car window": ["white", "blue", "black"],
    "car wheel": ["black", "brown"],
    "person head": ["pink", "brown", "yellow", "orange"],
    "person torso": ["red", "blue", "green", "yellow", "orange", "purple", "white"],
    "person leg": ["blue", "black", "brown", "purple"],
}
OBJECTS: list[str] = list(OBJECT_PARTS)
PARTS: list[str] = [f"{obj} {part}" for obj, parts in OBJECT_PARTS.items() for part in parts]

# Background "stuff": the word used for its colour in captions and its base RGB.
STUFF_COLOUR_WORD: dict[str, str] = {
    "grass": "green",
    "sand": "beige",
    "water": "blue",
    "sky": "light blue",
    "wall": "gray",
}
STUFF: list[str] = list(STUFF_COLOUR_WORD)
GROUND_STUFF: list[str] = ["grass", "sand", "water"]
UPPER_STUFF: list[str] = ["sky", "wall"]

SEMANTIC: list[str] = SHAPES + OBJECTS + STUFF
SUPERCATEGORY: dict[str, str] = {
    **{s: "shape" for s in SHAPES},
    **{o: "object" for o in OBJECTS},
    **{s: "stuff" for s in STUFF},
}
COLOUR_SHAPE: list[str] = [f"{c} {s}" for s in SHAPES for c in COLOURS]
COLOUR_OBJECT: list[str] = [
    f"{c} {obj}" for obj in OBJECTS for c in PART_COLOURS[f"{obj} {MAIN_PART[obj]}"]
]

NUMBER_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three", 4: "four"}
PLURALS: dict[str, str] = {"person": "people"}

# Vague whole-scene phrases used in captions and whole-image regions.
VAGUE_SCENE_WORDS: list[str] = ["the scene", "the picture", "the image"]


def article(phrase: str) -> str:
    """'a' or 'an' for ``phrase`` (by its first letter; enough for this vocabulary)."""
    return "an" if phrase[:1].lower() in "aeiou" else "a"


def plural(noun: str) -> str:
    """English plural of a vocabulary noun ('wheel' → 'wheels', 'person' → 'people')."""
    return PLURALS.get(noun, noun + "s")


def classes_document() -> dict[str, object]:
    """The content of ``classes.json``: class lists whose indices are label / category ids."""
    return {
        "colours": list(COLOURS),
        "colour_rgb": {name: list(rgb) for name, rgb in COLOURS.items()},
        "shapes": list(SHAPES),
        "objects": list(OBJECTS),
        "stuff": list(STUFF),
        "semantic": list(SEMANTIC),
        "parts": list(PARTS),
        "colour_shape": list(COLOUR_SHAPE),
        "colour_object": list(COLOUR_OBJECT),
        "ignore_index": 255,
    }
