"""The USE model's computation before the pool-first reorder, written out as a test reference.

Old order: every level through its full LLN (``nn.LayerNorm`` module, then ``Linear``) on every
grid cell, times its learned scale, summed per backbone; cls LLNs per image; ``z`` per cell =
``[patch, glob]``; weighted mean of ``z`` over cells; ``Linear``; L2 normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from use_core.model import FrozenFeatures, USEModel
from use_core.model.encoder import resample_grid
from use_core.model.use_model import images_to_float


@torch.no_grad()
def raw_frozen_features(model: USEModel, images: torch.Tensor) -> FrozenFeatures:
    """Backbone levels on the common grid *without* the per-cell normalisation (float32)."""
    x = images_to_float(images)
    levels, cls = [], []
    for backbone in model.backbone_list:
        out = backbone(x)
        levels.append(
            [resample_grid(t, model.grid, model.grid_resample).float() for t in out.levels]
        )
        cls.append(out.cls.float())
    return FrozenFeatures(levels=levels, cls=cls)


def fuse_first_embed(
    model: USEModel, raw: FrozenFeatures, weights: torch.Tensor, index: Sequence[int] | torch.Tensor
) -> torch.Tensor:
    """``(S, E)`` segment embeddings the old way, from raw levels and ``(S, G*G)`` weights."""
    head = model.encoder_head
    patches = []
    for fusion, levels in zip(head.fusions, raw.levels, strict=True):
        c = 0
        for i, (x, lln) in enumerate(zip(levels, fusion.llns, strict=True)):
            tokens = x.flatten(2).transpose(1, 2)  # (B, G*G, C_i)
            c = c + fusion.scales[i] * lln[1](lln[0](tokens))  # LayerNorm module → Linear
        patches.append(c)
    z = torch.cat(patches, dim=-1)  # (B, G*G, P)
    if head.cls_llns is not None:
        glob = torch.cat(
            [lln[1](lln[0](t)) for lln, t in zip(head.cls_llns, raw.cls, strict=True)], -1
        )
        z = torch.cat([z, glob[:, None, :].expand(-1, z.shape[1], -1)], dim=-1)
    index = torch.as_tensor(index, dtype=torch.long)
    pooled = torch.stack([weights[s] @ z[int(index[s])] for s in range(len(index))])
    return F.normalize(model.segment_head.proj(pooled), dim=-1)
