"""Noun phrases → referring expressions, with the real spaCy English pipeline."""

from __future__ import annotations

import pytest

from use_core.curation.expressions import Expression, default_nlp, extract_expressions

PAPER_SENTENCE = (
    "There is an orange-red apple at the right side of the rabbit and there is another red "
    "apple visible behind the rabbit."
)


@pytest.fixture(scope="module")
def nlp():
    return default_nlp()


def test_paper_example(nlp) -> None:
    exprs = extract_expressions(PAPER_SENTENCE, nlp)
    # paper §3.1 lists the four distinct phrases; "the rabbit" occurs twice in the sentence
    assert [e.phrase for e in exprs] == [
        "an orange-red apple",
        "the right side",
        "the rabbit",
        "another red apple",
        "the rabbit",
    ]
    assert [e.expression for e in exprs] == [
        "an orange-red apple",
        "the right side of the rabbit",
        "the rabbit",
        "another red apple visible behind the rabbit",
        "the rabbit",
    ]


def test_offsets_point_into_text(nlp) -> None:
    for e in extract_expressions(PAPER_SENTENCE, nlp):
        assert PAPER_SENTENCE[e.start : e.end] == e.phrase
        assert e.expr_start <= e.start < e.end <= e.expr_end
        assert PAPER_SENTENCE[e.expr_start : e.expr_end] == e.expression
    rabbits = [e for e in extract_expressions(PAPER_SENTENCE, nlp) if e.phrase == "the rabbit"]
    assert rabbits[0].start != rabbits[1].start


def test_coordination_is_split(nlp) -> None:
    exprs = extract_expressions("A cat and a dog sit on the red mat.", nlp)
    assert [e.expression for e in exprs] == ["A cat", "a dog", "the red mat"]


def test_no_trailing_punctuation_or_verb(nlp) -> None:
    exprs = extract_expressions("The dog, sitting on the grass, barks.", nlp)
    assert exprs[0] == Expression("The dog", "The dog sitting on the grass", 0, 7, 0, 29)
    assert all(not e.expression.endswith((",", ".")) for e in exprs)
    assert all("barks" not in e.expression for e in exprs)


def test_subject_does_not_absorb_sentence(nlp) -> None:
    text = "The image features a small stuffed bunny rabbit sitting on a plate."
    exprs = extract_expressions(text, nlp)
    assert exprs[0].expression == "The image"
    assert exprs[1].expression == "a small stuffed bunny rabbit sitting on a plate"


def test_relative_clause_and_of_phrase_kept(nlp) -> None:
    exprs = extract_expressions("A man who is holding an umbrella walks past a red car.", nlp)
    assert exprs[0].expression == "A man who is holding an umbrella"
    exprs = extract_expressions("There is a piece of cake on the table.", nlp)
    assert exprs[0].expression == "a piece of cake"  # "of" kept, the locative coda is not


def test_pronouns_dropped(nlp) -> None:
    exprs = extract_expressions("It has two pink ears, and they are soft.", nlp)
    assert [e.phrase for e in exprs] == ["two pink ears"]


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_text(nlp, text: str) -> None:
    assert extract_expressions(text, nlp) == []


def test_default_pipeline_is_cached() -> None:
    assert default_nlp() is default_nlp()
    assert extract_expressions("a red square")[0].expression == "a red square"
