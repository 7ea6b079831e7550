"""Box-text pairs from a caption with Grounding DINO (paper §3.1, Fig. 4; thresholds §4.1).

The grounding model is queried with the **whole caption**, not phrase by phrase: context
lets it tell "face" of the rabbit from an apple. For each predicted box, the text token with
the highest probability picks the noun phrase whose character span contains it; a box whose
best token lies in no phrase (e.g. on "is", "there") is dropped and counted. Each kept box
carries both its phrase and the phrase's referring expression (box-phrase and
box-expression pairs).

Definitions used here:

- a box's score is the maximum sigmoid probability over the caption's *content* tokens (the
  special tokens ``[CLS]``/``[SEP]`` and the query's closing "." are ignored);
- boxes with score <= ``box_threshold`` are dropped, then ``torchvision.ops.nms`` at
  ``nms_threshold`` runs per query (boxes of different queries never suppress each other);
- a caption longer than ``max_text_tokens`` (and than the model's ``max_text_len``) is split
  into several queries at sentence ends, else at ``,;:`` inside a sentence, else — as a last
  resort — between words outside any noun phrase; each query is sent with the same image,
  and the number of such forced word splits is reported (``GroundingResult.word_splits``).
  Nothing is truncated.

Boxes are xyxy in pixels of the input image (HWC uint8 RGB), clipped to it.

Only Grounding DINO (transformers ``GroundingDinoForObjectDetection`` and its processor) is
supported: OWLv2 scores boxes per query text, not per caption token, so it cannot implement
the paper's caption-level matching.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_convert, nms

from use_core.curation.expressions import Expression

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_CLAUSE_END = re.compile(r"(?<=[,;:])\s+")


@dataclass(frozen=True)
class GroundedBox:
    """One box matched to a noun phrase of the caption.

    ``box_xyxy``: (x0, y0, x1, y1) float pixels; ``score``: max content-token probability;
    ``token``: the best token's text (as in the caption); ``phrase_index``: index into the
    expressions passed in; ``phrase_start``/``phrase_end``: character span in the caption.
    """

    box_xyxy: tuple[float, float, float, float]
    score: float
    phrase: str
    expression: str
    token: str
    phrase_index: int
    phrase_start: int
    phrase_end: int

    def texts(self) -> list[str]:
        """The box's descriptions: the phrase, then the expression if it differs."""
        return [self.phrase] if self.expression == self.phrase else [self.phrase, self.expression]


@dataclass
class GroundingResult:
    """Grounding of one caption on one image."""

    boxes: list[GroundedBox] = field(default_factory=list)
    dropped_no_phrase: int = 0  # boxes over threshold (after NMS) whose best token is in no phrase
    queries: int = 0  # caption pieces sent to the model
    word_splits: int = 0  # pieces that had to be cut between words (a sentence too long)
    error: str | None = None  # why the caption was not grounded (to quarantine), else None


def assign_boxes_to_phrases(
    token_scores: np.ndarray,
    token_offsets: Sequence[tuple[int, int]],
    phrases: Sequence[Expression],
) -> list[int | None]:
    """Match each box to the phrase containing its highest-scoring token.

    Args:
        token_scores: (B, T) token probabilities of B boxes.
        token_offsets: T character spans ``(start, end)`` in the caption; empty spans
            (``start >= end``: special tokens, padding) are never chosen.
        phrases: noun phrases with caption character spans ``start``/``end``.
    Returns:
        per box, the index into ``phrases`` of the phrase containing the best token's start,
        or ``None`` (no content token, or the best token lies outside every phrase).
    """
    scores = np.asarray(token_scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] != len(token_offsets):
        raise ValueError(f"token_scores {scores.shape} does not match {len(token_offsets)} offsets")
    offsets = np.asarray(token_offsets, dtype=np.int64).reshape(-1, 2)
    content = offsets[:, 0] < offsets[:, 1]
    if scores.shape[0] == 0:
        return []
    if not content.any():
        return [None] * scores.shape[0]
    best = np.where(content[None, :], scores, -np.inf).argmax(axis=1)
    starts = offsets[best, 0]
    out: list[int | None] = []
    for s in starts:
        hit = [j for j, p in enumerate(phrases) if p.start <= s < p.end]
        out.append(hit[0] if hit else None)
    return out


@dataclass(frozen=True)
class _Piece:
    """A query: ``text[:verbatim]`` is ``caption[start:start + verbatim]``; the rest is the
    closing "." added when the piece did not end a sentence."""

    start: int
    end: int
    text: str
    verbatim: int
    word_split: bool = False


def _token_count(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text)["input_ids"])


def _query_text(caption: str, start: int, end: int) -> str:
    """``caption[start:end]`` ending in "." (Grounding DINO's query format); a trailing
    ``,;:`` is replaced. The text before the ending is unchanged, so offsets stay valid."""
    piece = caption[start:end].rstrip()
    if piece.endswith((".", "!", "?")):
        return piece
    return piece.rstrip(",;:") + "."


def _make_piece(caption: str, start: int, end: int, word_split: bool) -> _Piece:
    text = _query_text(caption, start, end)
    verbatim = len(text) if caption.startswith(text, start) else len(text) - 1
    return _Piece(start, end, text, verbatim, word_split)


def _spans(caption: str, start: int, end: int, pattern: re.Pattern[str]) -> list[tuple[int, int]]:
    """Split ``caption[start:end]`` after each match of ``pattern`` (whitespace dropped)."""
    cuts = [start] + [start + m.end() for m in pattern.finditer(caption[start:end])] + [end]
    spans = []
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        sub = caption[a:b]
        a2 = a + len(sub) - len(sub.lstrip())
        b2 = a + len(sub.rstrip())
        if b2 > a2:
            spans.append((a2, b2))
    return spans


def split_caption(
    caption: str, tokenizer: Any, max_tokens: int, phrases: Sequence[Expression] = ()
) -> list[_Piece]:
    """Cut a caption into queries of at most ``max_tokens`` tokens (special tokens included).

    Sentences are packed greedily; a sentence that alone is too long is split at clause
    punctuation, and a clause still too long between words, preferring cuts outside phrases.
    """
    units: list[tuple[int, int, bool]] = []  # (start, end, came from a word split)
    for s, e in _spans(caption, 0, len(caption), _SENTENCE_END):
        if _token_count(tokenizer, _query_text(caption, s, e)) <= max_tokens:
            units.append((s, e, False))
            continue
        for cs, ce in _spans(caption, s, e, _CLAUSE_END):
            if _token_count(tokenizer, _query_text(caption, cs, ce)) <= max_tokens:
                units.append((cs, ce, False))
            else:
                units.extend(
                    (a, b, True)
                    for a, b in _word_split(caption, cs, ce, tokenizer, max_tokens, phrases)
                )
    pieces: list[_Piece] = []
    cur: tuple[int, int, bool] | None = None
    for s, e, forced in units:
        if (
            cur is not None
            and _token_count(tokenizer, _query_text(caption, cur[0], e)) <= max_tokens
        ):
            cur = (cur[0], e, cur[2] or forced)
            continue
        if cur is not None:
            pieces.append(_make_piece(caption, *cur))
        cur = (s, e, forced)
    if cur is not None:
        pieces.append(_make_piece(caption, *cur))
    return pieces


def _word_split(
    caption: str,
    start: int,
    end: int,
    tokenizer: Any,
    max_tokens: int,
    phrases: Sequence[Expression],
) -> list[tuple[int, int]]:
    """Greedy word-boundary cuts of ``caption[start:end]``, avoiding cuts inside phrases."""
    words = [(start + m.start(), start + m.end()) for m in re.finditer(r"\S+", caption[start:end])]

    def inside_phrase(pos: int) -> bool:
        return any(p.start < pos < p.end for p in phrases)

    out: list[tuple[int, int]] = []
    i = 0
    while i < len(words):
        j = i + 1  # always take at least one word
        last_ok = j if not inside_phrase(words[i][1]) else None
        while j < len(words):
            if _token_count(tokenizer, _query_text(caption, words[i][0], words[j][1])) > max_tokens:
                break
            j += 1
            if not inside_phrase(words[j - 1][1]):
                last_ok = j
        cut = last_ok if last_ok is not None and last_ok > i else j
        if (
            _token_count(tokenizer, _query_text(caption, words[i][0], words[cut - 1][1]))
            > max_tokens
        ):
            raise ValueError(
                f"word {caption[words[i][0] : words[i][1]]!r} alone exceeds {max_tokens} tokens"
            )
        out.append((words[i][0], words[cut - 1][1]))
        i = cut
    return out


@torch.inference_mode()
def ground_captions(
    images: Sequence[np.ndarray],
    captions: Sequence[str],
    expressions: Sequence[Sequence[Expression]],
    model: Any,
    processor: Any,
    *,
    box_threshold: float = 0.05,
    nms_threshold: float = 0.7,
    max_text_tokens: int = 256,
    batch_size: int = 2,
) -> list[GroundingResult]:
    """Ground several captions, each on its own image; queries are batched across images.

    Args:
        images: HWC uint8 RGB arrays, one per caption.
        captions: caption texts; ``expressions[i]`` are :func:`extract_expressions` of
            ``captions[i]`` (offsets into that caption).
        model / processor: ``GroundingDinoForObjectDetection`` and ``GroundingDinoProcessor``.
    Returns:
        one :class:`GroundingResult` per image.
    """
    if not (len(images) == len(captions) == len(expressions)):
        raise ValueError("images, captions and expressions must have the same length")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    limit = min(max_text_tokens, int(getattr(model.config, "max_text_len", max_text_tokens)))
    tokenizer = processor.tokenizer
    results = [GroundingResult() for _ in images]
    queries: list[tuple[int, _Piece]] = []
    for i, (image, caption) in enumerate(zip(images, captions, strict=True)):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image {i} must be HWC uint8 RGB, got {image.shape} {image.dtype}")
        if not expressions[i] or not caption.strip():
            continue  # nothing to match a box to
        try:
            pieces = split_caption(caption, tokenizer, limit, expressions[i])
        except ValueError as exc:  # a single word longer than the text limit
            results[i].error = f"caption cannot be split into queries: {exc}"
            continue
        results[i].queries = len(pieces)
        results[i].word_splits = sum(p.word_split for p in pieces)
        queries.extend((i, p) for p in pieces)

    device = next(model.parameters()).device
    for b in range(0, len(queries), batch_size):
        batch = queries[b : b + batch_size]
        # Tokenise ourselves (offsets for the phrase matching), images via the image processor.
        text_inputs = tokenizer(
            [p.text for _, p in batch],
            padding=True,
            return_offsets_mapping=True,
            return_tensors="pt",
        )
        offset_mapping = text_inputs.pop("offset_mapping").tolist()
        pixel_inputs = processor.image_processor([images[i] for i, _ in batch], return_tensors="pt")
        outputs = model(**{k: v.to(device) for k, v in {**pixel_inputs, **text_inputs}.items()})
        probs = outputs.logits.sigmoid().float().cpu()  # (batch, queries, max_text_len)
        boxes = box_convert(outputs.pred_boxes.float().cpu(), "cxcywh", "xyxy")
        for k, (i, piece) in enumerate(batch):
            # padding and special tokens have empty spans; so has the appended closing "."
            offsets = [
                (s + piece.start, e + piece.start) if s < e <= piece.verbatim else (0, 0)
                for s, e in offset_mapping[k]
            ]
            _collect_boxes(
                results[i],
                probs[k, :, : len(offsets)].numpy(),
                boxes[k],
                offsets,
                captions[i],
                expressions[i],
                images[i].shape[:2],
                box_threshold,
                nms_threshold,
            )
    return results


def _collect_boxes(
    result: GroundingResult,
    token_probs: np.ndarray,
    boxes_norm: torch.Tensor,
    offsets: list[tuple[int, int]],
    caption: str,
    phrases: Sequence[Expression],
    image_hw: tuple[int, ...],
    box_threshold: float,
    nms_threshold: float,
) -> None:
    """Threshold, NMS and phrase matching for the boxes of one query."""
    content = np.array([s < e for s, e in offsets])
    if not content.any():
        return
    scores = np.where(content[None, :], token_probs, 0.0).max(axis=1)  # (Q,)
    keep = np.flatnonzero(scores > box_threshold)
    if keep.size == 0:
        return
    h, w = image_hw
    scale = torch.tensor([w, h, w, h], dtype=torch.float32)
    px = (boxes_norm[keep] * scale).clamp(min=0)
    px[:, [0, 2]] = px[:, [0, 2]].clamp(max=w)
    px[:, [1, 3]] = px[:, [1, 3]].clamp(max=h)
    kept_scores = torch.from_numpy(scores[keep]).float()
    after = nms(px, kept_scores, nms_threshold).numpy()
    rows = keep[after]
    matches = assign_boxes_to_phrases(token_probs[rows], offsets, phrases)
    best = np.where(content[None, :], token_probs[rows], -np.inf).argmax(axis=1)
    for r, j, t in zip(after, matches, best, strict=True):
        if j is None:
            result.dropped_no_phrase += 1
            continue
        p = phrases[j]
        s, e = offsets[t]
        result.boxes.append(
            GroundedBox(
                box_xyxy=tuple(float(v) for v in px[r]),  # type: ignore[arg-type]
                score=float(kept_scores[r]),
                phrase=p.phrase,
                expression=p.expression,
                token=caption[s:e],
                phrase_index=j,
                phrase_start=p.start,
                phrase_end=p.end,
            )
        )


def ground_caption(
    image: np.ndarray,
    caption: str,
    expressions: Sequence[Expression],
    model: Any,
    processor: Any,
    *,
    box_threshold: float = 0.05,
    nms_threshold: float = 0.7,
    max_text_tokens: int = 256,
) -> GroundingResult:
    """Ground one caption on one image; see :func:`ground_captions`."""
    return ground_captions(
        [image],
        [caption],
        [expressions],
        model,
        processor,
        box_threshold=box_threshold,
        nms_threshold=nms_threshold,
        max_text_tokens=max_text_tokens,
        batch_size=1,
    )[0]
