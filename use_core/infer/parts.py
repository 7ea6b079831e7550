"""Open-vocabulary part segmentation (paper §4.4).

Grid proposals mostly hold whole objects or background, not parts. Following the paper, the
vocabulary is the target part names followed by background classes (PartImageNet: the 91
COCO-stuff classes and PartImageNet's 11 super-categories; shapes: its stuff, object and shape
names — :attr:`Benchmark.background_names`), and only segments whose most probable class is a
target part become predictions, scored by that probability.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from use_core.ops.rle import encode_masks


def part_vocabulary(part_names: Sequence[str], background_names: Sequence[str]) -> list[str]:
    """Parts first (index ``i`` = part ``i``), then the background names not already listed."""
    if not part_names:
        raise ValueError("part_names must not be empty")
    if len(set(part_names)) != len(part_names):
        raise ValueError("part_names must be unique")
    seen = set(part_names)
    vocab = list(part_names)
    for name in background_names:
        if name not in seen:
            seen.add(name)
            vocab.append(name)
    return vocab


def select_part_segments(
    probs: np.ndarray | torch.Tensor, num_parts: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Segments whose top class is a part.

    Arguments:
      probs: ``(S, V)`` probabilities over :func:`part_vocabulary` (parts are ``0..num_parts-1``).
      num_parts: number of target parts.
    Returns:
      ``(segment_index (K,), part_index (K,), score (K,))``: int64, int64, float32.
    """
    p = torch.as_tensor(probs).float()
    if p.ndim != 2 or not 0 < num_parts <= p.shape[1]:
        raise ValueError(f"need (S, V) probs with V >= num_parts={num_parts}, got {tuple(p.shape)}")
    score, top = p.max(dim=1)
    keep = (top < num_parts).nonzero(as_tuple=True)[0]
    return keep.numpy(), top[keep].numpy(), score[keep].numpy().astype(np.float32)


def part_predictions(
    masks: np.ndarray,
    probs: np.ndarray | torch.Tensor,
    num_parts: int,
    image_id: Any,
    category_ids: Sequence[int],
) -> list[dict[str, Any]]:
    """COCO result dicts (``image_id, category_id, segmentation`` RLE, ``score``) for the
    segments of one image whose top class is a part; ``category_ids[i]`` is part ``i``'s id.

    ``masks`` is ``(S, H, W)`` bool, aligned with the rows of ``probs``.
    """
    if len(category_ids) != num_parts:
        raise ValueError(f"{len(category_ids)} category ids for {num_parts} parts")
    seg_idx, part_idx, scores = select_part_segments(probs, num_parts)
    rles = encode_masks(np.asarray(masks, dtype=bool)[seg_idx])
    return [
        {
            "image_id": image_id,
            "category_id": int(category_ids[int(k)]),
            "segmentation": dict(rle),
            "score": float(sc),
        }
        for rle, k, sc in zip(rles, part_idx, scores, strict=True)
    ]
