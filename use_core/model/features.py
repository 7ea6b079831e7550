"""The two feature containers between the frozen backbones, the trainable encoder and the head.

``FrozenFeatures`` is what the frozen part produces — backbone levels on the common grid, each
cell normalised by the parameter-free part of its level's LayerNorm — and what the training
feature cache stores; ``ImageFeatures`` is what ``encode_image`` returns: the same normalised
levels (float32) plus the per-image global part of ``z``. The per-level LLNs run per segment,
after pooling (see :mod:`use_core.model.encoder`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class FrozenFeatures:
    """Frozen backbone outputs for ``B`` images, every level resampled to one ``G×G`` grid.

    Attributes:
      levels: ``levels[b][i]`` is ``(B, C_bi, G, G)`` — backbone ``b``, level ``i``, every cell
        normalised over its ``C_bi`` channels (``(x − mean) / sqrt(var + eps)``, no affine).
      cls: ``cls[b]`` is ``(B, C_b)`` — the global embedding of backbone ``b``.
    """

    levels: list[list[torch.Tensor]]
    cls: list[torch.Tensor]

    @property
    def batch_size(self) -> int:
        return int(self.cls[0].shape[0])

    @property
    def grid(self) -> tuple[int, int]:
        g = self.levels[0][0].shape[-2:]
        return int(g[0]), int(g[1])

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> FrozenFeatures:
        """A copy on ``device`` / in ``dtype`` (fp16 for the cache, float32 for training)."""
        return FrozenFeatures(
            levels=[[t.to(device=device, dtype=dtype) for t in lv] for lv in self.levels],
            cls=[t.to(device=device, dtype=dtype) for t in self.cls],
        )

    def select(self, index: int) -> FrozenFeatures:
        """The features of image ``index`` alone (batch of one)."""
        return FrozenFeatures(
            levels=[[t[index : index + 1] for t in lv] for lv in self.levels],
            cls=[t[index : index + 1] for t in self.cls],
        )

    @staticmethod
    def cat(parts: list[FrozenFeatures]) -> FrozenFeatures:
        """Concatenate along the batch dimension (all parts from the same backbones and grid)."""
        if not parts:
            raise ValueError("cannot concatenate an empty list of FrozenFeatures")
        first = parts[0]
        levels = [
            [torch.cat([p.levels[b][i] for p in parts]) for i in range(len(first.levels[b]))]
            for b in range(len(first.levels))
        ]
        cls = [torch.cat([p.cls[b] for p in parts]) for b in range(len(first.cls))]
        return FrozenFeatures(levels=levels, cls=cls)


@dataclass
class ImageFeatures:
    """Output of the image encoder for ``B`` images on a ``G×G`` grid, ready for pooling.

    The paper's per-patch feature is ``z = [c, ĉ, d, d̂]``. Its patch part ``[c, d]`` is affine
    in the normalised levels, so it is kept factored: ``levels`` holds the normalised levels and
    the LLNs are applied to their weighted means per segment (``ImageEncoderHead.pool_segments``).
    The global part ``[ĉ, d̂]`` (per image, the same in every cell) is computed here; the head
    concatenates it after pooling. Because the head is linear, this fixed reordering of ``z``'s
    blocks changes nothing.

    Attributes:
      levels: ``levels[b][i]`` ``(B, C_bi, G, G)`` float32, normalised per cell, no grad.
      glob: ``(B, Q)`` float32, or ``None`` when cls tokens are off.
      grid: ``(G, G)``.
    """

    levels: list[list[torch.Tensor]]
    glob: torch.Tensor | None
    grid: tuple[int, int]

    @property
    def batch_size(self) -> int:
        return int(self.levels[0][0].shape[0])
