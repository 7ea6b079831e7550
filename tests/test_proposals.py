"""Proposals: real MobileSAM grid proposals on solid shapes, user masks, oracle regions, recall."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from use_core.infer.given_masks import label_map_regions, load_user_masks
from use_core.infer.proposals import (
    best_iou_per_gt,
    generate_proposals,
    point_rounds,
    proposal_recall,
)
from use_core.ops.rle import encode_masks


def _shapes_scene() -> tuple[np.ndarray, np.ndarray]:
    """A 192×256 grey image with three solid shapes; returns (image, gt masks (3, H, W))."""
    canvas = Image.new("RGB", (256, 192), (128, 128, 128))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([20, 30, 90, 110], fill=(220, 30, 30))
    draw.ellipse([130, 20, 220, 110], fill=(30, 60, 220))
    draw.polygon([(60, 180), (130, 125), (200, 180)], fill=(40, 200, 60))
    image = np.asarray(canvas)
    colours = [(220, 30, 30), (30, 60, 220), (40, 200, 60)]
    gt = np.stack([(image == c).all(axis=2) for c in colours])
    return image, gt


@pytest.fixture(scope="module")
def sam(mobile_sam_checkpoint: Path) -> Any:
    from use_core.config import ModelSpec
    from use_core.pretrained.registry import load_spec

    spec = ModelSpec(kind="mobile_sam", name="vit_t", pretrained=str(mobile_sam_checkpoint))
    return load_spec("sam", spec, "cpu")


def test_grid_proposals_recover_solid_shapes_with_one_encoder_pass(sam: Any) -> None:
    from use_core.sam.masks import embed_image

    image, gt = _shapes_scene()
    calls = []
    hook = sam.image_encoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        props = generate_proposals(sam, image, points_per_side=8, points_per_batch=16)
        assert len(calls) == 1  # one embedding for all 64 points
        best = best_iou_per_gt(props.masks, gt)
        assert (best >= 0.8).all(), best
        assert props.masks.dtype == bool and props.masks.shape[1:] == gt.shape[1:]
        assert np.all(np.diff(props.scores) <= 0)  # sorted by predicted IoU
        assert (props.scores >= 0.88).all() and (props.stability >= 0.95).all()
        assert props.stats["decoded"] <= 64
        # A shared embedding is not recomputed, and gives the same proposals.
        emb = embed_image(sam, image)
        calls.clear()
        again = generate_proposals(sam, image, points_per_side=8, embedding=emb)
        assert calls == []
        assert np.array_equal(again.masks, props.masks)
    finally:
        hook.remove()
    with pytest.raises(ValueError, match="embedding is for"):
        generate_proposals(sam, image[:100], 4, embedding=emb)


def test_point_rounds_partition_the_grid() -> None:
    for n in (1, 5, 16, 32):
        rounds = point_rounds(n)
        flat = np.concatenate(rounds)
        assert sorted(flat.tolist()) == list(range(n * n))
        assert all(r.size for r in rounds)
    assert [len(r) for r in point_rounds(16)] == [16, 48, 192]


def test_user_masks_from_rle_json(tmp_path: Path) -> None:
    masks = np.zeros((3, 10, 12), dtype=bool)
    masks[0, 2:5, 3:9] = True
    masks[2, 6:, :4] = True  # mask 1 stays empty
    rles = encode_masks(masks)
    (tmp_path / "list.json").write_text(json.dumps(rles))
    props = load_user_masks(tmp_path / "list.json", (10, 12))
    assert props.source == "user" and len(props) == 2
    assert np.array_equal(props.masks, masks[[0, 2]])
    assert props.rejected == [(1, "empty mask")]
    results = [{"image_id": 1, "segmentation": r, "score": 0.5} for r in rles]
    (tmp_path / "coco.json").write_text(json.dumps({"annotations": results}))
    assert np.array_equal(load_user_masks(tmp_path / "coco.json", (10, 12)).masks, masks[[0, 2]])
    uncompressed = {"size": [10, 12], "counts": [20, 5, 95]}  # column-major runs
    (tmp_path / "raw.json").write_text(json.dumps([uncompressed]))
    raw = load_user_masks(tmp_path / "raw.json", (10, 12)).masks[0]
    assert raw.sum() == 5 and raw[:5, 2].all()
    with pytest.raises(ValueError, match="size"):
        load_user_masks(tmp_path / "list.json", (10, 13))
    (tmp_path / "bad.json").write_text(json.dumps([{"counts": "x"}]))
    with pytest.raises(ValueError, match="entry 0"):
        load_user_masks(tmp_path / "bad.json", (10, 12))


def test_user_masks_from_png_label_map(tmp_path: Path) -> None:
    labels = np.zeros((8, 9), dtype=np.uint8)
    labels[:4, :4] = 3
    labels[5:, 5:] = 7
    Image.fromarray(labels).save(tmp_path / "seg.png")
    props = load_user_masks(tmp_path / "seg.png", (8, 9))
    assert len(props) == 2
    assert np.array_equal(props.masks[0], labels == 3)
    assert np.array_equal(props.masks[1], labels == 7)
    with_bg = load_user_masks(tmp_path / "seg.png", (8, 9), background=None)
    assert len(with_bg) == 3
    with pytest.raises(ValueError, match="label map is"):
        load_user_masks(tmp_path / "seg.png", (9, 9))


def test_label_map_regions_split_components_and_skip_ignore() -> None:
    labels = np.array(
        [
            [1, 1, 0, 2],
            [0, 0, 0, 2],
            [1, 0, 255, 255],
        ]
    )
    masks, classes = label_map_regions(labels, ignore_index=255)
    assert classes.tolist() == [0, 1, 1, 2]  # class 1 has two separate regions
    assert masks.sum(axis=(1, 2)).tolist() == [5, 2, 1, 2]
    assert not masks[:, labels == 255].any()


def test_proposal_recall_hand_case() -> None:
    gt = np.zeros((2, 10, 10), dtype=bool)
    gt[0, :5] = True
    gt[1, 5:, 5:] = True
    good = gt[0].copy()
    good[5, :] = True  # IoU 50/60
    half = np.zeros((10, 10), dtype=bool)
    half[5:, 5:8] = True  # IoU 15/25 with gt[1]
    props = np.stack([good, half])
    assert np.allclose(best_iou_per_gt(props, gt), [50 / 60, 15 / 25])
    assert proposal_recall(props, gt, 0.5) == 1.0
    assert proposal_recall(props, gt, 0.7) == 0.5
    assert proposal_recall(props[:0], gt) == 0.0
    assert np.isnan(proposal_recall(props, gt[:0]))
