"""Mask non-maximum suppression with text merging (paper §3.1, IoU 0.7 in §4.1).

Different descriptions often point at the same region; NMS keeps one mask per region and the
texts of the masks it suppressed are merged into the kept one.

IoU is exact (pixel counts). :func:`mask_nms` only counts the pairs greedy NMS needs: a kept
mask against the still-alive masks that can pass the threshold — bounding boxes intersect and
min(area)/max(area) > threshold (IoU can be no larger) — inside the kept mask's bounding box.
:func:`mask_iou_matrix` gives all pairs at once: one matrix product of the flattened masks,
accumulated over pixel chunks in 64-bit integers (int8 with int32 accumulation through
``torch._int_mm`` on CPU, float32 — exact below 2**24 per chunk — elsewhere).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

# Pixels per matmul chunk: N x chunk int8/float32 (64/256 MB at N = 1,000); < 2**24 keeps
# float32 counts exact.
_PIXEL_CHUNK = 65_536
# Candidate masks counted per step against a kept mask's box (memory: chunk × box pixels).
_CANDIDATE_CHUNK = 64


def _chunk_gram(chunk: torch.Tensor) -> torch.Tensor:
    """(N, P) bool → (N, N) int64 counts of pixels set in both rows."""
    if chunk.device.type == "cpu" and hasattr(torch, "_int_mm"):
        c8 = chunk.to(torch.int8)
        try:
            return torch._int_mm(c8, c8.T.contiguous()).to(torch.int64)
        except RuntimeError:
            pass  # kernel not built for this CPU/shape: use float32
    c32 = chunk.to(torch.float32)
    return (c32 @ c32.T).round().to(torch.int64)


def mask_iou_matrix(masks: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boolean masks.

    Args:
        masks: (N, H, W) bool.
    Returns:
        (N, N) float64; pairs with an empty union (two empty masks) have IoU 0.
    """
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {masks.shape}")
    n = masks.shape[0]
    flat = torch.from_numpy(np.ascontiguousarray(masks, dtype=bool).reshape(n, -1))
    counts = torch.zeros((n, n), dtype=torch.int64)
    for start in range(0, flat.shape[1], _PIXEL_CHUNK):
        counts += _chunk_gram(flat[:, start : start + _PIXEL_CHUNK])
    inter = counts.to(torch.float64)
    area = torch.diagonal(inter).clone()
    union = area[:, None] + area[None, :] - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))
    return iou.numpy()


def mask_nms(masks: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[list[int]]:
    """Greedy mask NMS.

    Masks are visited by score, highest first (ties: lower index first). A visited mask that
    is not yet suppressed is kept and suppresses every remaining mask whose IoU with it is
    strictly greater than ``iou_threshold``.

    Args:
        masks: (N, H, W) bool.
        scores: (N,) finite floats (e.g. SAM stability scores).
        iou_threshold: in [0, 1].
    Returns:
        one group per kept mask, in visiting order: ``[kept, *suppressed]`` with the suppressed
        indices in visiting order. Every input index appears in exactly one group.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if masks.ndim != 3 or scores.shape != (masks.shape[0],):
        raise ValueError(f"need masks (N, H, W) and scores (N,), got {masks.shape}, {scores.shape}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores must be finite")
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
    n = masks.shape[0]
    if n == 0:
        return []
    masks = np.ascontiguousarray(masks, dtype=bool)
    order = np.argsort(-scores, kind="stable")
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    boxes, area = _boxes_and_areas(masks)
    alive = np.ones(n, dtype=bool)
    groups: list[list[int]] = []
    for i in order:
        if not alive[i]:
            continue
        alive[i] = False
        hits = _suppressed_by(i, masks, boxes, area, alive, iou_threshold)
        hits = hits[np.argsort(rank[hits])]
        alive[hits] = False
        groups.append([int(i), *(int(j) for j in hits)])
    return groups


def _boxes_and_areas(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per mask: ``[y0, y1, x0, x1)`` half-open bounding box (empty: ``[0, 0, 0, 0)``), area."""
    rows: np.ndarray = np.any(masks, axis=2)  # (N, H)
    cols: np.ndarray = np.any(masks, axis=1)  # (N, W)
    area = masks.sum(axis=(1, 2), dtype=np.int64)
    h, w = masks.shape[1:]
    nonempty = np.any(rows, axis=1)
    y0 = np.where(nonempty, np.argmax(rows, axis=1), 0)
    y1 = np.where(nonempty, h - np.argmax(rows[:, ::-1], axis=1), 0)
    x0 = np.where(nonempty, np.argmax(cols, axis=1), 0)
    x1 = np.where(nonempty, w - np.argmax(cols[:, ::-1], axis=1), 0)
    return np.stack([y0, y1, x0, x1], axis=1), area


def _suppressed_by(
    i: int,
    masks: np.ndarray,
    boxes: np.ndarray,
    area: np.ndarray,
    alive: np.ndarray,
    iou_threshold: float,
) -> np.ndarray:
    """Alive masks whose IoU with mask ``i`` is > ``iou_threshold`` (exact pixel counts).

    Only masks that can pass are counted: IoU ≤ min(area) / max(area), and it is 0 unless the
    bounding boxes intersect. The intersections are counted inside mask ``i``'s box.
    """
    y0, y1, x0, x1 = (int(v) for v in boxes[i])
    a_i = int(area[i])
    lo, hi = np.minimum(area, a_i), np.maximum(area, a_i)
    cand = alive & (lo >= iou_threshold * hi * (1.0 - 1e-9))  # never drops a passing pair
    cand &= (boxes[:, 0] < y1) & (boxes[:, 1] > y0) & (boxes[:, 2] < x1) & (boxes[:, 3] > x0)
    js = np.flatnonzero(cand)
    if js.size == 0 or a_i == 0:
        return js[:0]
    crop_i = masks[i, y0:y1, x0:x1]
    inter = np.empty(js.size, dtype=np.int64)
    for s in range(0, js.size, _CANDIDATE_CHUNK):  # bounded memory: chunk × box pixels
        part = js[s : s + _CANDIDATE_CHUNK]
        inter[s : s + part.size] = (masks[part, y0:y1, x0:x1] & crop_i).sum(axis=(1, 2))
    union = (area[js] + a_i - inter).astype(np.float64)
    return js[inter / union > iou_threshold]  # union > 0: a_i > 0


def merge_texts(
    groups: Sequence[Sequence[int]],
    texts_per_mask: Sequence[Sequence[str]],
    sources_per_mask: Sequence[Sequence[str]],
) -> list[tuple[list[str], list[str]]]:
    """Merge the texts (and their parallel sources) of each NMS group into its kept mask.

    Texts are deduplicated by exact string, keeping the first occurrence (the kept mask's own
    texts first, then the suppressed masks' in group order) and the source of that occurrence.

    Returns:
        one ``(texts, sources)`` pair per group, the two lists of equal length.
    """
    if len(texts_per_mask) != len(sources_per_mask):
        raise ValueError("texts_per_mask and sources_per_mask must have one entry per mask")
    merged: list[tuple[list[str], list[str]]] = []
    for group in groups:
        texts: list[str] = []
        sources: list[str] = []
        seen: set[str] = set()
        for idx in group:
            if len(texts_per_mask[idx]) != len(sources_per_mask[idx]):
                raise ValueError(f"mask {idx}: texts and sources differ in length")
            for text, source in zip(texts_per_mask[idx], sources_per_mask[idx], strict=True):
                if text not in seen:
                    seen.add(text)
                    texts.append(text)
                    sources.append(source)
        merged.append((texts, sources))
    return merged
