"""Frozen CLIP text encoder with prompt templates and a per-run cache (§4.2).

A text's embedding is the mean of the L2-normalised CLIP embeddings of the text put into each
template (the paper's four: "a photo of {}", ...), normalised again. Embeddings are cached by
``(templates, text)``: every unique expression is encoded once per run; ``hits`` / ``misses``
count cache use. With a :class:`~use_core.model.text_store.TextStore` attached (``store``), texts
are looked up on disk first and what is encoded is stored, so a later run with the same text
tower encodes only new texts (``disk_hits`` counts them). Long encodings show a progress bar.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from use_core.config import PAPER_TEXT_TEMPLATES
from use_core.model.backbones import freeze
from use_core.model.text_store import TextStore

PROGRESS_MIN_BATCHES = 8  # encodings of fewer forward passes than this show no progress bar

Tokenizer = Callable[[list[str]], torch.Tensor]


def default_tokenizer(clip_model: nn.Module) -> Tokenizer:
    """open_clip's BPE tokenizer (shipped in the package) at the model's context length."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=int(getattr(clip_model, "context_length", 77)))


class TextEncoder(nn.Module):
    """Encode texts into CLIP's joint space: ``list[str]`` (T) → ``(T, E)`` float32, unit norm.

    Arguments:
      clip_model: an open_clip ``CLIP`` (frozen here; ``encode_text`` is used).
      tokenizer: ``list[str] → (N, L) int64`` token ids; default open_clip's BPE tokenizer.
      templates: prompt templates with one ``{}``; default the paper's four.
      batch_size: prompts per forward pass.
    """

    def __init__(
        self,
        clip_model: nn.Module,
        tokenizer: Tokenizer | None = None,
        templates: Sequence[str] = PAPER_TEXT_TEMPLATES,
        batch_size: int = 256,
    ) -> None:
        super().__init__()
        if not hasattr(clip_model, "encode_text"):
            raise TypeError(f"expected an open_clip CLIP model, got {type(clip_model).__name__}")
        self.clip: Any = freeze(clip_model)
        self.tokenizer = tokenizer or default_tokenizer(clip_model)
        self.templates = _check_templates(templates)
        self.batch_size = batch_size
        self.cache: dict[tuple[tuple[str, ...], str], torch.Tensor] = {}
        self.hits = 0
        self.misses = 0
        self.disk_hits = 0
        self.store: TextStore | None = None
        self.eval()

    @property
    def embed_dim(self) -> int:
        proj = getattr(self.clip, "text_projection", None)
        if isinstance(proj, torch.Tensor):
            return int(proj.shape[-1])
        return int(self.clip.encode_text(self.tokenizer(["x"]).to(self._device)).shape[-1])

    @property
    def _device(self) -> torch.device:
        return next(self.clip.parameters()).device

    def train(self, mode: bool = True) -> TextEncoder:
        """The text encoder stays frozen in eval mode."""
        super().train(False)
        return self

    def forward(self, texts: Sequence[str], templates: Sequence[str] | None = None) -> torch.Tensor:
        """Embed ``texts`` (``(T, E)`` float32 on the model's device; cached per text)."""
        tmpl = self._templates(templates)
        missing: dict[str, None] = {}  # ordered set of texts to encode now
        for text in texts:
            if (tmpl, text) in self.cache or text in missing:
                self.hits += 1
            else:
                missing[text] = None
                self.misses += 1
        self._fill(list(missing), tmpl)
        if not texts:
            return torch.zeros((0, self.embed_dim), device=self._device)
        return torch.stack([self.cache[(tmpl, t)] for t in texts]).to(self._device)

    def warm(self, texts: Sequence[str], templates: Sequence[str] | None = None) -> int:
        """Encode the uncached ones of ``texts`` now, in sorted order; returns how many.

        A text's embedding depends, in its last bits, on which other prompts share its forward
        pass (CPU matmul kernels block by batch size). Warming the cache with a run's whole
        vocabulary in a canonical order makes every text's embedding independent of the order
        the run asks for them — so a resumed training run equals an uninterrupted one exactly.
        """
        tmpl = self._templates(templates)
        missing = sorted({t for t in texts if (tmpl, t) not in self.cache})
        self._fill(missing, tmpl)
        self.misses += len(missing)
        return len(missing)

    def cache_info(self) -> dict[str, int]:
        """``{"hits", "misses", "size", "disk_hits"}`` of the text cache."""
        return {
            "hits": self.hits,
            "misses": self.misses,
            "size": len(self.cache),
            "disk_hits": self.disk_hits,
        }

    def _templates(self, templates: Sequence[str] | None) -> tuple[str, ...]:
        return tuple(_check_templates(templates) if templates is not None else self.templates)

    def _fill(self, texts: list[str], templates: tuple[str, ...]) -> None:
        """Cache ``texts`` (none cached yet): read from the store, encode the rest in order."""
        if not texts:
            return
        stored = self.store.get_many(templates, texts) if self.store is not None else {}
        for text, emb in stored.items():
            self.cache[(templates, text)] = emb
        self.disk_hits += len(stored)
        todo = [t for t in texts if t not in stored]
        if not todo:
            return
        fresh = dict(zip(todo, self._encode(todo, templates), strict=True))
        for text, emb in fresh.items():
            self.cache[(templates, text)] = emb
        if self.store is not None:
            self.store.put_many(templates, fresh)

    def _encode(self, texts: list[str], templates: tuple[str, ...]) -> torch.Tensor:
        prompts = [tpl.format(t) for t in texts for tpl in templates]
        chunks = []
        starts = range(0, len(prompts), self.batch_size)
        quiet = len(starts) < PROGRESS_MIN_BATCHES
        with torch.no_grad():
            for start in tqdm(starts, desc="text embeddings", unit="batch", disable=quiet):
                tokens = self.tokenizer(prompts[start : start + self.batch_size]).to(self._device)
                chunks.append(F.normalize(self.clip.encode_text(tokens).float(), dim=-1))
        per_prompt = torch.cat(chunks).view(len(texts), len(templates), -1)
        return F.normalize(per_prompt.mean(dim=1), dim=-1).cpu()


def _check_templates(templates: Sequence[str] | Any) -> tuple[str, ...]:
    tmpl = tuple(templates)
    if not tmpl or any("{}" not in t for t in tmpl):
        raise ValueError(f"every template must contain '{{}}', got {list(tmpl)}")
    return tmpl
