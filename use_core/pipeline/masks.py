"""The `masks` stage (curation 3/4): SAM masks from the boxes, one image embedding per image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from use_core.config import Params
from use_core.data.plan import Shard
from use_core.data.quarantine import QuarantineRecord
from use_core.pipeline.runner import StageIO
from use_core.pipeline.shards import (
    MASKS_SCHEMA,
    ShardOutput,
    component,
    load_image,
    quarantine_record,
    run_stage,
    why,
)


def masks_shard(boxes: pd.DataFrame, params: Params, provenance: str = "") -> ShardOutput:
    """SAM masks for every box of an image through ONE image embedding (batched prompts)."""
    from use_core.ops.rle import encode_mask
    from use_core.sam.masks import masks_from_boxes

    root = Path(params.data.root)
    cfg = params.masks
    rows: list[dict[str, Any]] = []
    bad: list[QuarantineRecord] = []
    counters = {"boxes": len(boxes), "masks": 0, "rejected": 0, "whole_image": 0}
    sam = None
    for image_id, group in boxes.groupby("image_id", sort=True):
        first = group.iloc[0]
        try:
            image = load_image(root / first.image_path, params)
        except Exception as exc:  # noqa: BLE001
            bad.append(
                quarantine_record("masks", str(image_id), first.image_path, "bad_image", why(exc))
            )
            continue
        h, w = image.shape[:2]
        if (h, w) != (first.height, first.width):
            bad.append(
                quarantine_record(
                    "masks",
                    str(image_id),
                    first.image_path,
                    "size_changed",
                    f"image is {w}x{h}, the caption stage saw {first.width}x{first.height}",
                )
            )
            continue
        box_array = np.array([list(b) for b in group["box_xyxy"]], dtype=np.float64).reshape(-1, 4)
        needs_sam = _needs_sam(box_array, h, w, cfg.whole_image_ratio)
        if needs_sam and sam is None:
            sam = component("sam", params)
        result = masks_from_boxes(
            sam if needs_sam else None,
            image,
            box_array,
            pred_iou_threshold=cfg.pred_iou_threshold,
            stability_threshold=cfg.stability_threshold,
            whole_image_ratio=cfg.whole_image_ratio,
            min_region_area=cfg.min_region_area,
            box_chunk=cfg.box_chunk,
        )
        for box_idx, reason in result.rejected:
            src = group.iloc[box_idx]
            bad.append(
                quarantine_record(
                    "masks",
                    str(image_id),
                    first.image_path,
                    _reason_code(reason),
                    f"box {list(np.round(box_array[box_idx], 1))} ({src.texts[0]!r}): {reason}",
                    fatal=False,
                )
            )
        counters["rejected"] += len(result.rejected)
        counters["whole_image"] += int(result.whole_image.sum())
        for k in range(len(result.box_index)):  # segment_id = k: masks in input-box order
            src = group.iloc[int(result.box_index[k])]
            mask = result.masks[k]
            rle = encode_mask(mask)
            ys, xs = np.nonzero(mask)
            rows.append(
                {
                    "image_id": str(image_id),
                    "image_path": first.image_path,
                    "height": h,
                    "width": w,
                    "segment_id": k,
                    "rle": rle["counts"],
                    "bbox": [
                        float(xs.min()),
                        float(ys.min()),
                        float(xs.max() - xs.min() + 1),
                        float(ys.max() - ys.min() + 1),
                    ],
                    "area": int(mask.sum()),
                    "texts": list(src.texts),
                    "sources": list(src.sources),
                    "stability_score": float(result.stability[k]),
                    # SAM's IoU head is a regression and can exceed 1 slightly
                    "pred_iou": float(np.clip(result.pred_iou[k], 0.0, 1.0)),
                    "provenance": provenance,
                    "prompt_box": [float(v) for v in box_array[int(result.box_index[k])]],
                }
            )
        counters["masks"] += len(result.box_index)
    frame = pd.DataFrame(rows, columns=MASKS_SCHEMA.names)
    return ShardOutput(frame, bad, counters)


_REASON_CODES = (
    ("non-finite", "bad_box"),
    ("degenerate", "bad_box"),
    ("outside", "bad_box"),
    ("predicted IoU", "low_pred_iou"),
    ("stability", "low_stability"),
    ("empty mask", "empty_mask"),
)


def _reason_code(reason: str) -> str:
    """A short quarantine code for a masks-stage rejection (the prose goes to ``detail``)."""
    return next((code for key, code in _REASON_CODES if key in reason), "rejected")


def _needs_sam(boxes: np.ndarray, h: int, w: int, ratio: float) -> bool:
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    return bool(np.any(~np.isfinite(area) | (area <= ratio * h * w)))


def compute_shard(inp: pd.DataFrame, shard: Shard, params: Params, provenance: str) -> ShardOutput:
    """The shard runner's entry: the shard's boxes → its masks."""
    return masks_shard(inp, params, provenance)


def run(params: Params, io: StageIO, show_progress: bool = True) -> dict[str, Any]:
    """Every shard of the stage (finished ones skipped); the report as a dict."""
    return run_stage("masks", params, show_progress=show_progress).to_dict()
