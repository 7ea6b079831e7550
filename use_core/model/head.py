"""Segment embedding head (§3.2): mask-area weights per patch → weighted mean of ``z`` → Linear.

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

from use_core.model.features import ImageFeatures


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
    m = masks.float()
    if h % gh == 0 and w % gw == 0:  # exact and cheaper: plain average pooling
        return F.adaptive_avg_pool2d(m, (gh, gw))
    rows = _overlap_matrix(h, gh, m.device)  # (gh, H)
    cols = _overlap_matrix(w, gw, m.device)  # (gw, W)
    return torch.einsum("ih,shw,jw->sij", rows, m, cols)


def pooling_weights(area: torch.Tensor) -> torch.Tensor:
    """Normalise ``(S, gh, gw)`` area fractions to ``(S, gh*gw)`` weights summing to 1.

    An all-zero row (empty mask) becomes uniform (see the module docstring).
    """
    flat = area.flatten(1).float()
    total = flat.sum(dim=1, keepdim=True)
    uniform = torch.full_like(flat, 1.0 / flat.shape[1])
    return torch.where(total > 0, flat / total.clamp(min=1e-12), uniform)


class SegmentHead(nn.Module):
    """Weighted mean of ``z`` over patches, one Linear into the text space, L2 normalised.

    Arguments:
      in_dim: width of ``z`` (patch part + global part).
      embed_dim: width of the vision-language space (CLIP's text embedding width).
    """

    def __init__(self, in_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, embed_dim)

    def forward(
        self, features: ImageFeatures, weights: torch.Tensor, image_index: torch.Tensor
    ) -> torch.Tensor:
        """Embed ``S`` segments.

        Arguments:
          features: encoder output for ``B`` images.
          weights: ``(S, G*G)`` pooling weights (rows sum to 1, see :func:`pooling_weights`).
          image_index: ``(S,)`` int, the image (``0..B-1``) each segment belongs to.
        Returns:
          ``(S, embed_dim)`` float32, unit L2 norm.
        """
        s = weights.shape[0]
        if image_index.shape != (s,):
            raise ValueError(f"image_index must be ({s},), got {tuple(image_index.shape)}")
        if s and (int(image_index.min()) < 0 or int(image_index.max()) >= features.batch_size):
            raise ValueError(f"image_index out of range for a batch of {features.batch_size}")
        patch = features.patch
        pooled = patch.new_zeros((s, patch.shape[-1]))
        for b in torch.unique(image_index).tolist():
            rows = (image_index == b).nonzero(as_tuple=True)[0]
            pooled = pooled.index_put((rows,), weights[rows].to(patch.dtype) @ patch[b])
        if features.glob is not None:
            # The global part is the same in every cell, so its weighted mean is itself.
            pooled = torch.cat([pooled, features.glob[image_index]], dim=-1)
        return F.normalize(self.proj(pooled), dim=-1)
