"""Segment classification against class names (paper §4.3).

Class names become text embeddings with CLIP-style class templates (``eval.class_templates``,
averaged per class by :meth:`USEModel.encode_text`); a segment's class probabilities are the
softmax over classes of ``logit_scale ×`` cosine similarity, ``logit_scale`` being the training
temperature (paper §4.2: 30, ``train.logit_scale``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

DEFAULT_LOGIT_SCALE = 30.0  # paper §4.2


def class_text_embeddings(
    model: Any, class_names: Sequence[str], templates: Sequence[str] | None = None
) -> torch.Tensor:
    """``(C, E)`` float32 unit-norm text embeddings of ``class_names`` (templates averaged)."""
    if not class_names:
        raise ValueError("class_names must not be empty")
    with torch.no_grad():
        return model.encode_text(list(class_names), templates=templates).float()


def class_probabilities(
    segment_embeddings: torch.Tensor,
    text_embeddings: torch.Tensor,
    logit_scale: float = DEFAULT_LOGIT_SCALE,
) -> torch.Tensor:
    """``softmax(logit_scale · S Tᵀ)`` over classes.

    Arguments:
      segment_embeddings: ``(S, E)`` unit-norm segment embeddings.
      text_embeddings: ``(C, E)`` unit-norm class text embeddings.
      logit_scale: multiplies the cosine similarities before the softmax (> 0).
    Returns:
      ``(S, C)`` float32 probabilities, each row summing to 1.
    """
    if segment_embeddings.ndim != 2 or text_embeddings.ndim != 2:
        raise ValueError("need (S, E) segment and (C, E) text embeddings")
    if segment_embeddings.shape[1] != text_embeddings.shape[1]:
        raise ValueError(
            f"embedding widths differ: segments {segment_embeddings.shape[1]}, "
            f"texts {text_embeddings.shape[1]}"
        )
    if logit_scale <= 0:
        raise ValueError(f"logit_scale must be > 0, got {logit_scale}")
    sims = segment_embeddings.float() @ text_embeddings.float().to(segment_embeddings.device).T
    return torch.softmax(logit_scale * sims, dim=1)
