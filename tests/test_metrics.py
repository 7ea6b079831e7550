"""Semantic metrics (mIoU, aAcc, mAcc) and COCO mask mAP on hand-computed cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from use_core.eval.metrics import SemanticMeter, mask_map, semantic_metrics

# ------------------------------------------------------------------ semantic


def test_perfect_prediction_scores_100() -> None:
    gt = np.array([[0, 1, 2], [2, 1, 0]])
    out = semantic_metrics([gt], [gt], num_classes=3)
    assert out["mIoU"] == pytest.approx(100.0)
    assert out["aAcc"] == pytest.approx(100.0)
    assert out["mAcc"] == pytest.approx(100.0)
    assert out["IoU"] == pytest.approx([100.0, 100.0, 100.0])


def test_two_class_hand_computed() -> None:
    # gt:   0 0 0 1      pred: 0 0 1 1
    #       0 0 1 1            0 1 1 1
    gt = np.array([[0, 0, 0, 1], [0, 0, 1, 1]])
    pred = np.array([[0, 0, 1, 1], [0, 1, 1, 1]])
    out = semantic_metrics([pred], [gt], num_classes=2)
    # class 0: tp 3, gt 5, pred 3 → IoU 3/5; class 1: tp 3, gt 3, pred 5 → IoU 3/5
    assert out["IoU"] == pytest.approx([60.0, 60.0])
    assert out["mIoU"] == pytest.approx(60.0)
    assert out["aAcc"] == pytest.approx(6 / 8 * 100)
    assert out["Acc"] == pytest.approx([60.0, 100.0])
    assert out["mAcc"] == pytest.approx(80.0)
    assert out["confusion"] == [[3, 2], [0, 3]]


def test_ignored_ground_truth_pixels_do_not_count() -> None:
    gt = np.array([[0, 255, 1], [255, 1, 0]])
    pred = np.array([[0, 1, 1], [0, 1, 0]])  # wrong only where gt is ignored
    out = semantic_metrics([pred], [gt], num_classes=2, ignore_index=255)
    assert out["mIoU"] == pytest.approx(100.0)
    assert out["pixels"] == 4


def test_prediction_of_ignore_index_counts_as_wrong() -> None:
    gt = np.array([[0, 0, 1, 1]])
    pred = np.array([[0, 255, 1, 1]])
    out = semantic_metrics([pred], [gt], num_classes=2)
    # class 0: tp 1, gt area 2 (one pixel unpredicted), pred area 1 → IoU 1/2
    assert out["IoU"] == pytest.approx([50.0, 100.0])
    assert out["aAcc"] == pytest.approx(75.0)
    assert out["unpredicted"] == [1, 0]


def test_absent_class_is_nan_and_excluded_from_mean() -> None:
    gt = np.array([[0, 0, 1, 1]])
    pred = np.array([[0, 0, 1, 0]])
    out = semantic_metrics([pred], [gt], num_classes=3)
    assert math.isnan(out["IoU"][2])
    assert math.isnan(out["Acc"][2])
    # class 0: tp 2, union 3; class 1: tp 1, union 2
    assert out["mIoU"] == pytest.approx((2 / 3 + 1 / 2) / 2 * 100)


def test_predicted_but_absent_class_is_left_out_of_miou_and_zero_in_all_classes() -> None:
    gt = np.array([[0, 0]])
    pred = np.array([[0, 2]])
    out = semantic_metrics([pred], [gt], num_classes=3)
    assert math.isnan(out["IoU"][2])  # detectron2: absent from the ground truth → NaN
    assert out["IoU_all_classes"][2] == 0.0  # mmseg / OVSeg: predicted, empty intersection → 0
    assert math.isnan(out["Acc"][2])
    assert out["mIoU"] == pytest.approx(50.0)
    assert out["mIoU_all_classes"] == pytest.approx((50.0 + 0.0) / 2)
    assert out["present"] == 1


def _detectron2_sem_seg(preds: list, gts: list, k: int, ignore: int) -> dict[str, float]:
    """detectron2's SemSegEvaluator.evaluate, step by step: confusion indexed [pred, gt] with an
    extra row/column K for ignored ground truth, sums over the K×K block."""
    conf = np.zeros((k + 1, k + 1), dtype=np.int64)
    for pred, gt in zip(preds, gts, strict=True):
        gt = np.where(gt == ignore, k, gt)
        flat = np.bincount((k + 1) * pred.reshape(-1) + gt.reshape(-1), minlength=conf.size)
        conf += flat.reshape(conf.shape)
    acc = np.full(k, np.nan)
    iou = np.full(k, np.nan)
    tp = conf.diagonal()[:-1].astype(float)
    pos_gt = conf[:-1, :-1].sum(axis=0).astype(float)
    pos_pred = conf[:-1, :-1].sum(axis=1).astype(float)
    acc_valid = pos_gt > 0
    acc[acc_valid] = tp[acc_valid] / pos_gt[acc_valid]
    union = pos_gt + pos_pred - tp
    iou_valid = acc_valid & (union > 0)
    iou[iou_valid] = tp[iou_valid] / union[iou_valid]
    weights = pos_gt / pos_gt.sum()
    return {
        "mIoU": 100 * iou[iou_valid].mean(),
        "fwIoU": 100 * float(np.sum(iou[iou_valid] * weights[iou_valid])),
        "mAcc": 100 * acc[acc_valid].mean(),
        "aAcc": 100 * tp.sum() / pos_gt.sum(),
    }


def test_semantic_metrics_equal_detectron2s_on_maps_with_absent_classes() -> None:
    rng = np.random.default_rng(3)
    k, ignore = 12, 255
    gts = [rng.integers(0, 6, (20, 30)) for _ in range(4)]  # classes 6..11 never in the gt
    for gt in gts:
        gt[rng.uniform(size=gt.shape) < 0.1] = ignore
    noise = [rng.integers(0, k, g.shape) for g in gts]
    preds = [
        np.where(rng.uniform(size=g.shape) < 0.6, g, n) for g, n in zip(gts, noise, strict=True)
    ]
    preds = [np.where(p == ignore, 0, p) for p in preds]
    ours = semantic_metrics(preds, gts, num_classes=k, ignore_index=ignore)
    ref = _detectron2_sem_seg(preds, gts, k, ignore)
    for key in ("mIoU", "fwIoU", "mAcc", "aAcc"):
        assert ours[key] == pytest.approx(ref[key]), key
    assert ours["present"] == 6
    assert ours["mIoU_all_classes"] < ours["mIoU"]  # predicted-absent classes count as 0 there


def test_streaming_equals_one_concatenated_image() -> None:
    rng = np.random.default_rng(0)
    k = 5
    gts = [rng.integers(0, k, size=(7 + i, 9)) for i in range(4)]
    preds = [np.where(rng.random(g.shape) < 0.6, g, rng.integers(0, k, size=g.shape)) for g in gts]
    for g in gts:
        g[rng.random(g.shape) < 0.1] = 255
    streamed = semantic_metrics(iter(preds), (g for g in gts), num_classes=k)
    big = semantic_metrics(
        [np.concatenate(preds, axis=0)], [np.concatenate(gts, axis=0)], num_classes=k
    )
    assert streamed["confusion"] == big["confusion"]
    assert streamed["mIoU"] == pytest.approx(big["mIoU"])
    assert streamed["aAcc"] == pytest.approx(big["aAcc"])
    assert streamed["images"] == 4


def test_meter_matches_a_direct_computation_on_random_maps() -> None:
    rng = np.random.default_rng(1)
    k = 4
    gt = rng.integers(0, k, size=(30, 30))
    pred = rng.integers(0, k, size=(30, 30))
    meter = SemanticMeter(k)
    meter.update(pred, gt)
    out = meter.compute()
    for c in range(k):
        inter = np.sum((gt == c) & (pred == c))
        union = np.sum((gt == c) | (pred == c))
        assert out["IoU"][c] == pytest.approx(inter / union * 100)


def test_uint16_maps_with_65535_ignore() -> None:
    gt = np.array([[0, 65535], [800, 800]], dtype=np.uint16)
    pred = np.array([[0, 3], [800, 1]], dtype=np.uint16)
    out = semantic_metrics([pred], [gt], num_classes=847, ignore_index=65535)
    assert out["IoU"][0] == 100.0
    assert out["IoU"][800] == pytest.approx(50.0)
    assert out["pixels"] == 3


@pytest.mark.parametrize(
    ("pred", "gt", "message"),
    [
        (np.array([[0, 3]]), np.array([[0, 1]]), "pred labels outside"),
        (np.array([[0, -1]]), np.array([[0, 1]]), "pred labels outside"),
        (np.array([[0, 1]]), np.array([[0, 7]]), "gt labels outside"),
        (np.array([[0, 1, 1]]), np.array([[0, 1]]), "equal shape"),
        (np.array([[0.0, 1.0]]), np.array([[0, 1]]), "integer labels"),
    ],
)
def test_bad_labels_raise(pred: np.ndarray, gt: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        semantic_metrics([pred], [gt], num_classes=3)


def test_length_mismatch_and_bad_ignore_index_raise() -> None:
    gt = np.zeros((2, 2), dtype=np.int64)
    with pytest.raises(ValueError, match="differ in length"):
        semantic_metrics([gt, gt], [gt], num_classes=2)
    with pytest.raises(ValueError, match="ignore_index"):
        SemanticMeter(num_classes=300, ignore_index=255)


def test_empty_stream_gives_nan() -> None:
    out = semantic_metrics([], [], num_classes=2)
    assert math.isnan(out["mIoU"]) and math.isnan(out["aAcc"])


# ------------------------------------------------------------------ mask mAP


def _square(h: int, w: int, x: int, y: int, side: int) -> np.ndarray:
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[y : y + side, x : x + side] = 1
    return mask


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


@pytest.fixture
def gt_coco() -> dict:
    """Two 20×20 images; image 1 holds one 10×10 square of category 0 ("head") and one of
    category 1 ("tail"); image 2 holds one "head"; category 2 has no ground truth."""
    masks = {
        1: [(0, _square(20, 20, 0, 0, 10)), (1, _square(20, 20, 10, 10, 8))],
        2: [(0, _square(20, 20, 5, 5, 10))],
    }
    annotations: list[dict] = []
    for image_id, items in masks.items():
        for cat, mask in items:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cat,
                    "segmentation": _rle(mask),
                    "area": float(mask.sum()),
                    "bbox": list(mask_utils.toBbox(mask_utils.encode(np.asfortranarray(mask)))),
                    "iscrowd": 0,
                }
            )
    return {
        "images": [{"id": i, "height": 20, "width": 20, "file_name": f"{i}.png"} for i in (1, 2)],
        "categories": [
            {"id": 0, "name": "head"},
            {"id": 1, "name": "tail"},
            {"id": 2, "name": "x"},
        ],
        "annotations": annotations,
    }


def _perfect(gt: dict) -> list[dict]:
    return [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "segmentation": a["segmentation"],
            "score": 0.9,
        }
        for a in gt["annotations"]
    ]


def test_mask_map_perfect_is_100(gt_coco: dict) -> None:
    out = mask_map(_perfect(gt_coco), gt_coco)
    assert out["mAP"] == pytest.approx(100.0)
    assert out["mAP50"] == pytest.approx(100.0)
    assert out["mAP75"] == pytest.approx(100.0)
    assert out["per_category"]["head"] == pytest.approx(100.0)
    assert math.isnan(out["per_category"]["x"])
    assert "Average Precision" in out["summary"]


def test_mask_map_shifted_mask_gives_known_ap(gt_coco: dict) -> None:
    preds = _perfect(gt_coco)
    # Shift image 1's "head" square by 2 px: IoU = 80 / 120 = 0.667. "head" has 2 GT masks.
    # At t <= 0.65 (4 thresholds) both are matched → AP 1. At t >= 0.7 (6 thresholds) the
    # higher-scored shifted mask is a false positive, image 2's a true positive → precision 1/2
    # at recall 1/2, so the interpolated precision is 0.5 at recall points r <= 0.5, 0 above.
    preds[0]["segmentation"] = _rle(_square(20, 20, 2, 0, 10))
    preds[0]["score"] = 0.95
    out = mask_map(preds, gt_coco)
    recall_points = np.linspace(0, 1, 101)
    high = np.sum(recall_points <= 0.5) * 0.5 / 101
    expected_head = (4 * 1.0 + 6 * high) / 10 * 100
    assert out["per_category"]["head"] == pytest.approx(expected_head, abs=1e-6)
    assert out["per_category"]["tail"] == pytest.approx(100.0)
    assert out["mAP50"] == pytest.approx(100.0)
    assert out["mAP"] == pytest.approx((expected_head + 100.0) / 2, abs=1e-6)


def test_mask_map_single_shifted_mask(gt_coco: dict) -> None:
    one = {
        "images": gt_coco["images"][:1],
        "categories": gt_coco["categories"],
        "annotations": [gt_coco["annotations"][0]],
    }
    pred = [
        {
            "image_id": 1,
            "category_id": 0,
            "segmentation": _rle(_square(20, 20, 2, 0, 10)),
            "score": 0.5,
        }
    ]
    out = mask_map(pred, one)
    assert out["mAP"] == pytest.approx(40.0)  # IoU 2/3 passes 4 of the 10 thresholds
    assert out["mAP50"] == pytest.approx(100.0)
    assert out["mAP75"] == pytest.approx(0.0)


def test_mask_map_false_positive_ranked_first_halves_ap(gt_coco: dict) -> None:
    preds = _perfect(gt_coco)
    fp_low = dict(preds[1], segmentation=_rle(_square(20, 20, 0, 12, 6)), score=0.1)
    assert mask_map([*preds, fp_low], gt_coco)["per_category"]["tail"] == pytest.approx(100.0)
    fp_high = dict(fp_low, score=0.99)
    tail = mask_map([*preds, fp_high], gt_coco)["per_category"]["tail"]
    assert tail == pytest.approx(50.0)  # precision 1/2 at recall 1 for every recall point


def test_mask_map_empty_predictions_is_zero(gt_coco: dict) -> None:
    out = mask_map([], gt_coco)
    assert out["mAP"] == 0.0
    assert out["per_category"]["head"] == 0.0
    assert math.isnan(out["per_category"]["x"])


def test_mask_map_reads_json_and_polygons(tmp_path, gt_coco: dict) -> None:
    # polygon ground truth without "area": computed from the mask
    gt_coco["annotations"][2]["segmentation"] = [[5, 5, 15, 5, 15, 15, 5, 15]]
    del gt_coco["annotations"][2]["area"]
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt_coco))
    preds = _perfect(gt_coco)
    h = mask_utils.frPyObjects(gt_coco["annotations"][2]["segmentation"], 20, 20)
    rle = mask_utils.merge(h)
    rle["counts"] = rle["counts"].decode("ascii")
    preds[2]["segmentation"] = rle
    assert mask_map(preds, path)["mAP"] == pytest.approx(100.0)


def test_mask_map_rejects_unknown_ids_and_polygons(gt_coco: dict) -> None:
    bad_image = dict(_perfect(gt_coco)[0], image_id=99)
    with pytest.raises(ValueError, match="image_id 99"):
        mask_map([bad_image], gt_coco)
    bad_cat = dict(_perfect(gt_coco)[0], category_id=42)
    with pytest.raises(ValueError, match="category_id 42"):
        mask_map([bad_cat], gt_coco)
    polygon = dict(_perfect(gt_coco)[0], segmentation=[[0, 0, 5, 0, 5, 5]])
    with pytest.raises(ValueError, match="RLE"):
        mask_map([polygon], gt_coco)
