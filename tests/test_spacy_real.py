"""Real spaCy en_core_web_sm (3.8.0): noun chunks are the referring-expression candidates."""

from __future__ import annotations

from typing import Any

import pytest

from use_core.config import ModelsConfig
from use_core.pretrained.registry import load_component


@pytest.fixture(scope="module")
def nlp() -> Any:
    return load_component("spacy", ModelsConfig(profile="demo"))


def test_noun_chunks(nlp: Any) -> None:
    doc = nlp("A red car is parked next to the old wooden house with a blue door.")
    assert [c.text for c in doc.noun_chunks] == [
        "A red car",
        "the old wooden house",
        "a blue door",
    ]
    assert [c.root.text for c in doc.noun_chunks] == ["car", "house", "door"]


def test_noun_chunks_of_a_caption_like_text(nlp: Any) -> None:
    doc = nlp("The image shows a man holding an umbrella. His jacket is black.")
    chunks = [c.text for c in doc.noun_chunks]
    assert "a man" in chunks and "an umbrella" in chunks and "His jacket" in chunks
    assert len(list(doc.sents)) == 2
