"""Segment-text pairs straight from the shapes corpus' ground truth (no curation needed).

Used by tests and the demo until the curation pipeline has produced pairs, and for validation:
its segments are exact and its class names known. Each instance (objects and stuff, from
``instances.json``) and, optionally, each part (``parts.json``) is a segment; its texts are

* the VG-style region phrases of ``regions.json`` whose box matches the segment's box (box IoU
  >= ``MIN_BOX_IOU``; each phrase goes to its best-matching segment, ties to the first, in
  instance-then-part order), source ``"shapes_gt/region"``;
* its class name (``"red circle"``, ``"green tree"``, ``"sky"``; parts: ``"blue house roof"``),
  source ``"shapes_gt/class"``.

Regions matching no segment are counted in ``df.attrs["unmatched_regions"]`` (and logged).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

MIN_BOX_IOU = 0.9
PROVENANCE = "shapes_gt"


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of ``(N, 4)`` and ``(M, 4)`` xywh boxes → ``(N, M)``."""
    ax0, ay0, ax1, ay1 = a[:, 0], a[:, 1], a[:, 0] + a[:, 2], a[:, 1] + a[:, 3]
    bx0, by0, bx1, by1 = b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = (np.minimum(ax1[:, None], bx1[None]) - np.maximum(ax0[:, None], bx0[None])).clip(0)
    ih = (np.minimum(ay1[:, None], by1[None]) - np.maximum(ay0[:, None], by0[None])).clip(0)
    inter = iw * ih
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def _load(path: Path) -> Any:
    if not path.exists():
        raise FileNotFoundError(f"shapes ground truth file missing: {path}")
    return json.loads(path.read_text())


def pairs_from_shapes_gt(
    shapes_dir: str | Path,
    split: str,
    include_parts: bool = True,
    with_class_name: bool = False,
) -> pd.DataFrame:
    """Pairs table (one row per GT segment) of a shapes split.

    Arguments:
      shapes_dir: the folder ``generate_shapes`` wrote; ``image_path`` is relative to it, so
        pass it as the trainer's ``data_root``.
      split: ``"train"`` or ``"val"``.
      include_parts: also emit part segments.
      with_class_name: add a ``class_name`` column (the annotation's ``colour_shape``, e.g.
        ``"red circle"``; ``None`` for parts) for zero-shot validation. Without it the frame has
        exactly the pairs-store columns.
    Returns:
      DataFrame with the pairs-store columns (``use_core.data.pairs.PAIRS_COLUMNS``); image ids
      are ``"shapes_{split}/{coco id}"``; ``bbox`` is xywh; ``stability_score`` and
      ``pred_iou`` are 1.0 (exact masks).
    """
    root = Path(shapes_dir)
    inst = _load(root / split / "instances.json")
    parts = _load(root / split / "parts.json") if include_parts else {"annotations": []}
    regions = {r["id"]: r["regions"] for r in _load(root / split / "regions.json")}
    part_names = {c["id"]: c["name"] for c in parts.get("categories", [])}
    by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in inst["annotations"]:
        name = ann.get("colour_shape")
        by_image.setdefault(ann["image_id"], []).append(
            {"ann": ann, "class_text": name, "class_name": name}
        )
    for ann in parts["annotations"]:
        text = f"{ann['colour']} {part_names[ann['category_id']]}"
        by_image.setdefault(ann["image_id"], []).append(
            {"ann": ann, "class_text": text, "class_name": None}
        )
    rows: list[dict[str, Any]] = []
    unmatched = 0
    for image in inst["images"]:
        segs = by_image.get(image["id"], [])
        phrases: list[list[str]] = [[] for _ in segs]
        image_regions = regions.get(image["id"], [])
        if segs and image_regions:
            seg_boxes = np.array([s["ann"]["bbox"] for s in segs], dtype=np.float64)
            reg_boxes = np.array(
                [[r["x"], r["y"], r["width"], r["height"]] for r in image_regions],
                dtype=np.float64,
            )
            iou = _box_iou(reg_boxes, seg_boxes)
            for r, region in enumerate(image_regions):
                best = int(np.argmax(iou[r]))
                if iou[r, best] >= MIN_BOX_IOU:
                    phrases[best].append(region["phrase"])
                else:
                    unmatched += 1
        else:
            unmatched += len(image_regions)
        for seg_id, (seg, seg_phrases) in enumerate(zip(segs, phrases, strict=True)):
            ann = seg["ann"]
            texts = list(dict.fromkeys(seg_phrases))
            sources = ["shapes_gt/region"] * len(texts)
            if seg["class_text"] and seg["class_text"] not in texts:
                texts.append(seg["class_text"])
                sources.append("shapes_gt/class")
            row = {
                "image_id": f"shapes_{split}/{image['id']}",
                "image_path": f"{split}/images/{image['file_name']}",
                "height": int(image["height"]),
                "width": int(image["width"]),
                "segment_id": seg_id,
                "rle": ann["segmentation"]["counts"],
                "bbox": [float(v) for v in ann["bbox"]],
                "area": int(ann["area"]),
                "texts": texts,
                "sources": sources,
                "stability_score": 1.0,
                "pred_iou": 1.0,
                "provenance": PROVENANCE,
            }
            if with_class_name:
                row["class_name"] = seg["class_name"]
            rows.append(row)
    df = pd.DataFrame(rows)
    df.attrs["unmatched_regions"] = unmatched
    if unmatched:
        log.warning("%s/%s: %d region phrases matched no GT segment", root, split, unmatched)
    return df


def shapes_class_names(shapes_dir: str | Path, key: str = "colour_shape") -> list[str]:
    """A class vocabulary from ``classes.json`` (default the colour × shape names)."""
    classes = _load(Path(shapes_dir) / "classes.json")
    if key not in classes:
        raise KeyError(f"classes.json has no {key!r}; keys: {sorted(classes)}")
    return list(classes[key])
