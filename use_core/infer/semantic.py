"""Semantic maps from classified segments (paper §4.3).

Each pixel takes the class with the largest *sum of probabilities* over the segments covering
it. With masks ``M`` ``(S, HW)`` and probabilities ``P`` ``(S, C)`` that is
``argmax_c (Pᵀ M)[c, pixel]``: one ``(C, S) @ (S, HW)`` matrix product, computed in pixel
chunks so memory stays at ``C × chunk`` floats (exact: each pixel's column is computed whole).

Pixels that no segment covers take the class of a **whole-image segment** (the full-image mask
embedded like any other segment, passed as ``fallback_probs``): the model's view of the whole
image is the best available guess for a pixel SAM left out. The whole-image segment is a
fallback only; it does not vote on covered pixels. Without ``fallback_probs`` uncovered pixels
get ``unassigned`` (e.g. the benchmark's ignore index, which metrics count as wrong).
Ties go to the lowest class index.
"""

from __future__ import annotations

import numpy as np
import torch

PIXEL_CHUNK = 1 << 18  # pixels per matmul chunk


def semantic_map(
    masks: np.ndarray | torch.Tensor,
    probs: np.ndarray | torch.Tensor,
    fallback_probs: np.ndarray | torch.Tensor | None = None,
    unassigned: int = 255,
) -> np.ndarray:
    """Per-pixel argmax of summed segment probabilities.

    Arguments:
      masks: ``(S, H, W)`` bool segment masks (S may be 0).
      probs: ``(S, C)`` class probabilities of the segments.
      fallback_probs: ``(C,)`` probabilities of the whole-image segment, used for uncovered
        pixels.
      unassigned: label of uncovered pixels when there is no fallback.
    Returns:
      ``(H, W)`` int32 label map with values in ``0..C-1`` (or ``unassigned``).
    """
    m = torch.as_tensor(masks)
    p = torch.as_tensor(probs).float()
    if m.ndim != 3 or p.ndim != 2 or m.shape[0] != p.shape[0]:
        raise ValueError(f"need masks (S, H, W) and probs (S, C), got {tuple(m.shape)}, {p.shape}")
    s, h, w = m.shape
    c = p.shape[1]
    flat = m.reshape(s, h * w)
    labels = torch.empty(h * w, dtype=torch.int32)
    covered = torch.empty(h * w, dtype=torch.bool)
    pt = p.T.contiguous()  # (C, S)
    for start in range(0, h * w, PIXEL_CHUNK):
        chunk = flat[:, start : start + PIXEL_CHUNK].to(torch.float32)  # (S, chunk)
        votes = pt @ chunk  # (C, chunk); all zeros when S == 0
        labels[start : start + chunk.shape[1]] = votes.argmax(dim=0).to(torch.int32)
        covered[start : start + chunk.shape[1]] = chunk.any(dim=0)
    if fallback_probs is not None:
        fb = torch.as_tensor(fallback_probs).float()
        if fb.shape != (c,):
            raise ValueError(f"fallback_probs must be ({c},), got {tuple(fb.shape)}")
        fill = int(fb.argmax())
    else:
        fill = unassigned
    labels[~covered] = fill
    return labels.reshape(h, w).numpy()
