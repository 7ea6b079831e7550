"""Trainable part of the image encoder: LLN per level, learned level scales, cls LLNs (§3.2).

For backbone ``b`` with levels ``x_0..x_{m-1}`` (each ``(B, C_i, G, G)`` on the common grid),
the per-cell feature of the paper is::

    c = Σ_i α_i · LLN_i(x_i)          LLN = LayerNorm(C_i) → Linear(C_i, feature_dim)

with the scales ``α`` learned and initialised to ``1/m``. The cls embedding of each backbone
goes through its own LLN as well (the paper does not say; it brings every block of ``z`` to the
same width and scale, so no backbone dominates the head by its raw norm).

Order of operations. A LayerNorm is a parameter-free normalisation ``n(x) = (x − mean) /
sqrt(var + eps)`` over the channels of one cell followed by the affine ``γ ⊙ n + β``; everything
after ``n`` (affine, Linear, scale, sum over levels) is affine, and the segment head only takes
a weighted mean over cells with weights summing to 1. So, exactly (same parameters, same
function)::

    Σ_p w_p Σ_i α_i (W_i(γ_i ⊙ n(x_ip) + β_i) + b_i)
        = Σ_i α_i (W_i(γ_i ⊙ (Σ_p w_p n(x_ip)) + β_i) + b_i)

The model therefore splits every level's LLN in two: :meth:`ImageEncoderHead.normalize` (frozen,
once per image, with the backbones: what the training feature cache stores) and the affine part,
applied by :meth:`ImageEncoderHead.pool_segments` either to the pooled ``(S, C_i)`` matrices
(*pool first*, the usual case: training's backward touches only ``S × C`` tensors) or to every
cell before pooling (*fuse first*, cheaper when one image has many more segments than
:func:`pool_first_is_cheaper` allows). Both orders are exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

from use_core.model.features import FrozenFeatures, ImageFeatures

RESAMPLE_MODES = ("bilinear", "nearest", "area")
PoolOrder = Literal["auto", "pool_first", "fuse_first"]


class LLN(nn.Sequential):
    """Linear-layernorm module of COMM: ``LayerNorm(in_dim)`` then ``Linear(in_dim, out_dim)``.

    Input ``(..., in_dim)`` → output ``(..., out_dim)`` (channels last). ``forward`` =
    ``affine(normalize(x))``; the two halves are exposed for the pool-first order.
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__(nn.LayerNorm(in_dim), nn.Linear(in_dim, out_dim))

    @property
    def norm(self) -> nn.LayerNorm:
        return cast(nn.LayerNorm, self[0])

    @property
    def linear(self) -> nn.Linear:
        return cast(nn.Linear, self[1])

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Parameter-free part of the LayerNorm over the last dim (same ``eps``)."""
        return F.layer_norm(x, self.norm.normalized_shape, eps=self.norm.eps)

    def affine(self, n: torch.Tensor) -> torch.Tensor:
        """``W(γ ⊙ n + β) + b`` on already normalised ``(..., in_dim)`` input."""
        return self.linear(torch.addcmul(self.norm.bias, n, self.norm.weight))


class MultiLevelFusion(nn.Module):
    """Weighted sum of per-level LLNs, applied to normalised levels (see :meth:`LLN.affine`).

    ``forward`` takes one ``(..., C_i)`` tensor of normalised features per level — every cell
    ``(B, G*G, C_i)`` or already pooled ``(S, C_i)`` — and returns ``(..., out_dim)``.
    """

    def __init__(self, level_dims: Sequence[int], out_dim: int) -> None:
        super().__init__()
        if not level_dims:
            raise ValueError("a backbone needs at least one level")
        self.level_dims = [int(c) for c in level_dims]
        self.out_dim = int(out_dim)
        self.llns = nn.ModuleList(LLN(c, out_dim) for c in self.level_dims)
        self.scales = nn.Parameter(torch.full((len(level_dims),), 1.0 / len(level_dims)))

    @property
    def level_llns(self) -> list[LLN]:
        return [cast(LLN, m) for m in self.llns]

    def normalize(self, levels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``(B, C_i, G, G)`` raw levels → the same shapes, each cell normalised over channels.

        The output is channels-last in memory (each cell's channels contiguous, as the pooling
        reads them); a channels-last input is normalised without any copy.
        """
        self._check(levels)
        return [
            lln.normalize(x.movedim(1, -1)).movedim(-1, 1)
            for x, lln in zip(levels, self.level_llns, strict=True)
        ]

    def forward(self, normalized: Sequence[torch.Tensor]) -> torch.Tensor:
        self._check(normalized)
        out: torch.Tensor | None = None
        for i, (n, lln) in enumerate(zip(normalized, self.level_llns, strict=True)):
            term = self.scales[i] * lln.affine(n)
            out = term if out is None else out + term
        assert out is not None
        return out

    def _check(self, levels: Sequence[torch.Tensor]) -> None:
        if len(levels) != len(self.llns):
            raise ValueError(f"expected {len(self.llns)} levels, got {len(levels)}")


def pool_first_is_cheaper(
    segments: int, images: int, cells: int, level_dims: Sequence[int], out_dim: int
) -> bool:
    """Which exact order costs fewer multiply-adds for one backbone (ties: pool first).

    Pool first: pool every level (``S·G²·ΣC``), then the LLNs on ``S`` rows (``S·ΣC·D``).
    Fuse first: the LLNs on every cell of every image (``B·G²·ΣC·D``), then pool the fused
    ``D``-wide cells (``S·G²·D``). With ``G² ≫ D`` pooling first wins while ``S`` is below
    about ``B·D`` segments (e.g. 256 per image at ``feature_dim`` 256): always in training.
    """
    c = sum(level_dims)
    pool_first = segments * c * (cells + out_dim)
    fuse_first = images * cells * c * out_dim + segments * cells * out_dim
    return pool_first <= fuse_first


def pool_cells(
    values: torch.Tensor, weights: torch.Tensor, groups: Sequence[tuple[int, torch.Tensor]]
) -> torch.Tensor:
    """Weighted means over cells: ``(B, G*G, C)`` values, ``(S, G*G)`` weights → ``(S, C)``.

    ``groups`` lists ``(image, rows)``: the segment rows that pool from each image.
    """
    out = values.new_zeros((weights.shape[0], values.shape[-1]))
    for b, rows in groups:
        out = out.index_put((rows,), weights[rows].to(values.dtype) @ values[b])
    return out


def image_groups(image_index: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """``(S,)`` image of each segment → ``[(image, rows of its segments)]``.

    On the ``meta`` device (shape checks, no values) every row is one group of image 0.
    """
    if image_index.device.type == "meta":
        rows = torch.arange(image_index.shape[0], device=image_index.device)
        return [(0, rows)]
    return [
        (int(b), (image_index == b).nonzero(as_tuple=True)[0])
        for b in torch.unique(image_index).tolist()
    ]


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
    def fusion_list(self) -> list[MultiLevelFusion]:
        return [cast(MultiLevelFusion, m) for m in self.fusions]

    @property
    def out_dim(self) -> int:
        """Width of the pooled ``z`` the head sees: ``patch_dim + glob_dim``."""
        return self.patch_dim + self.glob_dim

    @torch.no_grad()
    def normalize(self, levels: Sequence[Sequence[torch.Tensor]]) -> list[list[torch.Tensor]]:
        """Raw ``levels[b][i]`` ``(B, C, G, G)`` → normalised per cell (frozen, no grad)."""
        return [f.normalize(lv) for f, lv in zip(self.fusion_list, levels, strict=True)]

    def forward(self, frozen: FrozenFeatures) -> ImageFeatures:
        """Per-image trainable work: the cls LLNs. The per-cell levels pass through as they are
        (normalised); their LLNs run in :meth:`pool_segments`."""
        if len(frozen.levels) != len(self.fusions):
            raise ValueError(f"expected {len(self.fusions)} backbones, got {len(frozen.levels)}")
        glob = None
        if self.cls_llns is not None:
            glob = torch.cat(
                [lln(c) for lln, c in zip(self.cls_llns, frozen.cls, strict=True)], dim=-1
            )
        return ImageFeatures(levels=frozen.levels, glob=glob, grid=frozen.grid)

    def pool_segments(
        self,
        features: ImageFeatures,
        weights: torch.Tensor,
        image_index: torch.Tensor,
        order: PoolOrder = "auto",
    ) -> torch.Tensor:
        """The weighted mean of ``z`` over cells for ``S`` segments: ``(S, out_dim)``.

        Arguments:
          features: :meth:`forward` output for ``B`` images.
          weights: ``(S, G*G)`` pooling weights, rows summing to 1.
          image_index: ``(S,)`` int in ``0..B-1``.
          order: ``pool_first`` / ``fuse_first`` (both exact, see the module docstring) or
            ``auto`` (per backbone, :func:`pool_first_is_cheaper`).
        """
        groups = image_groups(image_index)
        s, cells = weights.shape
        parts = []
        for fusion, levels in zip(self.fusion_list, features.levels, strict=True):
            tokens = [x.flatten(2).transpose(1, 2) for x in levels]  # (B, G*G, C_i) views
            first = order == "pool_first" or (
                order == "auto"
                and pool_first_is_cheaper(s, len(groups), cells, fusion.level_dims, fusion.out_dim)
            )
            if first:
                parts.append(fusion([pool_cells(t, weights, groups) for t in tokens]))
            else:
                parts.append(pool_cells(fusion(tokens), weights, groups))
        if features.glob is not None:
            # The global part is the same in every cell, so its weighted mean is itself.
            parts.append(features.glob[image_index])
        return torch.cat(parts, dim=-1)


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
