"""Caption-level grounding: phrase matching logic, caption splitting, tiny Grounding DINO runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from use_core.curation.expressions import Expression, default_nlp, extract_expressions
from use_core.curation.grounding import (
    assign_boxes_to_phrases,
    ground_caption,
    ground_captions,
    split_caption,
)

CAPTION = (
    "There is an orange-red apple at the right side of the rabbit and there is another red "
    "apple visible behind the rabbit. Besides, there are four purple grapes arranged in clusters."
)


def _phrase(text: str, phrase: str, expression: str | None = None) -> Expression:
    start = text.index(phrase)
    return Expression(phrase, expression or phrase, start, start + len(phrase), start, 0)


# ---------------------------------------------------------------- pure matching logic


def test_assign_picks_phrase_of_best_token() -> None:
    text = "a white rabbit doll with face."
    phrases = [_phrase(text, "a white rabbit doll"), _phrase(text, "face")]
    #          [CLS]   a       white    rabbit    doll      with      face      .         [SEP]
    offsets = [(0, 0), (0, 1), (2, 7), (8, 14), (15, 19), (20, 24), (25, 29), (29, 30), (0, 0)]
    scores = np.array(
        [
            [0.9, 0.1, 0.2, 0.7, 0.3, 0.1, 0.1, 0.1, 0.9],  # rabbit → phrase 0 (specials ignored)
            [0.0, 0.1, 0.1, 0.1, 0.1, 0.2, 0.8, 0.1, 0.0],  # face → phrase 1
            [0.0, 0.1, 0.1, 0.1, 0.1, 0.9, 0.2, 0.1, 0.0],  # "with" → in no phrase
            [0.0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.9, 0.0],  # "." → in no phrase
        ]
    )
    assert assign_boxes_to_phrases(scores, offsets, phrases) == [0, 1, None, None]


def test_assign_edge_cases() -> None:
    text = "a cat"
    phrases = [_phrase(text, "a cat")]
    assert assign_boxes_to_phrases(np.zeros((0, 3)), [(0, 0), (0, 1), (2, 5)], phrases) == []
    assert assign_boxes_to_phrases(np.ones((2, 2)), [(0, 0), (0, 0)], phrases) == [None, None]
    assert assign_boxes_to_phrases(np.ones((1, 2)), [(0, 1), (2, 5)], []) == [None]
    with pytest.raises(ValueError):
        assign_boxes_to_phrases(np.ones((1, 3)), [(0, 1)], phrases)


# ---------------------------------------------------------------- tiny Grounding DINO


@pytest.fixture(scope="module")
def tiny_gdino(tmp_path_factory: pytest.TempPathFactory):
    from transformers import GroundingDinoForObjectDetection, GroundingDinoProcessor

    from use_core.pretrained.demo import build_tiny_grounding_dino

    path = build_tiny_grounding_dino(Path(tmp_path_factory.mktemp("gdino")), seed=0)
    model = GroundingDinoForObjectDetection.from_pretrained(path).eval()
    return model, GroundingDinoProcessor.from_pretrained(path)


@pytest.fixture(scope="module")
def exprs() -> list[Expression]:
    return extract_expressions(CAPTION, default_nlp())


def _image(seed: int, h: int = 240, w: int = 320) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def test_split_short_caption_is_one_piece(tiny_gdino, exprs) -> None:
    _, processor = tiny_gdino
    pieces = split_caption(CAPTION, processor.tokenizer, 256, exprs)
    assert len(pieces) == 1
    assert pieces[0].text == CAPTION and not pieces[0].word_split


@pytest.mark.parametrize("limit", [40, 24, 12])
def test_split_long_caption_fits_and_keeps_phrases(tiny_gdino, exprs, limit: int) -> None:
    _, processor = tiny_gdino
    pieces = split_caption(CAPTION, processor.tokenizer, limit, exprs)
    assert len(pieces) > 1
    for p in pieces:
        assert len(processor.tokenizer(p.text)["input_ids"]) <= limit
        assert p.text[: p.verbatim] == CAPTION[p.start : p.start + p.verbatim]
        assert p.text.endswith(".")
    for e in exprs:  # every phrase lies whole inside exactly one piece
        assert sum(p.start <= e.start and e.end <= p.end for p in pieces) == 1
    if limit == 40:  # sentences fit: cut only at the sentence end
        assert [p.word_split for p in pieces] == [False, False]
        assert pieces[1].text.startswith("Besides")
    if limit == 12:
        assert any(p.word_split for p in pieces)


def test_ground_caption_boxes_are_consistent(tiny_gdino, exprs) -> None:
    model, processor = tiny_gdino
    image = _image(0)
    res = ground_caption(image, CAPTION, exprs, model, processor, box_threshold=0.05)
    assert res.queries == 1 and res.word_splits == 0
    assert res.boxes, "a random model still scores boxes above 0.05"
    for b in res.boxes:
        x0, y0, x1, y1 = b.box_xyxy
        assert 0 <= x0 <= x1 <= 320 and 0 <= y0 <= y1 <= 240
        assert b.score > 0.05
        e = exprs[b.phrase_index]
        assert (b.phrase, b.expression, b.phrase_start) == (e.phrase, e.expression, e.start)
        assert b.token and b.token in CAPTION[e.start : e.end]
        assert b.texts()[0] == b.phrase
    strict = ground_caption(image, CAPTION, exprs, model, processor, box_threshold=1.0)
    assert strict.boxes == [] and strict.dropped_no_phrase == 0
    # a stricter NMS never keeps more boxes
    loose_total = len(res.boxes) + res.dropped_no_phrase
    tight = ground_caption(image, CAPTION, exprs, model, processor, nms_threshold=0.1)
    assert len(tight.boxes) + tight.dropped_no_phrase <= loose_total


def test_whole_caption_is_one_query_and_never_truncated(tiny_gdino, exprs) -> None:
    model, processor = tiny_gdino
    seen: list[int] = []
    handle = model.register_forward_pre_hook(
        lambda _m, _a, kw: seen.append(kw["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        one = ground_caption(_image(1), CAPTION, exprs, model, processor)
        assert len(seen) == 1 and one.queries == 1
        seen.clear()
        (many,) = ground_captions(
            [_image(1)], [CAPTION], [exprs], model, processor, max_text_tokens=20, batch_size=8
        )
    finally:
        handle.remove()
    assert many.queries > 1 and len(seen) == 1  # all queries of the image in one batch
    assert max(seen) <= 20
    tokens_found = {b.phrase_index for b in many.boxes}
    assert tokens_found <= set(range(len(exprs)))


def test_batched_equals_single(tiny_gdino, exprs) -> None:
    model, processor = tiny_gdino
    cap2 = "A cat and a dog sit on the red mat."
    ex2 = extract_expressions(cap2, default_nlp())
    images = [_image(2), _image(3)]
    batched = ground_captions(images, [CAPTION, cap2], [exprs, ex2], model, processor, batch_size=2)
    singles = [
        ground_caption(images[0], CAPTION, exprs, model, processor),
        ground_caption(images[1], cap2, ex2, model, processor),
    ]
    for b, s in zip(batched, singles, strict=True):
        assert [x.phrase_index for x in b.boxes] == [x.phrase_index for x in s.boxes]
        assert b.dropped_no_phrase == s.dropped_no_phrase
        np.testing.assert_allclose(
            [x.box_xyxy for x in b.boxes], [x.box_xyxy for x in s.boxes], atol=1e-3
        )


def test_no_phrases_or_bad_image(tiny_gdino) -> None:
    model, processor = tiny_gdino
    assert ground_caption(_image(0), "It is.", [], model, processor).queries == 0
    word = "xq" * 40  # one word (80 chars) of far more than 12 word pieces
    caption = f"A red {word} sits here."
    res = ground_caption(
        _image(0), caption, [_phrase(caption, "A red")], model, processor, max_text_tokens=12
    )
    assert res.error and "exceeds 12 tokens" in res.error and res.boxes == []
    with pytest.raises(ValueError):
        ground_caption(np.zeros((8, 8), np.uint8), CAPTION, [], model, processor)
