"""Box prompts → masks with the real MobileSAM on a synthetic scene of solid shapes."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
import torch
from segment_anything import SamPredictor
from segment_anything.utils.amg import calculate_stability_score
from segment_anything.utils.transforms import ResizeLongestSide

from use_core.sam.masks import embed_image, masks_from_boxes

SIZE = 448


@pytest.fixture(scope="module")
def sam(mobile_sam_checkpoint):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # timm registry overwrite notices from mobile_sam
        from mobile_sam import sam_model_registry

        return sam_model_registry["vit_t"](checkpoint=str(mobile_sam_checkpoint)).eval()


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """A 448×448 RGB image with a circle, a rectangle, a triangle and an ellipse."""
    img = np.full((SIZE, SIZE, 3), 235, np.uint8)
    canvases = [np.zeros((SIZE, SIZE), np.uint8) for _ in range(4)]
    cv2.circle(canvases[0], (120, 120), 70, 1, -1)
    cv2.rectangle(canvases[1], (250, 60), (400, 180), 1, -1)
    cv2.fillPoly(canvases[2], [np.array([[60, 420], [180, 250], [300, 420]])], 1)
    cv2.ellipse(canvases[3], (370, 330), (50, 80), 20, 0, 360, 1, -1)
    shapes = [c.astype(bool) for c in canvases]
    colours = [(220, 30, 30), (30, 160, 40), (40, 60, 200), (230, 180, 20)]
    for m, colour in zip(shapes, colours, strict=True):
        img[m] = colour
    boxes = []
    for m in shapes:
        ys, xs = np.nonzero(m)
        boxes.append([xs.min() - 3, ys.min() - 3, xs.max() + 4, ys.max() + 4])
    return img, shapes, np.asarray(boxes, dtype=np.float64)


@pytest.fixture(scope="module")
def scene_embedding(sam, scene):
    return embed_image(sam, scene[0])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.slow
def test_masks_match_shapes_with_one_encoder_call(sam, scene) -> None:
    img, shapes, boxes = scene
    calls = []
    handle = sam.image_encoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        res = masks_from_boxes(sam, img, boxes, box_chunk=3)  # 2 decoder chunks
    finally:
        handle.remove()
    assert len(calls) == 1
    assert res.rejected == []
    assert res.box_index.tolist() == [0, 1, 2, 3]
    assert res.masks.shape == (4, SIZE, SIZE) and res.masks.dtype == bool
    for k, i in enumerate(res.box_index):
        assert _iou(res.masks[k], shapes[i]) >= 0.9, f"shape {i}"
    assert np.all(res.stability >= 0.6) and np.all(res.pred_iou >= 0.6)
    assert not res.whole_image.any()
    assert res.embedding is not None and res.embedding.original_size == (SIZE, SIZE)


def test_cached_embedding_skips_encoder(sam, scene, scene_embedding) -> None:
    img, shapes, boxes = scene
    emb = scene_embedding
    calls = []
    handle = sam.image_encoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        res = masks_from_boxes(sam, img, boxes[:2], image_embedding=emb)
    finally:
        handle.remove()
    assert calls == [] and res.embedding is emb
    assert _iou(res.masks[0], shapes[0]) >= 0.9
    with pytest.raises(ValueError):
        masks_from_boxes(sam, img[:100], boxes[:1], image_embedding=emb)


@pytest.mark.slow
def test_choice_matches_stock_sam_full_resolution(sam, scene, scene_embedding, monkeypatch) -> None:
    """Same candidate as stock SAM ranking all three at full resolution, and the same mask,
    while upsampling far fewer than the 3 candidates per box."""
    img, _, boxes = scene
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 300, size=(12, 2))
    extra = np.concatenate([xy, xy + rng.uniform(30, 140, size=(12, 2))], axis=1)
    all_boxes = np.concatenate([boxes, extra])
    upsampled: list[int] = []
    stock_postprocess = sam.postprocess_masks

    def counting_postprocess(masks, *args):
        upsampled.append(masks.shape[0] * masks.shape[1])
        return stock_postprocess(masks, *args)

    monkeypatch.setattr(sam, "postprocess_masks", counting_postprocess)
    res = masks_from_boxes(
        sam,
        img,
        all_boxes,
        pred_iou_threshold=0.0,
        stability_threshold=0.0,
        min_region_area=0,
        image_embedding=scene_embedding,
    )
    monkeypatch.undo()
    assert res.box_index.tolist() == list(range(len(all_boxes)))
    assert len(all_boxes) <= sum(upsampled) < 2 * len(all_boxes)

    predictor = SamPredictor(sam)
    predictor.set_image(img)
    tboxes = ResizeLongestSide(sam.image_encoder.img_size).apply_boxes(all_boxes, img.shape[:2])
    with torch.inference_mode():
        logits, _, _ = predictor.predict_torch(
            None, None, boxes=torch.as_tensor(tboxes, dtype=torch.float32), return_logits=True
        )
        stock_stab = calculate_stability_score(logits, sam.mask_threshold, 1.0).numpy()
    stock_best = stock_stab.argmax(axis=1)
    rows = np.arange(len(all_boxes))
    assert res.candidate.tolist() == stock_best.tolist()
    np.testing.assert_allclose(res.stability, stock_stab[rows, stock_best], atol=1e-6)
    for k in rows:
        stock_mask = (logits[k, stock_best[k]] > sam.mask_threshold).numpy()
        assert _iou(res.masks[k], stock_mask) > 0.98, k


def test_whole_image_box_needs_no_sam(scene) -> None:
    img, _, _ = scene
    boxes = np.array([[0, 0, SIZE, SIZE], [-10, -10, SIZE + 5, 0.95 * SIZE]], dtype=float)
    res = masks_from_boxes(None, img, boxes)
    assert res.box_index.tolist() == [0, 1]
    assert res.masks.all() and res.whole_image.all()
    assert res.stability.tolist() == [1.0, 1.0] and res.candidate.tolist() == [-1, -1]
    assert res.embedding is None
    with pytest.raises(ValueError, match="need SAM"):
        masks_from_boxes(None, img, np.array([[10.0, 10.0, 50.0, 50.0]]))


def test_bad_boxes_are_rejected_with_reasons(sam, scene, scene_embedding) -> None:
    img, shapes, boxes = scene
    bad = np.array(
        [
            [np.nan, 0, 10, 10],
            [50, 50, 40, 80],  # x1 < x0
            [50, 50, 50, 80],  # zero width
            [500, 500, 600, 600],  # outside the image
            [-20, -20, -5, 30],  # outside (left)
        ]
    )
    partly_outside = boxes[1] + np.array([0, -100, 60, 0])  # rectangle box sticking out
    all_boxes = np.concatenate([bad, partly_outside[None]])
    res = masks_from_boxes(sam, img, all_boxes, image_embedding=scene_embedding)
    reasons = dict(res.rejected)
    assert sorted(reasons) == [0, 1, 2, 3, 4]
    assert "non-finite" in reasons[0] and "degenerate" in reasons[1]
    assert "degenerate" in reasons[2] and "outside" in reasons[3] and "outside" in reasons[4]
    assert res.box_index.tolist() == [5]
    assert _iou(res.masks[0], shapes[1]) >= 0.9
    with pytest.raises(ValueError):
        masks_from_boxes(sam, img, np.zeros((2, 3)))
    with pytest.raises(ValueError):
        masks_from_boxes(sam, img.astype(np.float32), boxes)


def test_thresholds_reject_and_account_for_every_box(sam, scene, scene_embedding) -> None:
    img, _, boxes = scene
    kw = {"image_embedding": scene_embedding}
    res = masks_from_boxes(sam, img, boxes, pred_iou_threshold=1.5, stability_threshold=0.0, **kw)
    assert len(res.masks) == 0 and res.masks.shape == (0, SIZE, SIZE)
    assert [i for i, _ in res.rejected] == [0, 1, 2, 3]
    assert all("predicted IoU" in r for _, r in res.rejected)
    res = masks_from_boxes(sam, img, boxes, pred_iou_threshold=0.0, stability_threshold=1.01, **kw)
    assert all("stability" in r for _, r in res.rejected) and len(res.rejected) == 4


def test_null_thresholds_keep_what_a_threshold_drops(sam, scene, scene_embedding) -> None:
    """``None`` turns a filter off: boxes rejected by a threshold above their scores are kept."""
    img, shapes, boxes = scene
    kw = {"image_embedding": scene_embedding}
    strict = masks_from_boxes(
        sam, img, boxes, pred_iou_threshold=1.0, stability_threshold=1.0, **kw
    )
    assert len(strict.masks) == 0 and len(strict.rejected) == 4
    off = masks_from_boxes(sam, img, boxes, pred_iou_threshold=None, stability_threshold=None, **kw)
    assert off.box_index.tolist() == [0, 1, 2, 3] and not off.rejected
    assert min(_iou(m, shapes[k]) for k, m in zip(off.box_index, off.masks, strict=True)) >= 0.8
    # each None disables only its own filter
    iou_off = masks_from_boxes(
        sam, img, boxes, pred_iou_threshold=None, stability_threshold=1.01, **kw
    )
    assert all("stability" in r for _, r in iou_off.rejected) and len(iou_off.rejected) == 4
    stab_off = masks_from_boxes(
        sam, img, boxes, pred_iou_threshold=1.01, stability_threshold=None, **kw
    )
    assert all("predicted IoU" in r for _, r in stab_off.rejected) and len(stab_off.rejected) == 4


@pytest.mark.slow
def test_small_regions_cleaned(sam) -> None:
    """A hole smaller than min_region_area is filled; a larger one is kept."""
    img = np.full((SIZE, SIZE, 3), 235, np.uint8)
    img[100:300, 100:300] = (200, 40, 40)
    img[190:196, 190:196] = 235  # 36-px hole
    box = np.array([[97.0, 97.0, 303.0, 303.0]])
    filled_res = masks_from_boxes(sam, img, box, min_region_area=64)
    filled = filled_res.masks[0]
    raw = masks_from_boxes(sam, img, box, min_region_area=0, image_embedding=filled_res.embedding)
    raw = raw.masks[0]
    assert filled[190:196, 190:196].all()
    assert filled.sum() >= raw.sum()
