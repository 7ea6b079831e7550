"""Symmetric segment-text contrastive loss, equation (1) of the paper.

For ``k`` segment embeddings ``s_i`` and text embeddings ``t_i`` (unit norm)::

    L = -1/(2k) Σ_i [ log softmax_j(τ s_i·t_j)[i] + log softmax_j(τ s_j·t_i)[i] ]

with ``τ = 30`` *multiplying* the cosine similarities (the paper calls it a temperature but sets
it to 30; dividing by 30 would make the loss nearly flat).

Duplicate texts. Eq. (1) treats every off-diagonal pair as a negative, also when two segments of
a batch were given the same text — then each is pushed away from its own description. With
``text_index`` the loss instead works on the batch's *unique* texts and treats every segment
carrying a text as a positive for it:

* segment → text: cross-entropy of each segment over the unique texts;
* text → segment: for each unique text, ``-log`` of the softmax mass on all its segments;

each direction averaged over its rows. Without duplicates this equals eq. (1) exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def segment_text_loss(
    segments: torch.Tensor,
    texts: torch.Tensor,
    logit_scale: float = 30.0,
    text_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """Contrastive loss between segment and text embeddings (scalar tensor).

    Arguments:
      segments: ``(k, E)`` unit-norm segment embeddings.
      texts: ``(k, E)`` text embeddings aligned with ``segments`` (eq. 1), or, with
        ``text_index``, ``(U, E)`` unique text embeddings.
      logit_scale: ``τ``, multiplies the cosine similarities.
      text_index: ``(k,)`` int64, the unique text (``0..U-1``) of each segment; every unique text
        must be used by at least one segment.
    """
    k = segments.shape[0]
    if k == 0:
        raise ValueError("segment_text_loss needs at least one segment")
    logits = logit_scale * segments @ texts.T
    if text_index is None:
        if texts.shape[0] != k:
            raise ValueError(f"{k} segments but {texts.shape[0]} texts (pass text_index?)")
        target = torch.arange(k, device=segments.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    u = texts.shape[0]
    if text_index.shape != (k,):
        raise ValueError(f"text_index must be ({k},), got {tuple(text_index.shape)}")
    positives = F.one_hot(text_index, num_classes=u).bool()  # (k, U)
    if not bool(positives.any(dim=0).all()):
        raise ValueError("every unique text must belong to at least one segment")
    seg_to_text = F.cross_entropy(logits, text_index)
    log_p = logits.log_softmax(dim=0)  # over segments, per text column
    pos_mass = torch.logsumexp(log_p.masked_fill(~positives, float("-inf")), dim=0)
    text_to_seg = -pos_mass.mean()
    return 0.5 * (seg_to_text + text_to_seg)
