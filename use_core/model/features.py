"""The two feature containers between the frozen backbones, the trainable encoder and the head.

``FrozenFeatures`` is what the backbones produce (and what the feature cache stores);
``ImageFeatures`` is the trainable encoder's output ``z`` that the segment head pools.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class FrozenFeatures:
    """Frozen backbone outputs for ``B`` images, every level resampled to one ``G×G`` grid.

    Attributes:
      levels: ``levels[b][i]`` is ``(B, C_bi, G, G)`` — backbone ``b``, level ``i``.
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
    """Output ``z`` of the image encoder for ``B`` images on a ``G×G`` grid.

    The paper's per-patch feature is ``z = [c, ĉ, d, d̂]``; it is kept factored here as the
    patch part ``[c, d]`` (per cell) and the global part ``[ĉ, d̂]`` (per image, the same for
    every cell), which the head concatenates after pooling. Because the head is linear, this
    fixed reordering of ``z``'s blocks changes nothing.

    Attributes:
      patch: ``(B, G*G, P)`` float32, cells in row-major order.
      glob: ``(B, Q)`` float32, or ``None`` when cls tokens are off.
      grid: ``(G, G)``.
    """

    patch: torch.Tensor
    glob: torch.Tensor | None
    grid: tuple[int, int]

    @property
    def batch_size(self) -> int:
        return int(self.patch.shape[0])
