"""What the curation produced, as DVC metrics: Table-1-style pair counts, quarantine, mask quality.

Mask quality is measured only where a source names ground-truth masks (``gt_instances``, COCO
files): every mask whose prompt was a region box equal to a ground-truth annotation's box is
compared with that annotation's mask (IoU). On the shapes corpus, regions are exactly the tight
boxes of instances and parts, so this is the masks stage's accuracy with the real SAM. Region
boxes SAM gave no mask for are counted in the quarantine (``masks`` stage), not here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from use_core.config import Params
from use_core.data.pairs import pairs_statistics
from use_core.data.plan import Plan, build_plan
from use_core.data.quarantine import read_quarantine, summarize
from use_core.pipeline.shards import read_stage, write_json


def masks_quality(masks: pd.DataFrame, params: Params) -> dict[str, Any]:
    """Mean / worst IoU of region-box masks against the ground-truth mask with the same box."""
    from use_core.ops.rle import decode_rle, rle_from_string

    root = Path(params.data.root)
    gt: dict[tuple[str, tuple[int, int, int, int]], dict[str, Any]] = {}
    for src in params.data.sources:
        for rel in src.gt_instances:
            coco = json.loads((root / rel).read_text())
            images_dir = Path(src.images)
            files = {im["id"]: (images_dir / im["file_name"]).as_posix() for im in coco["images"]}
            for ann in coco["annotations"]:
                box = tuple(int(round(v)) for v in ann["bbox"])
                gt[(files[ann["image_id"]], box)] = ann["segmentation"]  # type: ignore[index]
    if not gt:
        return {}
    ious = []
    unmatched_regions = 0
    regions = masks[[any(s.endswith("/region") for s in srcs) for srcs in masks["sources"]]]
    for row in regions.itertuples(index=False):
        x0, y0, x1, y1 = (int(round(v)) for v in row.prompt_box)
        seg = gt.get((row.image_path, (x0, y0, x1 - x0, y1 - y0)))
        if seg is None:
            unmatched_regions += 1  # e.g. a whole-scene region: no single GT mask
            continue
        pred = decode_rle(rle_from_string(row.rle, row.height, row.width))
        true = decode_rle(seg, (row.height, row.width))
        union = np.logical_or(pred, true).sum()
        ious.append(float(np.logical_and(pred, true).sum() / union) if union else 0.0)
    if not ious:
        return {"masks_vs_gt_matched": 0, "masks_vs_gt_unmatched_regions": unmatched_regions}
    arr = np.array(ious)
    return {
        "masks_vs_gt_matched": len(arr),
        "masks_vs_gt_unmatched_regions": unmatched_regions,
        "masks_vs_gt_mean_iou": float(arr.mean()),
        "masks_vs_gt_median_iou": float(np.median(arr)),
        "masks_vs_gt_worst_iou": float(arr.min()),
        "masks_vs_gt_iou_ge_0.9": float((arr >= 0.9).mean()),
    }


def curation_report(params: Params, out: Path, plan: Plan | None = None) -> dict[str, Any]:
    """Write the curation metrics JSON (pairs, per source, quarantine, mask quality)."""
    plan = plan or build_plan(params)
    pairs = read_stage("nms", params, plan)
    masks = read_stage("masks", params, plan)
    pairs_before = int(sum(len(t) for t in masks["texts"])) if len(masks) else 0
    stats = pairs_statistics(pairs, pairs_before_nms=pairs_before)
    stats["segments_before_nms"] = len(masks)
    quarantine = read_quarantine(Path(params.data.root) / "curation" / "quarantine")
    stats["quarantine"] = summarize(quarantine)
    stats.update(masks_quality(masks, params))
    write_json(out, stats)
    return stats
