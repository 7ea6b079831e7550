"""Class-agnostic mask proposals (paper §4.3): SAM on a regular point grid, filtered and merged.

:func:`generate_proposals` does what segment-anything's ``SamAutomaticMaskGenerator`` does for
one crop layer, in an order that avoids most of its cost:

1. **one image embedding** (:func:`use_core.sam.masks.embed_image`), or a precomputed one
   passed in (the masks stage and the ``segment`` command share it);
2. the ``points_per_side²`` grid points go through the mask decoder in batches of
   ``points_per_batch``, three candidates per point (``multimask_output``), **coarse to fine**
   (:func:`point_rounds`): a point lying inside the smallest confident candidate of an already
   decoded point is skipped — it would give the same masks again. With MobileSAM on a CPU the
   decoder (~0.1–0.3 s per point) is ~85 % of the stock generator's time, so the number of
   decoded points is what sets the speed (``skip_covered=False`` decodes every point). The
   decoder is :func:`use_core.sam.decoder.decode_prompts` (SAM's decoder rewritten so
   the image embedding is not copied and projected once per point; same outputs up to float
   rounding, ~5× less CPU per point with MobileSAM);
3. candidates are filtered on SAM's **256×256 low-resolution logits**, cropped to the unpadded
   image area: predicted IoU ≥ ``pred_iou_thresh``, then stability (``calculate_stability_score``
   at the mask threshold with offset 1.0) ≥ ``stability_thresh``; empty candidates are dropped;
4. **box NMS** (``torchvision.ops.nms`` on predicted IoU, IoU ``box_nms_iou``) on boxes measured
   on the low-resolution masks and scaled to image pixels — cheap, before any upsampling;
5. only the survivors are upsampled to the image size with ``Sam.postprocess_masks`` (the stock
   generator upsamples every candidate through a 1024×1024 intermediate before filtering);
6. the project's exact :func:`use_core.ops.nms.mask_nms` (IoU ``mask_nms_iou``) merges
   the remaining duplicates.

Thresholds default to SAM's automatic-mask-generator values (predicted IoU 0.88, stability 0.95,
box NMS 0.7): proposals for *evaluation* should be confident masks, as in the paper's use of
SAM's generator. The curation stage's lower values (``masks`` section of params.yaml, 0.6 / 0.6,
paper §4.1) are for box prompts, where the box already says where the object is.

Other proposal sources (a user's masks, ground-truth regions) are in
:mod:`use_core.infer.given_masks`. Images are HWC uint8 RGB; masks ``(N, H, W)`` bool; points
``(x, y)`` pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torchvision
from pycocotools import mask as mask_utils
from segment_anything.utils.amg import (
    batched_mask_to_box,
    build_point_grid,
    calculate_stability_score,
)
from segment_anything.utils.transforms import ResizeLongestSide
from tqdm import tqdm

from use_core.ops.nms import mask_nms
from use_core.ops.rle import encode_masks
from use_core.sam.decoder import decode_prompts
from use_core.sam.masks import STABILITY_OFFSET, ImageEmbedding, embed_image

SAM_PRED_IOU_THRESH = 0.88  # segment-anything SamAutomaticMaskGenerator default
SAM_STABILITY_THRESH = 0.95  # segment-anything SamAutomaticMaskGenerator default
SAM_BOX_NMS_IOU = 0.7  # segment-anything SamAutomaticMaskGenerator default
LOW_RES_UPSAMPLE_CHUNK = 32  # masks per postprocess_masks call (32 × 1024² float32 = 128 MB)


@dataclass
class Proposals:
    """Class-agnostic masks of one image.

    ``masks``: (N, H, W) bool, sorted by ``scores`` (highest first);
    ``scores``: (N,) float32 — SAM's predicted IoU for SAM proposals, 1.0 for user/oracle masks;
    ``stability``: (N,) float32 SAM stability score (1.0 for user/oracle masks);
    ``points``: (N, 2) float32 ``(x, y)`` pixel of the prompt point (NaN when there was none);
    ``source``: ``"sam"``, ``"user"`` or ``"oracle"``;
    ``rejected``: ``(index, reason)`` for input masks that were not kept (user masks only);
    ``stats``: candidate counts after each filtering step (SAM only).
    """

    masks: np.ndarray
    scores: np.ndarray
    stability: np.ndarray
    points: np.ndarray
    source: str
    rejected: list[tuple[int, str]] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.masks.shape[0])


def proposals_from_masks(
    masks: np.ndarray, source: str, rejected: list[tuple[int, str]] | None = None
) -> Proposals:
    """Wrap given ``(N, H, W)`` bool masks (score 1.0, no prompt point) as :class:`Proposals`."""
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {masks.shape}")
    n = masks.shape[0]
    return Proposals(
        masks=masks,
        scores=np.ones(n, dtype=np.float32),
        stability=np.ones(n, dtype=np.float32),
        points=np.full((n, 2), np.nan, dtype=np.float32),
        source=source,
        rejected=list(rejected or []),
    )


def _check_image(image: np.ndarray) -> tuple[int, int]:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be HWC uint8 RGB, got {image.shape} {image.dtype}")
    return int(image.shape[0]), int(image.shape[1])


@torch.inference_mode()
def _decode_points(
    sam: Any, emb: ImageEmbedding, points_xy: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """Three candidates per point: low-res logits (3B, 256, 256) and predicted IoU (3B,)."""
    transform = ResizeLongestSide(sam.image_encoder.img_size)
    coords = transform.apply_coords(points_xy, emb.original_size)
    coords_t = torch.as_tensor(coords, dtype=torch.float32, device=sam.device)[:, None, :]
    labels_t = torch.ones(coords_t.shape[0], 1, dtype=torch.int, device=sam.device)
    sparse, dense = sam.prompt_encoder(points=(coords_t, labels_t), boxes=None, masks=None)
    low_res, iou_pred = decode_prompts(sam, emb.features, sparse, dense)
    return low_res.flatten(0, 1), iou_pred.flatten(0, 1)


@torch.inference_mode()
def generate_proposals(
    sam: Any,
    image: np.ndarray,
    points_per_side: int = 16,
    *,
    pred_iou_thresh: float = SAM_PRED_IOU_THRESH,
    stability_thresh: float = SAM_STABILITY_THRESH,
    box_nms_iou: float = SAM_BOX_NMS_IOU,
    mask_nms_iou: float = 0.7,
    points_per_batch: int = 64,
    skip_covered: bool = True,
    embedding: ImageEmbedding | None = None,
    show_progress: bool = False,
) -> Proposals:
    """SAM grid-point proposals for one image (algorithm in the module docstring).

    Arguments:
      sam: a ``segment_anything`` / ``mobile_sam`` ``Sam`` (or a ``SamPredictor``).
      image: (H, W, 3) uint8 RGB.
      points_per_side: the grid has ``points_per_side²`` points, centred in equal cells.
      pred_iou_thresh, stability_thresh: keep candidates with predicted IoU ≥ and stability
        ≥ these (measured on the low-resolution logits).
      box_nms_iou: IoU of the box NMS run before upsampling (1.0 disables it).
      mask_nms_iou: IoU of the exact mask NMS run after upsampling (paper §4.1: 0.7).
      points_per_batch: grid points per mask-decoder call (memory: 3 × 256² floats each).
      skip_covered: decode the grid coarse to fine (:func:`point_rounds`) and skip a point that
        lies inside the smallest confident candidate (predicted IoU ≥ ``pred_iou_thresh``) of an
        already decoded point (``False``: decode every point, like SAM's generator).
      embedding: a precomputed :func:`use_core.sam.masks.embed_image` result for ``image``.
      show_progress: a tqdm bar over decoder batches.
    Returns:
      :class:`Proposals` (``source="sam"``), masks sorted by predicted IoU.
    """
    h, w = _check_image(image)
    if points_per_side < 1 or points_per_batch < 1:
        raise ValueError("points_per_side and points_per_batch must be >= 1")
    sam = getattr(sam, "model", sam)
    if embedding is None:
        embedding = embed_image(sam, image)
    elif embedding.original_size != (h, w):
        raise ValueError(f"embedding is for an image of {embedding.original_size}, not {(h, w)}")
    points = build_point_grid(points_per_side) * np.array([[w, h]], dtype=np.float64)
    rounds = point_rounds(points_per_side) if skip_covered else [np.arange(len(points))]
    covered: torch.Tensor | None = None  # (valid_h, valid_w) bool on the low-res grid
    kept_logits: list[torch.Tensor] = []
    kept_iou: list[torch.Tensor] = []
    kept_stab: list[torch.Tensor] = []
    kept_point: list[torch.Tensor] = []
    stats = {"points": len(points), "decoded": 0, "candidates": 0, "pred_iou": 0, "stability": 0}
    bar = tqdm(total=len(points), desc="proposals", unit="pt", disable=not show_progress)
    for round_idx in rounds:
        if covered is not None:
            cy = (points[round_idx, 1] * covered.shape[0] / h).astype(np.int64)
            cx = (points[round_idx, 0] * covered.shape[1] / w).astype(np.int64)
            skipped = covered[cy, cx].numpy()
            bar.update(int(skipped.sum()))
            round_idx = round_idx[~skipped]
        for start in range(0, len(round_idx), points_per_batch):
            idx = round_idx[start : start + points_per_batch]
            logits, iou = _decode_points(sam, embedding, points[idx])
            valid_h, valid_w = _valid_low_res(sam, embedding, logits.shape[-1])
            point_idx = torch.as_tensor(idx).repeat_interleave(3)
            stats["decoded"] += len(idx)
            stats["candidates"] += int(logits.shape[0])
            keep = iou >= pred_iou_thresh
            logits, iou, point_idx = logits[keep], iou[keep], point_idx[keep]
            stats["pred_iou"] += int(keep.sum())
            # The low-res logits cover the padded square encoder input: score the image only.
            valid = logits[:, :valid_h, :valid_w] > sam.mask_threshold
            stab = calculate_stability_score(
                logits[:, :valid_h, :valid_w], sam.mask_threshold, STABILITY_OFFSET
            )
            if skip_covered:
                covered = _cover_finest(covered, valid, point_idx)
            keep = (stab >= stability_thresh) & valid.flatten(1).any(1)
            stats["stability"] += int(keep.sum())
            kept_logits.append(logits[keep].clone())
            kept_iou.append(iou[keep])
            kept_stab.append(stab[keep])
            kept_point.append(point_idx[keep])
            bar.update(len(idx))
    bar.close()
    logits = torch.cat(kept_logits)
    iou = torch.cat(kept_iou).float()
    stab = torch.cat(kept_stab).float()
    point_idx = torch.cat(kept_point)
    valid_h, valid_w = _valid_low_res(sam, embedding, logits.shape[-1])

    # Box NMS on low-res boxes (xyxy, scaled to image pixels): a cheap first cut.
    boxes = batched_mask_to_box(logits[:, :valid_h, :valid_w] > sam.mask_threshold).float()
    boxes = boxes * torch.tensor([w / valid_w, h / valid_h] * 2)
    boxes[:, 2:] += torch.tensor([w / valid_w, h / valid_h])  # last pixel → its far edge
    keep_box = torchvision.ops.nms(boxes, iou, box_nms_iou) if len(boxes) else torch.zeros(0).long()
    stats["box_nms"] = int(keep_box.numel())
    logits, iou, stab, point_idx = (
        logits[keep_box],
        iou[keep_box],
        stab[keep_box],
        point_idx[keep_box],
    )

    masks = _upsample(sam, logits, embedding)
    nonempty = masks.reshape(len(masks), -1).any(1)
    keep_t = torch.from_numpy(nonempty)
    masks, iou, stab, point_idx = masks[nonempty], iou[keep_t], stab[keep_t], point_idx[keep_t]
    groups = mask_nms(masks, iou.numpy(), mask_nms_iou)
    order = np.asarray([g[0] for g in groups], dtype=np.int64)  # kept masks, by score
    stats["mask_nms"] = int(order.size)
    return Proposals(
        masks=masks[order],
        scores=iou.numpy()[order].astype(np.float32),
        stability=stab.numpy()[order].astype(np.float32),
        points=points[point_idx.numpy()[order]].astype(np.float32).reshape(-1, 2),
        source="sam",
        stats=stats,
    )


def point_rounds(points_per_side: int, coarse_levels: int = 2) -> list[np.ndarray]:
    """Indices into ``build_point_grid(points_per_side)`` in coarse-to-fine rounds.

    Grid position ``i`` (0-based, per axis) has level ``min(trailing_zeros(i + 2**(L-1)), L)``
    with ``L = coarse_levels``; a point's level is the smaller of its two axes' levels. Round 0
    holds the highest level (every 4th point per axis with the default, starting at the 3rd),
    the last round level 0. Every point is in exactly one round.
    """
    k = np.arange(points_per_side) + 2 ** max(coarse_levels - 1, 0)
    axis_level = np.minimum(np.log2(k & -k).astype(np.int64), coarse_levels)
    level = np.minimum(axis_level[:, None], axis_level[None, :]).reshape(-1)  # row = y
    rounds = [np.flatnonzero(level == lv) for lv in range(int(level.max()), -1, -1)]
    return [r for r in rounds if r.size]


def _cover_finest(
    covered: torch.Tensor | None, masks: torch.Tensor, point_idx: torch.Tensor
) -> torch.Tensor:
    """OR into ``covered`` the smallest of each point's low-res candidate masks ``(K, h, w)``.

    ``point_idx`` (K,) names the point of each candidate; points without candidates add nothing.
    """
    if covered is None:
        covered = torch.zeros(masks.shape[1:], dtype=torch.bool)
    if masks.shape[0] == 0:
        return covered
    area = masks.flatten(1).sum(1)
    for p in torch.unique(point_idx).tolist():
        rows = (point_idx == p).nonzero(as_tuple=True)[0]
        covered |= masks[rows[area[rows].argmin()]].cpu()
    return covered


def _valid_low_res(sam: Any, emb: ImageEmbedding, low_res_side: int) -> tuple[int, int]:
    """(h, w) of the low-res logits that cover the image (the rest is the encoder's padding)."""
    ratio = low_res_side / sam.image_encoder.img_size
    return (
        max(1, int(np.ceil(emb.input_size[0] * ratio))),
        max(1, int(np.ceil(emb.input_size[1] * ratio))),
    )


@torch.inference_mode()
def _upsample(sam: Any, logits: torch.Tensor, emb: ImageEmbedding) -> np.ndarray:
    """Low-res logits (K, 256, 256) → (K, H, W) bool masks via ``Sam.postprocess_masks``."""
    h, w = emb.original_size
    out = np.zeros((logits.shape[0], h, w), dtype=bool)
    for start in range(0, logits.shape[0], LOW_RES_UPSAMPLE_CHUNK):
        chunk = logits[start : start + LOW_RES_UPSAMPLE_CHUNK, None]
        full = sam.postprocess_masks(chunk, emb.input_size, emb.original_size)[:, 0]
        out[start : start + chunk.shape[0]] = (full > sam.mask_threshold).cpu().numpy()
    return out


# ------------------------------------------------------------------ quality


def best_iou_per_gt(masks: np.ndarray, gt_masks: np.ndarray) -> np.ndarray:
    """``(G,)`` float64: for each ground-truth mask, its best IoU with any proposal (0 if none).

    ``masks`` (N, H, W) and ``gt_masks`` (G, H, W) bool, same size (pycocotools ``iou``).
    """
    masks = np.asarray(masks, dtype=bool)
    gt_masks = np.asarray(gt_masks, dtype=bool)
    if masks.ndim != 3 or gt_masks.ndim != 3 or masks.shape[1:] != gt_masks.shape[1:]:
        raise ValueError(
            f"need (N, H, W) and (G, H, W) of one size: {masks.shape}, {gt_masks.shape}"
        )
    if gt_masks.shape[0] == 0:
        return np.zeros(0, dtype=np.float64)
    if masks.shape[0] == 0:
        return np.zeros(gt_masks.shape[0], dtype=np.float64)
    dt = [dict(r, counts=r["counts"].encode()) for r in encode_masks(masks)]
    gt = [dict(r, counts=r["counts"].encode()) for r in encode_masks(gt_masks)]
    iou = np.asarray(mask_utils.iou(dt, gt, [0] * len(gt)), dtype=np.float64)
    return iou.reshape(len(dt), len(gt)).max(axis=0)


def proposal_recall(masks: np.ndarray, gt_masks: np.ndarray, iou: float = 0.5) -> float:
    """Fraction of ground-truth masks matched by some proposal at IoU ≥ ``iou`` (NaN if no GT)."""
    best = best_iou_per_gt(masks, gt_masks)
    return float((best >= iou).mean()) if best.size else float("nan")
