"""A small built-in English word list: the vocabulary of the demo models' tokenizers.

No tokenizer files ship with transformers and none can be downloaded here, so the demo
tokenizers are built from this list (common English words plus the colours, shapes, objects
and parts the procedural "shapes" corpus talks about). Every lowercase letter and
digit is also a piece, at a word's start and inside it, so any other word splits into pieces.
"""

from __future__ import annotations

COLOURS = (
    "red green blue yellow orange purple pink brown black white gray grey cyan magenta "
    "violet gold silver beige maroon navy teal olive lime dark light bright pale"
).split()

SHAPES = (
    "circle square triangle rectangle ellipse oval star hexagon pentagon diamond cross ring "
    "disk disc polygon line stripe dot spot blob shape round square-shaped curved straight"
).split()

OBJECTS_AND_PARTS = (
    "house roof door window wall chimney tree trunk crown leaf leaves branch car wheel body "
    "cabin light lamp pole shade flower petal stem face eye eyes mouth nose head hair ear "
    "person man woman child boy girl dog cat bird horse cow sheep animal tail leg legs arm "
    "arms hand hands foot feet table chair bed sofa cup bowl plate bottle glass book phone "
    "screen keyboard computer boat sail mast plane wing engine train track bus truck bike "
    "bicycle road street sidewalk sky cloud clouds sun moon grass field water sea river lake "
    "mountain hill rock sand snow building tower bridge fence gate sign mirror picture frame "
    "umbrella bag hat shirt jacket shoe shoes coffee saucer spoon fork knife food cake fruit "
    "apple banana orange handle lid base top bottom side edge corner center middle background "
    "foreground object objects part parts scene image photo picture region area"
).split()

COMMON = (
    "a an the this that these those there here is are was were be been being has have had "
    "do does did of in on at to from with without by for about above below under over near "
    "next beside behind between inside outside around across along left right front back "
    "up down and or but not no yes it its they them their he she his her we our you your "
    "i me my one two three four five six seven eight nine ten many some several few each "
    "all every other another both most more less very also just only still then than "
    "large small big little tall short long wide narrow thick thin tiny huge medium "
    "upper lower inner outer visible hidden open closed full empty new old young "
    "sitting standing lying holding wearing looking showing made covered filled painted "
    "placed located shown seen colored coloured shaped attached connected surrounded "
    "describe description detail details detailed specifically mention parts each object "
    "can see appears appear looks look contains contain features include includes "
    "image shows photo depicts scene background plain simple flat smooth textured "
    "first second third last which what where when who how while as like such so if"
).split()

DIGITS_AND_PUNCT = list("0123456789.,;:!?'\"()-/")


def english_corpus(repeats: int = 4) -> list[str]:
    """Lines of text over the built-in vocabulary (word list, colour-shape phrases)."""
    words = COLOURS + SHAPES + OBJECTS_AND_PARTS + COMMON
    lines = [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
    lines += [f"a {c} {s}." for c in COLOURS for s in SHAPES[:8]]
    lines += [f"the {o} has a {c} part" for o in OBJECTS_AND_PARTS[:40] for c in COLOURS[:6]]
    lines.append(" ".join(DIGITS_AND_PUNCT))
    return lines * repeats
