"""Segment embeddings of one image: the shared first step of classify, segment, query and eval."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def image_tensor(image: np.ndarray) -> torch.Tensor:
    """HWC uint8 RGB → ``(1, 3, H, W)`` uint8 tensor (what :meth:`USEModel.encode_image` takes)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be HWC uint8 RGB, got {image.shape} {image.dtype}")
    return torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)[None]


@torch.no_grad()
def embed_masks(
    model: Any, image: np.ndarray, masks: np.ndarray, whole_image: bool = False
) -> torch.Tensor:
    """Embed the ``(S, H, W)`` bool ``masks`` of an HWC uint8 RGB ``image`` with one encoder pass.

    With ``whole_image`` a full-image mask is appended as the last segment (row ``S``).
    Returns ``(S, E)`` (or ``(S + 1, E)``) float32 unit-norm embeddings on the CPU.
    """
    masks = np.asarray(masks, dtype=bool)
    h, w = image.shape[:2]
    if masks.ndim != 3 or masks.shape[1:] != (h, w):
        raise ValueError(f"masks must be (S, {h}, {w}), got {masks.shape}")
    if whole_image:
        masks = np.concatenate([masks, np.ones((1, h, w), dtype=bool)])
    if masks.shape[0] == 0:
        return torch.zeros(0, int(model.embed_dim))
    features = model.encode_image(image_tensor(image).to(model.device))
    return model.embed_segments(features, torch.from_numpy(masks)).float().cpu()
