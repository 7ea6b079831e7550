"""On-disk text embeddings: reused by a later encoder of the same tower, never by another one."""

from __future__ import annotations

from pathlib import Path

import open_clip
import torch

from use_core.model.text import TextEncoder
from use_core.model.text_store import TextStore, text_tower_digest

TEXTS = ["a red circle", "the roof of the house", "two black wheels", "grass"]


def _clip(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return open_clip.CLIP(
        embed_dim=32,
        vision_cfg={"image_size": 64, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        text_cfg={"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    )


def _encoder(clip: torch.nn.Module, root: Path | None) -> TextEncoder:
    enc = TextEncoder(clip, batch_size=3)
    if root is not None:
        enc.store = TextStore(root, enc.clip)
    return enc


def test_a_later_encoder_reads_the_stored_embeddings(tmp_path: Path) -> None:
    first = _encoder(_clip(), tmp_path)
    expected = first(TEXTS)
    assert first.cache_info()["disk_hits"] == 0 and len(first.store or []) == len(TEXTS)

    second = _encoder(_clip(), tmp_path)  # same weights, a new process would do the same
    calls = 0
    real = second._encode

    def counting(texts: list[str], templates: tuple[str, ...]) -> torch.Tensor:
        nonlocal calls
        calls += len(texts)
        return real(texts, templates)

    second._encode = counting  # type: ignore[method-assign]
    got = second([*TEXTS, "a new text"])
    assert torch.equal(got[: len(TEXTS)], expected)
    assert second.cache_info()["disk_hits"] == len(TEXTS) and calls == 1
    assert torch.allclose(got[-1], _encoder(_clip(), None)(["a new text"])[0])


def test_another_tower_or_other_templates_read_nothing(tmp_path: Path) -> None:
    _encoder(_clip(), tmp_path)(TEXTS)
    other = _clip(seed=1)
    assert text_tower_digest(other) != text_tower_digest(_clip())
    changed = _encoder(other, tmp_path)
    changed(TEXTS)
    assert changed.cache_info()["disk_hits"] == 0
    assert len(list(tmp_path.glob("*.sqlite"))) == 2

    same = _encoder(_clip(), tmp_path)
    same(TEXTS, templates=["a sketch of {}."])
    assert same.cache_info()["disk_hits"] == 0


def test_the_digest_covers_the_text_tower_only() -> None:
    clip = _clip()
    before = text_tower_digest(clip)
    with torch.no_grad():
        clip.visual.conv1.weight.add_(1.0)  # the image tower: same text embeddings
    assert text_tower_digest(clip) == before
    with torch.no_grad():
        clip.token_embedding.weight[0, 0] += 1e-3
    assert text_tower_digest(clip) != before
    assert text_tower_digest(clip.half()) != text_tower_digest(clip.float())
