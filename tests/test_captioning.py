"""Captioning mechanics with the tiny random Llava captioner (its text is random words)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from use_core.config import PAPER_CAPTION_PROMPT
from use_core.curation.captioning import build_prompt, caption_images


@pytest.fixture(scope="module")
def tiny_captioner(tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from use_core.pretrained.demo import build_tiny_captioner

    path = build_tiny_captioner(Path(tmp_path_factory.mktemp("captioner")), seed=0)
    return AutoModelForImageTextToText.from_pretrained(path).eval(), AutoProcessor.from_pretrained(
        path
    )


def _images(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(rng.random((60 + 10 * i, 80, 3)) * 255).astype(np.uint8) for i in range(n)]


def _run(tiny_captioner, images, **kw) -> list[str]:
    model, processor = tiny_captioner
    args = {"max_new_tokens": 12, "batch_size": 2, "seed": 0} | kw
    return caption_images(images, model, processor, PAPER_CAPTION_PROMPT, **args)


def test_prompt_goes_through_chat_template(tiny_captioner) -> None:
    _, processor = tiny_captioner
    text = build_prompt(processor, "Describe it.")
    assert text == "USER: <image>\nDescribe it. ASSISTANT:"


def test_one_caption_per_image_and_not_echoed(tiny_captioner) -> None:
    images = _images(3)
    caps = _run(tiny_captioner, images)
    assert len(caps) == 3 and all(isinstance(c, str) and c for c in caps)
    for c in caps:
        assert c == c.strip()
        assert "ASSISTANT" not in c and "USER" not in c
        assert PAPER_CAPTION_PROMPT.lower()[:30] not in c.lower()
    _, processor = tiny_captioner
    for c in caps:  # at most max_new_tokens tokens were decoded
        assert len(processor.tokenizer(c, add_special_tokens=False)["input_ids"]) <= 12


def test_seeded_and_batching_keeps_count(tiny_captioner) -> None:
    images = _images(3)
    state = torch.random.get_rng_state()
    first = _run(tiny_captioner, images, seed=7)
    assert torch.equal(state, torch.random.get_rng_state())  # caller's RNG untouched
    assert _run(tiny_captioner, images, seed=7) == first
    assert _run(tiny_captioner, images, seed=8) != first  # the seed matters: sampling is on
    assert len(_run(tiny_captioner, images, batch_size=1)) == 3
    assert len(_run(tiny_captioner, images, batch_size=5)) == 3
    assert _run(tiny_captioner, []) == []


def test_bad_input(tiny_captioner) -> None:
    with pytest.raises(ValueError):
        _run(tiny_captioner, [np.zeros((4, 4), np.uint8)])
    with pytest.raises(ValueError):
        _run(tiny_captioner, _images(1), batch_size=0)
