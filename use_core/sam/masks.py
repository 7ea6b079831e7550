"""Boxes → masks with SAM box prompts (paper §3.1 "Mask Generation with Box Prompt", §4.1).

For each box SAM predicts three candidate masks; the one with the highest stability score is
kept, then dropped if its predicted IoU or stability is under the thresholds (0.6 and 0.6 in
the paper; ``None`` turns a filter off), then cleaned of small holes and islands. A box
covering more than ``whole_image_ratio`` of the image becomes the whole-image mask without
calling SAM (paper: "greater than 90% of the image size"), with stability and
predicted IoU set to 1.0.

Efficiency: one image embedding serves all boxes of an image (:func:`embed_image`, which the
caller may cache and pass back); boxes go through the decoder in chunks of ``box_chunk``, with
SAM's mask decoder rewritten for many prompts on one image
(:func:`use_core.sam.decoder.decode_prompts`: same weights and outputs up to float
rounding, ~5× less CPU per box than ``sam.mask_decoder`` with MobileSAM); the
candidates are ranked on SAM's 256×256 low-resolution logits (stability as in SAM's automatic
mask generator: ``calculate_stability_score`` at the mask threshold with offset 1.0) and only
the winner is upsampled, with SAM's own ``postprocess_masks`` (pad-crop-resize) — unless
other candidates are within ``REFINE_MARGIN`` of it: such near-ties (three almost identical
masks of a solid object, whose low-res ranking is noise) are upsampled too and decided at
full resolution, so the choice agrees with SAM's full-resolution ranking. The reported
stability is always the full-resolution one. Decoding and this per-box finishing (ranking,
upsampling, thresholds, hole and island cleaning) each run split over torch's threads, whole
boxes per thread (:func:`use_core.runtime.run_split`).

Works with ``segment_anything`` and ``mobile_sam`` models (same API) or their ``SamPredictor``.
Boxes are xyxy in pixels of the input image; images are HWC uint8 RGB.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from segment_anything.utils.amg import calculate_stability_score, remove_small_regions
from segment_anything.utils.transforms import ResizeLongestSide

from use_core.runtime import run_split
from use_core.sam.decoder import decode_prompts

STABILITY_OFFSET = 1.0  # segment-anything's default stability_score_offset
# Candidates whose low-res stability is this close to the best are re-ranked at full size.
REFINE_MARGIN = 0.02
_UPSAMPLE_CHUNK = 16  # masks upsampled at once (bounds memory: 16 × H × W float32, twice)


@dataclass
class ImageEmbedding:
    """SAM image-encoder output for one image, reusable across prompt batches.

    ``features``: (1, C, h, w) float tensor (C = 256, h = w = 64 for SAM);
    ``input_size``: (H', W') of the image resized so its long side is the encoder size;
    ``original_size``: (H, W) of the input image.
    """

    features: torch.Tensor
    input_size: tuple[int, int]
    original_size: tuple[int, int]


@dataclass
class MaskResult:
    """Masks for the accepted boxes of one image, in input-box order.

    ``masks``: (K, H, W) bool; ``box_index``: (K,) int64 index of the input box of each mask;
    ``stability`` / ``pred_iou``: (K,) float32 SAM scores of the chosen candidate (1.0 for
    whole-image boxes); ``candidate``: (K,) int64 index (0-2) of the chosen multimask output
    (-1 for whole-image boxes); ``whole_image``: (K,) bool; ``rejected``: sorted
    ``(box_index, reason)`` for every input box that gave no mask; ``embedding``: the image
    embedding used (``None`` if SAM was not needed).
    """

    masks: np.ndarray
    box_index: np.ndarray
    stability: np.ndarray
    pred_iou: np.ndarray
    candidate: np.ndarray
    whole_image: np.ndarray
    rejected: list[tuple[int, str]] = field(default_factory=list)
    embedding: ImageEmbedding | None = None


def _as_sam(predictor_or_sam: Any) -> Any:
    """The ``Sam`` module behind a model or a ``SamPredictor``."""
    return getattr(predictor_or_sam, "model", predictor_or_sam)


def _check_image(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be HWC uint8 RGB, got {image.shape} {image.dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image is empty: {image.shape}")


@torch.inference_mode()
def embed_image(predictor_or_sam: Any, image: np.ndarray) -> ImageEmbedding:
    """Run SAM's image encoder once on an HWC uint8 RGB image."""
    _check_image(image)
    sam = _as_sam(predictor_or_sam)
    resized = ResizeLongestSide(sam.image_encoder.img_size).apply_image(image)
    tensor = torch.as_tensor(resized, device=sam.device).permute(2, 0, 1).contiguous()[None]
    features = sam.image_encoder(sam.preprocess(tensor.float()))
    return ImageEmbedding(
        features=features,
        input_size=(int(resized.shape[0]), int(resized.shape[1])),
        original_size=(int(image.shape[0]), int(image.shape[1])),
    )


def sanitize_boxes(
    boxes_xyxy: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Clip (N, 4) xyxy boxes to the image; return (clipped (N, 4) float64, rejections)."""
    boxes = np.asarray(boxes_xyxy, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be (N, 4) xyxy, got shape {boxes.shape}")
    rejected: list[tuple[int, str]] = []
    clipped = boxes.copy()
    finite = np.all(np.isfinite(boxes), axis=1)
    clipped[~finite] = 0.0
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, width)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, height)
    for i, box in enumerate(boxes):
        if not finite[i]:
            rejected.append((i, f"non-finite box coordinates {box.tolist()}"))
        elif box[2] <= box[0] or box[3] <= box[1]:
            rejected.append((i, f"degenerate box (x1 <= x0 or y1 <= y0) {box.tolist()}"))
        elif clipped[i, 2] <= clipped[i, 0] or clipped[i, 3] <= clipped[i, 1]:
            rejected.append((i, f"box outside the {width}x{height} image {box.tolist()}"))
    return clipped, rejected


def _clean(mask: np.ndarray, min_region_area: int) -> np.ndarray:
    """Fill holes and drop islands smaller than ``min_region_area`` pixels (SAM's AMG way)."""
    if min_region_area <= 0:
        return mask
    mask, _ = remove_small_regions(mask, min_region_area, mode="holes")
    mask, _ = remove_small_regions(mask, min_region_area, mode="islands")
    return mask


def _upsample(sam: Any, emb: ImageEmbedding, low_res: torch.Tensor) -> torch.Tensor:
    """(n, 256, 256) low-res logits → (n, H, W) logits, SAM's pad-crop-resize, bounded chunks."""
    parts = [
        sam.postprocess_masks(
            low_res[s : s + _UPSAMPLE_CHUNK, None], emb.input_size, emb.original_size
        )[:, 0]
        for s in range(0, low_res.shape[0], _UPSAMPLE_CHUNK)
    ]
    return torch.cat(parts) if parts else low_res.new_zeros((0, *emb.original_size))


@dataclass
class _BoxOutcome:
    """One prompted box: its chosen candidate's scores, and its mask or why there is none."""

    stability: float
    pred_iou: float
    candidate: int
    mask: np.ndarray | None = None
    reason: str | None = None


def _finish_box(
    sam: Any,
    emb: ImageEmbedding,
    low_res: torch.Tensor,
    iou_pred: torch.Tensor,
    pred_iou_threshold: float | None,
    stability_threshold: float | None,
    min_region_area: int,
) -> _BoxOutcome:
    """Best-stability candidate of one box (``low_res`` (3, 256, 256), ``iou_pred`` (3,)),
    thresholded and cleaned.

    The three candidates are ranked on their 256×256 logits; those within
    :data:`REFINE_MARGIN` of the best (near-ties, e.g. three almost identical masks of a solid
    object) are upsampled and ranked again at full resolution, as SAM itself ranks them. Other
    candidates are never upsampled. Stability is reported at full resolution. A threshold of
    ``None`` does not filter on that score.
    """
    # an all-background candidate has stability 0/0: count it as 0
    low_stab = calculate_stability_score(low_res, sam.mask_threshold, STABILITY_OFFSET)
    low_stab = low_stab.nan_to_num(0.0)
    near = torch.nonzero(low_stab >= low_stab.max() - REFINE_MARGIN)[:, 0]
    full = _upsample(sam, emb, low_res[near])  # (n, H, W)
    full_stab = calculate_stability_score(full, sam.mask_threshold, STABILITY_OFFSET)
    best = int(full_stab.nan_to_num(0.0).float().argmax())  # first index on ties
    cand = int(near[best])
    out = _BoxOutcome(float(full_stab[best].nan_to_num(0.0)), float(iou_pred[cand]), cand)
    if pred_iou_threshold is not None and out.pred_iou < pred_iou_threshold:
        out.reason = f"predicted IoU {out.pred_iou:.3f} < {pred_iou_threshold}"
    elif stability_threshold is not None and out.stability < stability_threshold:
        out.reason = f"stability {out.stability:.3f} < {stability_threshold}"
    else:
        mask = _clean((full[best] > sam.mask_threshold).cpu().numpy(), min_region_area)
        if mask.any():
            out.mask = mask
        else:
            out.reason = "empty mask after post-processing"
    return out


@torch.inference_mode()
def _masks_for_chunk(
    sam: Any, emb: ImageEmbedding, boxes: np.ndarray, **thresholds: Any
) -> list[_BoxOutcome]:
    """Decode a chunk of boxes in one batch, then finish each box (:func:`_finish_box`); on a
    CPU both phases run split over torch's threads (:func:`use_core.runtime.run_split`)."""
    transform = ResizeLongestSide(sam.image_encoder.img_size)
    box_t = torch.as_tensor(
        transform.apply_boxes(boxes, emb.original_size), dtype=torch.float32, device=sam.device
    )
    sparse, dense = sam.prompt_encoder(points=None, boxes=box_t, masks=None)
    # (B, 3, 256, 256) logits, (B, 3): SAM's decoder without per-prompt image copies
    low_res, iou_pred = decode_prompts(sam, emb.features, sparse, dense)
    outcomes: list[_BoxOutcome | None] = [None] * len(boxes)

    def finish(start: int, stop: int) -> None:
        for k in range(start, stop):
            outcomes[k] = _finish_box(sam, emb, low_res[k], iou_pred[k], **thresholds)

    run_split(finish, len(boxes), device=low_res.device)
    return [o for o in outcomes if o is not None]


def masks_from_boxes(
    predictor_or_sam: Any,
    image: np.ndarray,
    boxes_xyxy: np.ndarray,
    *,
    pred_iou_threshold: float | None = 0.6,
    stability_threshold: float | None = 0.6,
    whole_image_ratio: float = 0.9,
    min_region_area: int = 64,
    box_chunk: int = 32,
    image_embedding: ImageEmbedding | None = None,
) -> MaskResult:
    """One mask per usable box prompt.

    Args:
        predictor_or_sam: a SAM/MobileSAM ``Sam`` or ``SamPredictor``; may be ``None`` when
            every usable box is a whole-image box.
        image: (H, W, 3) uint8 RGB.
        boxes_xyxy: (N, 4) float, pixel coordinates of ``image``. Boxes partly outside are
            clipped; non-finite, inverted, zero-size and fully outside boxes are rejected.
        image_embedding: a cached :func:`embed_image` result for this image (skips the encoder).
    Returns:
        :class:`MaskResult`; every input box is either in ``box_index`` or in ``rejected``.
    """
    _check_image(image)
    if box_chunk < 1:
        raise ValueError(f"box_chunk must be >= 1, got {box_chunk}")
    h, w = image.shape[:2]
    clipped, rejected = sanitize_boxes(boxes_xyxy, h, w)
    bad = {i for i, _ in rejected}
    usable = [i for i in range(len(clipped)) if i not in bad]
    box_area = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    whole = [i for i in usable if box_area[i] > whole_image_ratio * h * w]
    prompted = [i for i in usable if box_area[i] <= whole_image_ratio * h * w]

    masks: dict[int, np.ndarray] = {i: np.ones((h, w), dtype=bool) for i in whole}
    scores: dict[int, tuple[float, float, int]] = {i: (1.0, 1.0, -1) for i in whole}
    emb = image_embedding
    if prompted:
        if predictor_or_sam is None:
            raise ValueError(f"{len(prompted)} boxes need SAM but no model was given")
        sam = _as_sam(predictor_or_sam)
        if emb is None:
            emb = embed_image(sam, image)
        elif emb.original_size != (h, w):
            raise ValueError(f"image_embedding is for {emb.original_size}, image is {(h, w)}")
        thresholds = {
            "pred_iou_threshold": pred_iou_threshold,
            "stability_threshold": stability_threshold,
            "min_region_area": min_region_area,
        }
        for start in range(0, len(prompted), box_chunk):
            idx = prompted[start : start + box_chunk]
            for i, box in zip(
                idx, _masks_for_chunk(sam, emb, clipped[idx], **thresholds), strict=True
            ):
                if box.mask is None:
                    rejected.append((i, str(box.reason)))
                else:
                    masks[i], scores[i] = box.mask, (box.stability, box.pred_iou, box.candidate)

    order = sorted(masks)
    whole_set = set(whole)
    return MaskResult(
        masks=np.stack([masks[i] for i in order]) if order else np.zeros((0, h, w), dtype=bool),
        box_index=np.asarray(order, dtype=np.int64),
        stability=np.asarray([scores[i][0] for i in order], dtype=np.float32),
        pred_iou=np.asarray([scores[i][1] for i in order], dtype=np.float32),
        candidate=np.asarray([scores[i][2] for i in order], dtype=np.int64),
        whole_image=np.asarray([i in whole_set for i in order], dtype=bool),
        rejected=sorted(rejected),
        embedding=emb,
    )
