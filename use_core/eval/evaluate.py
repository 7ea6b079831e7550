"""The evaluation stage (paper §4.3–4.4): proposals → segment embeddings → metrics and reports.

Semantic benchmarks (``shapes``, ADE, Pascal-Context): per image, proposals are embedded
together with a whole-image segment, classified against the class names (class templates,
softmax at the training logit scale) — :func:`use_core.infer.predict.predict_segments`, the
predict path of ``use segment`` and of the served model —, aggregated into a semantic map
(:func:`use_core.infer.semantic.semantic_map`) and scored with a streaming
:class:`SemanticMeter` (mIoU over the classes present in the ground truth, as detectron2's
``SemSegEvaluator``; ``mIoU_all_classes``, aAcc, mAcc, fwIoU). Part benchmarks
(``shapes_parts``, ``partimagenet``): segments are classified over parts + background classes,
those whose top class is a part become COCO results (:mod:`use_core.infer.parts`), scored
with mask mAP@[.5:.95].

Proposal modes (``eval.proposals``): ``sam`` — SAM grid proposals; ``oracle`` — ground-truth
masks, which isolates the classification quality from SAM's masks:

* ``shapes``: the instance masks of ``val/instances.json`` (objects and stuff);
* other semantic benchmarks (no instance masks): the connected regions of each class of the
  ground-truth label map (ignore pixels excluded);
* part benchmarks: the image's ground-truth part masks.

Outputs in ``out_dir``: ``metrics.json`` (NaN written as null), ``per_class_iou.csv``
(``class,iou``; ``per_class_ap.csv`` ``class,ap`` for parts), ``per_class_iou.png`` (or
``per_class_ap.png``), ``confusion_matrix.png`` (semantic) and ``overlays/*.png``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from use_core.config import EvalConfig
from use_core.data.images import load_rgb
from use_core.data.metrics_json import write_metrics_json
from use_core.eval.datasets import Benchmark, BenchmarkSample, annotation_mask, load_benchmark
from use_core.eval.metrics import SEMANTIC_CONVENTIONS, SemanticMeter, mask_map
from use_core.infer.classify import DEFAULT_LOGIT_SCALE, class_text_embeddings
from use_core.infer.given_masks import label_map_regions
from use_core.infer.parts import part_predictions, part_vocabulary
from use_core.infer.predict import predict_segments
from use_core.infer.proposal_store import ProposalStore, sam_proposal_masks
from use_core.ops.rle import decode_rle
from use_core.viz import (
    overlay_segmentation,
    plot_confusion_matrix,
    plot_per_class_iou,
    save_per_class_iou_csv,
)

MAX_IMAGE_PIXELS = 40_000_000


class _ShapesInstances:
    """Ground-truth instance masks of the shapes val split, by image file name."""

    def __init__(self, root: Path) -> None:
        path = root / "val" / "instances.json"
        if not path.is_file():
            raise FileNotFoundError(f"oracle proposals need {path}")
        doc = json.loads(path.read_text("utf-8"))
        names = {img["id"]: img["file_name"] for img in doc["images"]}
        self.by_name: dict[str, list[dict[str, Any]]] = {n: [] for n in names.values()}
        for ann in doc["annotations"]:
            self.by_name[names[ann["image_id"]]].append(ann["segmentation"])

    def masks(self, file_name: str, hw: tuple[int, int]) -> np.ndarray:
        rles = self.by_name.get(file_name, [])
        if not rles:
            return np.zeros((0, *hw), dtype=bool)
        return np.stack([decode_rle(r, hw) for r in rles])


def _oracle_masks(
    bench: Benchmark, sample: BenchmarkSample, hw: tuple[int, int], shapes: _ShapesInstances | None
) -> np.ndarray:
    if bench.task == "part":
        anns = sample.gt if isinstance(sample.gt, list) else []
        if not anns:
            return np.zeros((0, *hw), dtype=bool)
        return np.stack([annotation_mask(a["segmentation"], hw) for a in anns])
    if shapes is not None:
        return shapes.masks(sample.image_path.name, hw)
    masks, _ = label_map_regions(bench.read_label(sample), bench.ignore_index)
    return masks


def evaluate_benchmark(
    name: str,
    root: str | Path,
    model: Any,
    sam: Any,
    eval_cfg: EvalConfig,
    nms_iou: float,
    out_dir: str | Path,
    logit_scale: float = DEFAULT_LOGIT_SCALE,
    max_pixels: int = MAX_IMAGE_PIXELS,
    show_progress: bool = True,
    proposal_store: ProposalStore | None = None,
    proposal_settings: Mapping[str, Any] | None = None,
    label_order: str | None = None,
    **proposal_kwargs: Any,
) -> dict[str, Any]:
    """Evaluate ``model`` on benchmark ``name`` stored under ``root`` and write the reports.

    Arguments:
      sam: SAM/MobileSAM model for ``eval_cfg.proposals == "sam"`` (unused for ``oracle``).
      eval_cfg: points per side, proposal mode, class templates, max images, overlays.
      nms_iou: mask NMS IoU of the SAM proposals (``nms.iou_threshold``).
      logit_scale: softmax temperature (``train.logit_scale``).
      proposal_store: a :class:`ProposalStore` (the ``proposals`` stage's) read before running
        SAM and filled with what is computed; ``proposal_settings`` go into its keys.
      label_order: PC-59's class order where the layout needs it (``ovseg`` | ``detail``).
      proposal_kwargs: extra arguments of :func:`generate_proposals` (thresholds...).
    Returns:
      the metrics dict written to ``metrics.json``: ``benchmark``, ``task``, ``proposals``,
      ``images``, ``seconds``, ``segments`` (proposals used), and ``mIoU``/``mIoU_all_classes``/
      ``aAcc``/``mAcc``/``fwIoU``/``IoU``/``present``/``conventions`` (semantic) or
      ``mAP``/``mAP50``/``mAP75``/``AP`` (part).
    """
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bench = load_benchmark(name, root, label_order=label_order)
    mode = eval_cfg.proposals
    if mode == "sam" and sam is None and proposal_store is None:
        raise ValueError("proposals mode 'sam' needs a SAM model")
    samples = bench.samples[: eval_cfg.max_images] if eval_cfg.max_images else bench.samples
    if not samples:
        raise ValueError(f"benchmark {name!r} under {root} has no images")
    is_part = bench.task == "part"
    vocab = (
        part_vocabulary(bench.class_names, bench.background_names) if is_part else bench.class_names
    )
    text = class_text_embeddings(model, vocab, eval_cfg.class_templates)
    shapes = _ShapesInstances(bench.root) if mode == "oracle" and name == "shapes" else None
    meter = SemanticMeter(bench.num_classes, bench.ignore_index) if not is_part else None
    predictions: list[dict[str, Any]] = []
    overlay_dir = out / "overlays"
    n_segments = cached = 0
    for i, sample in enumerate(tqdm(samples, desc=f"eval {name}", disable=not show_progress)):
        image = load_rgb(sample.image_path, max_pixels)
        hw = (int(image.shape[0]), int(image.shape[1]))
        if mode == "oracle":
            masks = _oracle_masks(bench, sample, hw, shapes)
        else:
            masks, hit = sam_proposal_masks(
                sam,
                image,
                sample.image_path,
                eval_cfg.points_per_side,
                nms_iou,
                proposal_store,
                proposal_settings,
                **proposal_kwargs,
            )
            cached += int(hit)
        n_segments += int(masks.shape[0])
        pred = predict_segments(
            model, image, masks, None, vocab, logit_scale=logit_scale, text_embeddings=text
        )
        assert pred.probabilities is not None
        if meter is not None:
            labels = pred.semantic_map()
            gt = bench.read_label(sample)
            if gt.shape != labels.shape:
                raise ValueError(f"{sample.gt}: label map {gt.shape} != image {labels.shape}")
            meter.update(labels, gt)
            if i < eval_cfg.num_overlays:
                overlay_segmentation(
                    image, labels, bench.class_names, overlay_dir / f"{sample.image_path.stem}.png"
                )
        else:
            image_preds = part_predictions(
                masks,
                pred.probabilities,
                bench.num_classes,
                sample.meta["image_id"],
                bench.category_ids,
            )
            predictions.extend(image_preds)
            if i < eval_cfg.num_overlays:
                _part_overlay(
                    image, image_preds, bench, overlay_dir / f"{sample.image_path.stem}.png"
                )
    metrics: dict[str, Any] = {
        "benchmark": name,
        "layout": bench.layout,
        "task": bench.task,
        "proposals": mode,
        "images": len(samples),
        "segments": n_segments,
        "cached_proposals": cached,
    }
    if meter is not None:
        result = meter.compute()
        keys = ("mIoU", "mIoU_all_classes", "aAcc", "mAcc", "fwIoU", "IoU", "present", "pixels")
        metrics.update({k: result[k] for k in keys})
        metrics["conventions"] = dict(SEMANTIC_CONVENTIONS)
        save_per_class_iou_csv(result, bench.class_names, out / "per_class_iou.csv")
        plot_per_class_iou(
            result, bench.class_names, out / "per_class_iou.png", title=f"{name} ({mode})"
        )
        plot_confusion_matrix(result["confusion"], bench.class_names, out / "confusion_matrix.png")
    else:
        assert bench.coco_gt is not None
        gt_doc = dict(bench.coco_gt)
        used = {s.meta["image_id"] for s in samples}
        gt_doc["images"] = [im for im in gt_doc["images"] if im["id"] in used]
        gt_doc["annotations"] = [a for a in gt_doc["annotations"] if a["image_id"] in used]
        result = mask_map(predictions, gt_doc)
        ap = [result["per_category_id"][c] for c in bench.category_ids]
        metrics.update({k: result[k] for k in ("mAP", "mAP50", "mAP75")})
        metrics["AP"] = ap
        metrics["repaired_polygons"] = bench.repaired_polygons
        metrics["predictions"] = len(predictions)
        table = {"mIoU": result["mAP"], "IoU": ap}
        pd.DataFrame({"class": bench.class_names, "ap": ap}).to_csv(
            out / "per_class_ap.csv", index=False, float_format="%.4f"
        )
        plot_per_class_iou(table, bench.class_names, out / "per_class_ap.png", title=f"{name} AP")
    metrics["seconds"] = round(time.perf_counter() - start, 3)
    write_metrics_json(metrics, out / "metrics.json")
    return metrics


def _part_overlay(
    image: np.ndarray, preds: list[dict[str, Any]], bench: Benchmark, path: Path
) -> None:
    """Paint part predictions (lowest score first, so the best is on top) over the image."""
    hw = image.shape[:2]
    labels = np.full(hw, 255, dtype=np.int32)
    index = {cid: k for k, cid in enumerate(bench.category_ids)}
    for pred in sorted(preds, key=lambda p: p["score"]):
        labels[decode_rle(pred["segmentation"], hw)] = index[pred["category_id"]]
    overlay_segmentation(image, labels, bench.class_names, path)
