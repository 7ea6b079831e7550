"""Segment embedding head (§3.2): mask-area weights per patch → weighted mean of ``z`` → Linear.

The weighted mean itself is taken by ``ImageEncoderHead.pool_segments`` (it pools the normalised
levels before their affine LLNs, which is exact because the weights of a segment sum to 1);
:class:`SegmentHead` is the Linear and the L2 normalisation of the pooled ``z``.

A segment's weight in a patch is the area of the segment inside the patch divided by the patch
area (the fraction of the patch it covers). :func:`area_weights` computes this exactly for any
image size, also when ``H`` or ``W`` is not a multiple of the grid (a pixel straddling two cells
is split between them by its overlap).

Rules for degenerate segments:

* any non-empty mask covers a positive fraction of at least one cell, so it always gets weights
  (a one-pixel segment pools from the single cell containing it);
* an **empty** mask gets uniform weights over all cells — its embedding is the whole-image
  embedding. Callers that must not embed empty masks check ``masks.any((1, 2))`` first (the
  training augmentation drops them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

AREA_CHUNK_PIXELS = 1 << 21  # mask pixels converted to float at once in area_weights


def _overlap_matrix(length: int, cells: int, device: torch.device) -> torch.Tensor:
    """``(cells, length)``: fraction of cell ``i``'s extent covered by pixel ``j``'s extent."""
    size = length / cells
    edges = torch.arange(cells + 1, device=device, dtype=torch.float64) * size
    lo = torch.arange(length, device=device, dtype=torch.float64)
    start = torch.maximum(edges[:-1, None], lo[None, :])
    stop = torch.minimum(edges[1:, None], lo[None, :] + 1.0)
    return ((stop - start).clamp(min=0.0) / size).float()


def area_weights(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Fraction of each grid cell covered by each mask.

    Arguments:
      masks: ``(S, H, W)`` bool or float in ``[0, 1]`` (image coordinates, row-major).
      grid: ``(gh, gw)`` patch grid spanning the same image.
    Returns:
      ``(S, gh, gw)`` float32 in ``[0, 1]``: area of the mask in the cell / cell area.
    """
    if masks.ndim != 3:
        raise ValueError(f"masks must be (S, H, W), got shape {tuple(masks.shape)}")
    s, h, w = masks.shape
    gh, gw = grid
    divisible = h % gh == 0 and w % gw == 0  # then plain average pooling: exact and cheaper
    if not divisible:
        rows = _overlap_matrix(h, gh, masks.device)  # (gh, H)
        cols = _overlap_matrix(w, gw, masks.device)  # (gw, W)

    def pool(m: torch.Tensor) -> torch.Tensor:
        if divisible:
            return F.adaptive_avg_pool2d(m, (gh, gw))
        # rows · m · colsᵀ per mask, as two plain matmuls (about twice as fast as the einsum)
        return rows @ (m.reshape(-1, w) @ cols.T).reshape(-1, h, gw)

    # Masks are converted to float a few at a time: the float copy of all of them would be
    # S·H·W·4 bytes (75 MB for 100 masks of 375×500), and converting it in cache-sized pieces
    # next to the matmul takes less than half the time (same values).
    step = max(1, AREA_CHUNK_PIXELS // max(h * w, 1))
    out = torch.empty((s, gh, gw), dtype=torch.float32, device=masks.device)
    for start in range(0, s, step):
        out[start : start + step] = pool(masks[start : start + step].float())
    return out


def pooling_weights(area: torch.Tensor) -> torch.Tensor:
    """Normalise ``(S, gh, gw)`` area fractions to ``(S, gh*gw)`` weights summing to 1.

    An all-zero row (empty mask) becomes uniform (see the module docstring).
    """
    flat = area.flatten(1).float()
    total = flat.sum(dim=1, keepdim=True)
    uniform = torch.full_like(flat, 1.0 / flat.shape[1])
    return torch.where(total > 0, flat / total.clamp(min=1e-12), uniform)


class SegmentHead(nn.Module):
    """One Linear from the pooled ``z`` into the text space, L2 normalised.

    Arguments:
      in_dim: width of ``z`` (patch part + global part).
      embed_dim: width of the vision-language space (CLIP's text embedding width).
    """

    def __init__(self, in_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, embed_dim)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """``(S, in_dim)`` weighted means of ``z`` → ``(S, embed_dim)`` float32, unit L2 norm."""
        return F.normalize(self.proj(pooled), dim=-1)
