"""Mask non-maximum suppression with text merging (paper §3.1, IoU 0.7 in §4.1).

Different descriptions often point at the same region; NMS keeps one mask per region and the
texts of the masks it suppressed are merged into the kept one.

IoU is exact (pixel counts). :func:`mask_nms` reads the masks once, bit-packing them a few at a
time (:func:`pack_crops`) and keeping only each mask's bounding box, rounded out to 64-pixel
words. Greedy NMS then counts only the pairs it needs: a kept mask against the still-alive masks
that can pass the threshold — bounding boxes intersect, min(area) / max(area) > threshold and
the boxes' overlap is large enough, since IoU can be no larger. For each kept mask, its crop is
drawn on a zeroed packed canvas and all those candidates' crops are ANDed with the canvas at
their positions and popcounted (``np.bitwise_count``) in one vectorised step, 64 pixels per
word. Memory beyond the input: the crops and their positions (at most 12 bytes per 64 pixels of
each mask's box), an (N, N) bool matrix of candidate pairs, one packing chunk and one bounded
step of candidate words.
:func:`mask_iou_matrix` gives all pairs at once: one matrix product of the flattened masks,
accumulated over pixel chunks in 64-bit integers (int8 with int32 accumulation through
``torch._int_mm`` on CPU, float32 — exact below 2**24 per chunk — elsewhere).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

# Pixels per matmul chunk: N x chunk int8/float32 (64/256 MB at N = 1,000); < 2**24 keeps
# float32 counts exact.
_PIXEL_CHUNK = 65_536
# Masks bit-packed per step in pack_crops: the transient buffer is chunk × H × W / 8 bytes.
_PACK_CHUNK = 32
# Crop words ANDed per vectorised step in mask_nms (about 40 bytes of temporaries each).
_GATHER_BUDGET = 262_144


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
    strictly greater than ``iou_threshold``. An empty mask has IoU 0 with every mask.

    Args:
        masks: (N, H, W) bool (other dtypes: nonzero is foreground).
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
    order = np.argsort(-scores, kind="stable")
    if masks.shape[1] * masks.shape[2] == 0:  # no pixels: every mask is empty, IoU 0
        return [[int(i)] for i in order]
    packed = pack_crops(masks)
    cand = _candidate_pairs(packed.boxes, packed.area, iou_threshold)
    canvas = np.zeros(packed.image_words[0] * packed.image_words[1], dtype=np.uint64)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    alive = np.ones(n, dtype=bool)
    groups: list[list[int]] = []
    for i in order:
        if not alive[i]:
            continue
        alive[i] = False
        js = np.flatnonzero(cand[i] & alive)
        if js.size:
            js = js[_iou_above(int(i), js, packed, canvas, iou_threshold)]
            js = js[np.argsort(rank[js])]
            alive[js] = False
        groups.append([int(i), *js.tolist()])
    return groups


@dataclass(frozen=True)
class PackedCrops:
    """Bit-packed bounding-box crops of N masks, stored back to back.

    Pixel x of a row is bit ``x % 8`` of byte ``x // 8`` (``np.packbits`` little bit order),
    the bytes viewed as uint64 words, rows padded with 0 bits to whole words. Only popcounts
    and bitwise AND/OR are taken on the words, so the machine's byte order does not matter.

    Attributes:
        words: (total,) uint64, the crops back to back, each row-major.
        positions: (total,) int32: where each word sits in the (H, ceil(W / 64)) packed image,
            ``y * ceil(W / 64) + w``.
        offsets: (N,) int64 start of each crop in ``words``; sizes: (N,) int64 its length.
        word_boxes: (N, 4) int64 ``[y0, y1, w0, w1)``: rows and 64-pixel words of each crop.
        boxes: (N, 4) int64 half-open ``[y0, y1, x0, x1)`` pixel boxes (empty mask: all 0).
        area: (N,) int64 set pixels per mask.
        image_words: ``(H, ceil(W / 64))``.
    """

    words: np.ndarray
    positions: np.ndarray
    offsets: np.ndarray
    sizes: np.ndarray
    word_boxes: np.ndarray
    boxes: np.ndarray
    area: np.ndarray
    image_words: tuple[int, int]

    def crop(self, i: int) -> np.ndarray:
        """(y1 - y0, w1 - w0) uint64 view of mask ``i``'s crop."""
        y0, y1, w0, w1 = (int(v) for v in self.word_boxes[i])
        start = int(self.offsets[i])
        return self.words[start : start + (y1 - y0) * (w1 - w0)].reshape(y1 - y0, w1 - w0)


def pack_crops(masks: np.ndarray) -> PackedCrops:
    """Bit-pack each mask's bounding box, and measure boxes and areas, in one pass.

    Masks are packed ``_PACK_CHUNK`` at a time (a small transient buffer) and only the box of
    each is kept: rows ``y0:y1`` and the 64-pixel words ``x0 // 64 : ceil(x1 / 64)``.

    Args:
        masks: (N, H, W), nonzero = set.
    """
    n, h, w = masks.shape
    n_words = -(-w // 64)
    boxes = np.zeros((n, 4), dtype=np.int64)
    area = np.zeros(n, dtype=np.int64)
    if h * n_words >= 2**31:
        raise ValueError(f"masks of {h}x{w} pixels are too large to pack")
    crops: list[np.ndarray] = [np.zeros(0, dtype=np.uint64)]
    where: list[np.ndarray] = [np.zeros(0, dtype=np.int32)]
    grid = np.arange(h * n_words, dtype=np.int32).reshape(h, n_words)
    for start in range(0, n, _PACK_CHUNK):
        chunk = masks[start : start + _PACK_CHUNK]
        bits = np.packbits(chunk if chunk.dtype == bool else chunk != 0, axis=2, bitorder="little")
        if bits.shape[2] != n_words * 8:
            padded = np.zeros((*bits.shape[:2], n_words * 8), dtype=np.uint8)
            padded[:, :, : bits.shape[2]] = bits
            bits = padded
        words = bits.view(np.uint64)  # (chunk, H, n_words)
        ones = np.bitwise_count(words)
        row_count = ones[:, :, 0].astype(np.int32)  # (chunk, H)
        for k in range(1, n_words):  # strided adds beat a reduction over a short last axis
            row_count += ones[:, :, k]
        rows = row_count > 0
        chunk_area = area[start : start + len(words)]  # views: filled in place
        chunk_area[:] = row_count.sum(axis=1)
        cols = np.unpackbits(_or_over_rows(words).view(np.uint8), axis=1, bitorder="little")
        chunk_boxes = boxes[start : start + len(words)]
        chunk_boxes[:, 0] = np.argmax(rows, axis=1)
        chunk_boxes[:, 1] = h - np.argmax(rows[:, ::-1], axis=1)
        chunk_boxes[:, 2] = np.argmax(cols, axis=1)
        chunk_boxes[:, 3] = cols.shape[1] - np.argmax(cols[:, ::-1], axis=1)  # pad bits are 0
        chunk_boxes[chunk_area == 0] = 0
        for k, (y0, y1, x0, x1) in enumerate(chunk_boxes.tolist()):
            crops.append(words[k, y0:y1, x0 // 64 : -(-x1 // 64)].flatten())  # a copy
            where.append(grid[y0:y1, x0 // 64 : -(-x1 // 64)].ravel())
    word_boxes = np.stack(
        [boxes[:, 0], boxes[:, 1], boxes[:, 2] // 64, -(-boxes[:, 3] // 64)], axis=1
    )
    sizes = (word_boxes[:, 1] - word_boxes[:, 0]) * (word_boxes[:, 3] - word_boxes[:, 2])
    return PackedCrops(
        words=np.concatenate(crops),
        positions=np.concatenate(where),
        offsets=np.cumsum(sizes) - sizes,
        sizes=sizes,
        word_boxes=word_boxes,
        boxes=boxes,
        area=area,
        image_words=(h, n_words),
    )


def _or_over_rows(words: np.ndarray) -> np.ndarray:
    """(C, H, n_words) uint64 → (C, n_words): bitwise OR of all rows, by pairwise halving."""
    acc = words
    while acc.shape[1] > 1:
        half = acc.shape[1] // 2
        folded = acc[:, :half] | acc[:, half : 2 * half]
        if acc.shape[1] % 2:
            folded[:, 0] |= acc[:, -1]
        acc = folded
    return acc[:, 0]


def _candidate_pairs(boxes: np.ndarray, area: np.ndarray, iou_threshold: float) -> np.ndarray:
    """(N, N) bool: pairs whose IoU *can* exceed ``iou_threshold`` (a superset, never misses).

    IoU = I / (a + b - I) ≤ min(a, b) / max(a, b), and with I ≤ the area of the boxes' overlap,
    IoU > t needs I > t (a + b) / (1 + t). A relative slack of 1e-9 keeps float rounding on the safe
    side. Empty masks (empty box) are candidates of nothing: their IoU is 0.
    """
    y0, y1, x0, x1 = (boxes[:, k].astype(np.int32) for k in range(4))
    floor = iou_threshold * (1.0 - 1e-9) * area  # IoU ≤ min / max area: need min ≥ t · max
    maybe = (area[:, None] >= floor[None, :]) & (area[None, :] >= floor[:, None])
    maybe &= (y0[:, None] < y1[None, :]) & (y0[None, :] < y1[:, None])  # boxes overlap
    maybe &= (x0[:, None] < x1[None, :]) & (x0[None, :] < x1[:, None])
    ii, jj = np.nonzero(np.triu(maybe, k=1))
    oh = np.minimum(y1[ii], y1[jj]) - np.maximum(y0[ii], y0[jj])
    ow = np.minimum(x1[ii], x1[jj]) - np.maximum(x0[ii], x0[jj])
    cap = np.minimum(oh * ow, np.minimum(area[ii], area[jj]))
    need = iou_threshold * (area[ii] + area[jj]).astype(np.float64) / (1.0 + iou_threshold)
    keep = cap >= need * (1.0 - 1e-9)
    cand = np.zeros_like(maybe)
    cand[ii[keep], jj[keep]] = True
    cand[jj[keep], ii[keep]] = True
    return cand


def _iou_above(
    i: int, js: np.ndarray, packed: PackedCrops, canvas: np.ndarray, iou_threshold: float
) -> np.ndarray:
    """Bool per ``js``: exact IoU of mask ``i`` with mask ``j`` > ``iou_threshold``.

    Mask ``i``'s crop is placed on ``canvas`` (a zeroed (H · ceil(W / 64),) uint64 packed
    image, zeroed again on return); the words of all ``js`` crops, back to back, are ANDed
    with the canvas at their own positions and popcounted, summed per crop — vectorised over
    pairs, in chunks of at most ``_GATHER_BUDGET`` words.
    """
    y0, y1, w0, w1 = (int(v) for v in packed.word_boxes[i])
    image = canvas.reshape(packed.image_words)
    image[y0:y1, w0:w1] = packed.crop(i)
    sizes = packed.sizes[js]
    ends = np.cumsum(sizes)
    inter = np.empty(js.size, dtype=np.int64)
    s = 0
    while s < js.size:  # chunks of whole crops, each at most the budget (or one crop)
        e = max(s + 1, int(np.searchsorted(ends, ends[s] - sizes[s] + _GATHER_BUDGET, "right")))
        size, first = sizes[s:e], packed.offsets[js[s:e]]
        starts = np.cumsum(size) - size  # of each crop in the chunk's run
        at = np.arange(int(size.sum())) + np.repeat(first - starts, size)  # indices in words
        ones = np.bitwise_count(packed.words[at] & canvas[packed.positions[at]])
        inter[s:e] = np.add.reduceat(ones, starts, dtype=np.int64)  # crops are non-empty
        s = e
    image[y0:y1, w0:w1] = 0
    union = (packed.area[js] + packed.area[i] - inter).astype(np.float64)  # > 0: non-empty
    above: np.ndarray = inter / union > iou_threshold
    return above


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
