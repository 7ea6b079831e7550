"""Segmentation metrics: streaming mIoU (paper §4.3) and COCO mask mAP@[.5:.95] (paper §4.4).

Semantic metrics follow detectron2's ``SemSegEvaluator``, the evaluator behind the numbers the
paper compares with (SAN, CAT-Seg, ODISE, MaskAdapter report it):

- pixels whose ground truth equals ``ignore_index`` are dropped;
- ``mIoU`` is the mean IoU over the classes **present in the ground truth**; a class absent
  from it has IoU NaN (also when it is predicted) and is left out of the mean; ``mAcc`` is the
  mean per-class accuracy over the same classes, ``aAcc`` the pixel accuracy (detectron2's
  ``pACC``) and ``fwIoU`` the IoU weighted by each class's ground-truth pixel share;
- ``mIoU_all_classes`` is the other published convention (mmsegmentation's, OVSeg's): the mean
  over every class whose union is non-empty, so a class predicted but absent from the ground
  truth counts as 0. On ADE-847 and PC-459, where many classes are absent from val, the two
  differ by points;
- a *prediction* equal to ``ignore_index`` ("no class") on a valid pixel is kept and counts as
  wrong: it adds to the pixel total and to its ground-truth class's area, never to a predicted
  class's area (detectron2's models always predict a class, so this never happens there).

:data:`SEMANTIC_CONVENTIONS` says this per number; the metrics files carry it. All percentages
are in [0, 100].
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

SEMANTIC_CONVENTIONS: dict[str, str] = {
    "mIoU": "detectron2 SemSegEvaluator: mean IoU over classes present in the ground truth",
    "mIoU_all_classes": "mmseg/OVSeg: mean IoU over classes with a non-empty union",
    "mAcc": "detectron2 mACC: mean accuracy over classes present in the ground truth",
    "aAcc": "detectron2 pACC: correct pixels / ground-truth pixels",
    "fwIoU": "detectron2 fwIoU: IoU weighted by ground-truth pixel share",
}


class SemanticMeter:
    """Streaming confusion matrix for semantic segmentation.

    Arguments:
      num_classes: K, labels are ``0..K-1``.
      ignore_index: ground-truth value of pixels to skip; as a prediction it means "no class".

    ``update(pred, gt)`` adds one image; memory stays O(K²) whatever the number of images.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(
                f"ignore_index {ignore_index} is a valid class id (num_classes={num_classes})"
            )
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        # rows: ground truth; columns: prediction, the extra last column is "no prediction"
        self._counts = np.zeros((num_classes, num_classes + 1), dtype=np.int64)
        self.images = 0

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Add one image: ``pred`` and ``gt`` are (H, W) integer label maps of equal shape."""
        pred = np.asarray(pred)
        gt = np.asarray(gt)
        if pred.shape != gt.shape or pred.ndim != 2:
            raise ValueError(
                f"pred and gt must be (H, W) maps of equal shape, got {pred.shape} and {gt.shape}"
            )
        for name, arr in (("pred", pred), ("gt", gt)):
            if arr.dtype.kind not in "iub":
                raise ValueError(f"{name} must hold integer labels, got dtype {arr.dtype}")
        k = self.num_classes
        gt = gt.astype(np.int64, copy=False)
        pred = pred.astype(np.int64, copy=False)
        valid = gt != self.ignore_index
        gt_v = gt[valid]
        pred_v = pred[valid]
        bad_gt = (gt_v < 0) | (gt_v >= k)
        if bad_gt.any():
            raise ValueError(
                f"gt labels outside [0, {k}) and != ignore_index {self.ignore_index}: "
                f"{np.unique(gt_v[bad_gt])[:10].tolist()}"
            )
        unpredicted = pred_v == self.ignore_index
        bad_pred = ((pred_v < 0) | (pred_v >= k)) & ~unpredicted
        if bad_pred.any():
            raise ValueError(
                f"pred labels outside [0, {k}) and != ignore_index {self.ignore_index}: "
                f"{np.unique(pred_v[bad_pred])[:10].tolist()}"
            )
        pred_v = np.where(unpredicted, k, pred_v)
        flat = np.bincount(gt_v * (k + 1) + pred_v, minlength=k * (k + 1))
        self._counts += flat.reshape(k, k + 1)
        self.images += 1

    @property
    def confusion(self) -> np.ndarray:
        """(K, K) int64 confusion matrix, rows = ground truth, columns = prediction."""
        return self._counts[:, : self.num_classes].copy()

    def compute(self) -> dict[str, Any]:
        """Metrics so far.

        Returns a dict with ``mIoU``, ``mIoU_all_classes``, ``aAcc``, ``mAcc``, ``fwIoU`` (float
        percent, NaN when nothing was counted; conventions in the module docstring), ``IoU`` and
        ``Acc`` (per-class lists, percent, NaN for a class absent from the ground truth),
        ``IoU_all_classes`` (per class, NaN only when the union is empty), ``confusion`` (K×K
        nested list, rows = gt), ``unpredicted`` (per-gt-class count of valid pixels predicted
        as ``ignore_index``), ``present`` (classes in the ground truth), ``pixels`` (valid pixels
        counted) and ``images``.
        """
        counts = self._counts.astype(np.float64)
        conf = counts[:, : self.num_classes]
        tp = np.diag(conf)
        gt_area = counts.sum(axis=1)  # includes "no prediction" pixels
        pred_area = conf.sum(axis=0)
        union = gt_area + pred_area - tp
        present = gt_area > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            iou_all = np.where(union > 0, tp / union, np.nan)
            iou = np.where(present, iou_all, np.nan)
            acc = np.where(present, tp / gt_area, np.nan)
        total = gt_area.sum()
        weights = gt_area / total if total > 0 else np.zeros_like(gt_area)
        return {
            "mIoU": _nanmean_percent(iou),
            "mIoU_all_classes": _nanmean_percent(iou_all),
            "aAcc": float(tp.sum() / total * 100.0) if total > 0 else float("nan"),
            "mAcc": _nanmean_percent(acc),
            "fwIoU": float(np.sum(iou[present] * weights[present]) * 100.0)
            if total > 0
            else float("nan"),
            "IoU": (iou * 100.0).tolist(),
            "IoU_all_classes": (iou_all * 100.0).tolist(),
            "Acc": (acc * 100.0).tolist(),
            "confusion": self._counts[:, : self.num_classes].tolist(),
            "unpredicted": self._counts[:, self.num_classes].tolist(),
            "present": int(present.sum()),
            "pixels": int(total),
            "images": self.images,
        }


def _nanmean_percent(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean() * 100.0) if finite.size else float("nan")


def semantic_metrics(
    preds: Iterable[np.ndarray],
    gts: Iterable[np.ndarray],
    num_classes: int,
    ignore_index: int = 255,
) -> dict[str, Any]:
    """mIoU, mIoU_all_classes, aAcc, mAcc, fwIoU over paired (H, W) integer label maps, streamed.

    ``preds`` and ``gts`` may be generators; they must have the same length. See
    :meth:`SemanticMeter.compute` for the returned keys and the module docstring for conventions.
    """
    meter = SemanticMeter(num_classes, ignore_index)
    sentinel = object()
    pred_iter, gt_iter = iter(preds), iter(gts)
    while True:
        pred = next(pred_iter, sentinel)
        gt = next(gt_iter, sentinel)
        if pred is sentinel and gt is sentinel:
            break
        if pred is sentinel or gt is sentinel:
            raise ValueError(f"preds and gts differ in length (stopped after {meter.images} pairs)")
        meter.update(pred, gt)  # type: ignore[arg-type]
    return meter.compute()


# --------------------------------------------------------------------------------------------
# Mask mAP (COCO)
# --------------------------------------------------------------------------------------------


def _load_coco_gt(gt_coco: Mapping[str, Any] | str | Path) -> COCO:
    """A pycocotools COCO index over a copy of ``gt_coco`` (dict or JSON path), quietly."""
    if isinstance(gt_coco, str | Path):
        with open(gt_coco, encoding="utf-8") as fh:
            data = json.load(fh)
    else:
        data = copy.deepcopy(dict(gt_coco))
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise ValueError(f"ground-truth COCO document has no {key!r} list")
    images = {img["id"]: img for img in data["images"]}
    for ann in data["annotations"]:
        ann.setdefault("iscrowd", 0)
        if "area" not in ann:
            img = images.get(ann["image_id"])
            if img is None:
                raise ValueError(f"annotation {ann.get('id')} refers to unknown image")
            rle = _to_rle(ann["segmentation"], img["height"], img["width"])
            ann["area"] = float(mask_utils.area(rle))
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _to_rle(segmentation: Any, height: int, width: int) -> dict[str, Any]:
    if isinstance(segmentation, list):  # polygons
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation.get("counts"), list):  # uncompressed RLE
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


def _check_predictions(predictions: Sequence[Mapping[str, Any]], coco: COCO) -> list[dict]:
    required = ("image_id", "category_id", "segmentation", "score")
    image_ids = set(coco.getImgIds())
    cat_ids = set(coco.getCatIds())
    checked = []
    for i, pred in enumerate(predictions):
        missing = [k for k in required if k not in pred]
        if missing:
            raise ValueError(f"prediction {i} lacks keys {missing}")
        if pred["image_id"] not in image_ids:
            raise ValueError(f"prediction {i}: image_id {pred['image_id']} not in ground truth")
        if pred["category_id"] not in cat_ids:
            raise ValueError(
                f"prediction {i}: category_id {pred['category_id']} not in ground truth"
            )
        seg = pred["segmentation"]
        if not isinstance(seg, Mapping) or "counts" not in seg or "size" not in seg:
            raise ValueError(f"prediction {i}: segmentation must be an RLE dict (size, counts)")
        item = {k: pred[k] for k in required}
        item["segmentation"] = dict(seg)
        item["score"] = float(pred["score"])
        checked.append(item)
    return checked


def mask_map(
    predictions: Sequence[Mapping[str, Any]],
    gt_coco: Mapping[str, Any] | str | Path,
    max_dets: int = 100,
) -> dict[str, Any]:
    """COCO mask mAP@[0.5:0.95] of instance/part predictions (pycocotools ``iouType="segm"``).

    Arguments:
      predictions: ``{"image_id", "category_id", "segmentation": RLE dict, "score"}`` per mask,
        ids as in ``gt_coco``. An empty list gives mAP 0 for every category with ground truth.
      gt_coco: COCO ground truth (dict or JSON path); annotations may use polygons or RLE,
        a missing ``area`` is computed from the mask, a missing ``iscrowd`` is 0.
      max_dets: detections kept per image (COCO's largest ``maxDets``).

    Returns ``mAP``, ``mAP50``, ``mAP75`` (percent; NaN if the ground truth has no annotation),
    ``per_category`` (category name → AP percent, NaN for categories without ground truth),
    ``per_category_id`` (id → AP) and ``summary`` (COCOeval's printed table).
    """
    coco_gt = _load_coco_gt(gt_coco)
    cats = {c["id"]: c["name"] for c in coco_gt.loadCats(coco_gt.getCatIds())}
    checked = _check_predictions(predictions, coco_gt)
    gt_counts = {cid: len(coco_gt.getAnnIds(catIds=[cid])) for cid in cats}
    if not checked:
        per_id = {cid: (0.0 if gt_counts[cid] else float("nan")) for cid in cats}
        score = 0.0 if coco_gt.getAnnIds() else float("nan")
        return {
            "mAP": score,
            "mAP50": score,
            "mAP75": score,
            "per_category": {cats[c]: v for c, v in per_id.items()},
            "per_category_id": per_id,
            "summary": "no predictions: AP is 0 for every category with ground truth",
        }
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        coco_dt = coco_gt.loadRes(checked)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="segm")
        evaluator.params.maxDets = [1, 10, max_dets]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # precision: [T thresholds, R recall points, K categories, A area ranges, M maxDets]
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    per_id = {}
    for k, cid in enumerate(evaluator.params.catIds):
        p = precision[:, :, k]
        valid = p[p > -1]
        per_id[cid] = float(valid.mean() * 100.0) if valid.size else float("nan")
    stats = evaluator.stats
    return {
        "mAP": _coco_stat(stats[0]),
        "mAP50": _coco_stat(stats[1]),
        "mAP75": _coco_stat(stats[2]),
        "per_category": {cats[c]: v for c, v in per_id.items()},
        "per_category_id": per_id,
        "summary": buffer.getvalue(),
    }


def _coco_stat(value: float) -> float:
    """COCOeval reports -1 when a statistic is undefined; map it to NaN, else to percent."""
    return float("nan") if value < 0 else float(value * 100.0)
