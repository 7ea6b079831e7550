"""Trainable part of the image encoder: LLN per level, learned level scales, cls LLNs (§3.2).

For backbone ``b`` with levels ``x_0..x_{m-1}`` (each ``(B, C_i, G, G)`` on the common grid)::

    c = Σ_i α_i · LLN_i(x_i)          LLN = LayerNorm(C_i) → Linear(C_i, feature_dim)

with the scales ``α`` learned and initialised to ``1/m``. The cls embedding of each backbone
goes through its own LLN as well (the paper does not say; it brings every block of ``z`` to the
same width and scale, so no backbone dominates the head by its raw norm).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from use_core.model.features import FrozenFeatures, ImageFeatures

RESAMPLE_MODES = ("bilinear", "nearest", "area")


class LLN(nn.Sequential):
    """Linear-layernorm module of COMM: ``LayerNorm(in_dim)`` then ``Linear(in_dim, out_dim)``.

    Input ``(..., in_dim)`` → output ``(..., out_dim)`` (channels last).
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__(nn.LayerNorm(in_dim), nn.Linear(in_dim, out_dim))


class MultiLevelFusion(nn.Module):
    """Weighted sum of per-level LLN outputs: ``(B, C_i, G, G)`` list → ``(B, G*G, out_dim)``."""

    def __init__(self, level_dims: Sequence[int], out_dim: int) -> None:
        super().__init__()
        if not level_dims:
            raise ValueError("a backbone needs at least one level")
        self.llns = nn.ModuleList(LLN(int(c), out_dim) for c in level_dims)
        self.scales = nn.Parameter(torch.full((len(level_dims),), 1.0 / len(level_dims)))

    def forward(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(levels) != len(self.llns):
            raise ValueError(f"expected {len(self.llns)} levels, got {len(levels)}")
        out: torch.Tensor | None = None
        for i, (x, lln) in enumerate(zip(levels, self.llns, strict=True)):
            tokens = x.flatten(2).transpose(1, 2)  # (B, G*G, C_i)
            term = self.scales[i] * lln(tokens)
            out = term if out is None else out + term
        assert out is not None
        return out


class ImageEncoderHead(nn.Module):
    """All trainable parameters of the image encoder, for the given backbone level layout.

    Arguments:
      level_dims: ``level_dims[b]`` = channel counts of backbone ``b``'s levels.
      cls_dims: ``cls_dims[b]`` = channel count of backbone ``b``'s cls embedding.
      feature_dim: width of every LLN output.
      use_cls: concatenate the cls embeddings (paper Table 5) or not.
    """

    def __init__(
        self,
        level_dims: Sequence[Sequence[int]],
        cls_dims: Sequence[int],
        feature_dim: int,
        use_cls: bool = True,
    ) -> None:
        super().__init__()
        self.fusions = nn.ModuleList(MultiLevelFusion(d, feature_dim) for d in level_dims)
        self.use_cls = use_cls
        self.cls_llns = (
            nn.ModuleList(LLN(int(c), feature_dim) for c in cls_dims) if use_cls else None
        )
        self.patch_dim = feature_dim * len(level_dims)
        self.glob_dim = feature_dim * len(cls_dims) if use_cls else 0

    @property
    def out_dim(self) -> int:
        """Width of the pooled ``z`` the head sees: ``patch_dim + glob_dim``."""
        return self.patch_dim + self.glob_dim

    def forward(self, frozen: FrozenFeatures) -> ImageFeatures:
        patch = torch.cat(
            [fusion(lv) for fusion, lv in zip(self.fusions, frozen.levels, strict=True)], dim=-1
        )
        glob = None
        if self.cls_llns is not None:
            glob = torch.cat(
                [lln(c) for lln, c in zip(self.cls_llns, frozen.cls, strict=True)], dim=-1
            )
        return ImageFeatures(patch=patch, glob=glob, grid=frozen.grid)


def resample_grid(x: torch.Tensor, grid: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resample a ``(B, C, h, w)`` feature grid to ``(B, C, *grid)`` (cell centres aligned).

    ``bilinear`` is antialiased when shrinking; ``area`` averages (and repeats when growing);
    ``nearest`` copies. A grid already of the target size is returned unchanged.
    """
    if mode not in RESAMPLE_MODES:
        raise ValueError(f"grid_resample must be one of {RESAMPLE_MODES}, got {mode!r}")
    if tuple(x.shape[-2:]) == tuple(grid):
        return x
    if mode == "bilinear":
        return F.interpolate(x, size=grid, mode="bilinear", align_corners=False, antialias=True)
    return F.interpolate(x, size=grid, mode=mode)
