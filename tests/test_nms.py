"""Mask NMS: hand cases, agreement with a pairwise reference loop, text merging."""

from __future__ import annotations

import numpy as np
import pytest

from use_core.curation.nms import mask_iou_matrix, mask_nms, merge_texts


def _rect(h: int, w: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def _reference_nms(masks: np.ndarray, scores: np.ndarray, thr: float) -> list[list[int]]:
    """Plain pairwise greedy NMS, one IoU at a time."""

    def iou(a: np.ndarray, b: np.ndarray) -> float:
        union = np.logical_or(a, b).sum()
        return float(np.logical_and(a, b).sum() / union) if union else 0.0

    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    alive = set(order)
    groups = []
    for i in order:
        if i not in alive:
            continue
        alive.discard(i)
        group = [i]
        for j in order:
            if j in alive and iou(masks[i], masks[j]) > thr:
                alive.discard(j)
                group.append(j)
        groups.append(group)
    return groups


def test_identical_masks_merge_into_highest_score() -> None:
    m = _rect(20, 20, 2, 2, 12, 12)
    groups = mask_nms(np.stack([m, m, m]), np.array([0.5, 0.9, 0.7]), 0.7)
    assert groups == [[1, 2, 0]]


def test_disjoint_masks_all_kept() -> None:
    masks = np.stack([_rect(20, 20, 0, 0, 5, 5), _rect(20, 20, 10, 10, 15, 15)])
    assert mask_nms(masks, np.array([0.1, 0.2]), 0.0) == [[1], [0]]


def test_nested_masks() -> None:
    big = _rect(20, 20, 0, 0, 10, 10)  # area 100
    inner = _rect(20, 20, 0, 0, 9, 9)  # area 81, IoU 0.81
    small = _rect(20, 20, 0, 0, 5, 5)  # area 25, IoU 0.25 with big
    groups = mask_nms(np.stack([small, big, inner]), np.array([0.9, 0.8, 0.7]), 0.7)
    assert groups == [[0], [1, 2]]


def test_threshold_is_strict() -> None:
    a = _rect(10, 10, 0, 0, 10, 7)  # area 70
    b = _rect(10, 10, 0, 0, 10, 10)  # area 100, IoU exactly 0.7
    assert mask_iou_matrix(np.stack([a, b]))[0, 1] == pytest.approx(0.7, abs=0)
    assert mask_nms(np.stack([a, b]), np.array([1.0, 0.5]), 0.7) == [[0], [1]]
    assert mask_nms(np.stack([a, b]), np.array([1.0, 0.5]), 0.69) == [[0, 1]]


def test_ties_broken_by_index() -> None:
    m = _rect(8, 8, 0, 0, 4, 4)
    assert mask_nms(np.stack([m, m]), np.array([0.5, 0.5]), 0.5) == [[0, 1]]


def test_empty_input_and_empty_masks() -> None:
    assert mask_nms(np.zeros((0, 4, 4), bool), np.zeros(0), 0.7) == []
    empty = np.zeros((2, 4, 4), bool)
    assert mask_nms(empty, np.array([1.0, 0.0]), 0.0) == [[0], [1]]  # IoU of empty masks = 0


def test_bad_input() -> None:
    m = np.zeros((2, 4, 4), bool)
    with pytest.raises(ValueError):
        mask_nms(m, np.zeros(3), 0.7)
    with pytest.raises(ValueError):
        mask_nms(m, np.array([np.nan, 1.0]), 0.7)
    with pytest.raises(ValueError):
        mask_nms(m[0], np.zeros(4), 0.7)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_pairwise_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    h = w = 48
    masks = []
    for _ in range(60):  # random rectangles and jittered copies so that many pairs overlap
        y0, x0 = rng.integers(0, 30, size=2)
        hh, ww = rng.integers(4, 18, size=2)
        masks.append(_rect(h, w, y0, x0, y0 + hh, x0 + ww))
    masks_arr = np.stack(masks)
    masks_arr ^= rng.random(masks_arr.shape) < 0.02  # pixel noise
    scores = rng.integers(0, 10, size=len(masks)).astype(float)  # many ties
    for thr in (0.3, 0.5, 0.7):
        assert mask_nms(masks_arr, scores, thr) == _reference_nms(masks_arr, scores, thr)


def test_merge_texts_dedup_and_parallel_sources() -> None:
    groups = [[1, 0], [2]]
    texts = [["a cat", "the cat"], ["the cat", "a kitten"], ["a dog"]]
    sources = [["coco", "coco"], ["vg", "vg"], ["mllm"]]
    assert merge_texts(groups, texts, sources) == [
        (["the cat", "a kitten", "a cat"], ["vg", "vg", "coco"]),
        (["a dog"], ["mllm"]),
    ]
    with pytest.raises(ValueError):
        merge_texts([[0]], [["a"]], [["x", "y"]])


@pytest.mark.parametrize("int8_kernel", [True, False])
def test_iou_matrix_exact_over_pixel_chunks(monkeypatch, int8_kernel: bool) -> None:
    """Several pixel chunks (300x300 > one chunk), int8 kernel and float32 fallback alike."""
    import torch

    if not int8_kernel:

        def unavailable(*_args):
            raise RuntimeError("no int8 kernel")

        monkeypatch.setattr(torch, "_int_mm", unavailable, raising=False)
    rng = np.random.default_rng(3)
    masks = rng.random((6, 300, 300)) < rng.uniform(0.1, 0.9, size=(6, 1, 1))
    flat = masks.reshape(6, -1).astype(np.int64)
    inter = flat @ flat.T
    area = np.diag(inter)
    expected = inter / (area[:, None] + area[None, :] - inter)
    np.testing.assert_array_equal(mask_iou_matrix(masks), expected)


def _matrix_nms(masks: np.ndarray, scores: np.ndarray, thr: float) -> list[list[int]]:
    """Greedy NMS over the all-pairs IoU matrix (no pruning), the pruned path's oracle."""
    over = mask_iou_matrix(masks) > thr
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    alive = np.ones(len(scores), dtype=bool)
    groups = []
    for i in order:
        if alive[i]:
            alive[i] = False
            hits = [j for j in order if alive[j] and over[i, j]]
            alive[hits] = False
            groups.append([i, *hits])
    return groups


def test_pruning_never_changes_the_result_at_the_area_ratio_edge() -> None:
    """Nested masks whose IoU equals min/max area exactly, on and around the threshold."""
    h = w = 40
    inner = [_rect(h, w, 0, 0, 7, 7)]  # 49 px
    outer = [_rect(h, w, 0, 0, 7, 10), _rect(h, w, 0, 0, 10, 7), _rect(h, w, 0, 0, 5, 10)]
    masks = np.stack(inner + outer + [_rect(h, w, 0, 0, 10, 5), np.zeros((h, w), bool)])
    scores = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.5])
    for thr in (0.0, 0.49, 0.5, 0.7, 0.71, 1.0):  # 49/70 = 0.7 exactly: not suppressed at 0.7
        assert mask_nms(masks, scores, thr) == _matrix_nms(masks, scores, thr), thr


@pytest.mark.parametrize("seed", [3, 4])
def test_pruned_equals_all_pairs_on_many_ellipses(seed: int) -> None:
    rng = np.random.default_rng(seed)
    side, n = 96, 300
    yy, xx = np.mgrid[:side, :side]
    masks = np.zeros((n, side, side), dtype=bool)
    for k in range(n):
        cy, cx = rng.uniform(0, side, 2)
        ry, rx = rng.uniform(2, 30, 2)
        masks[k] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    masks[rng.integers(0, n, 20)] = masks[rng.integers(0, n, 20)]  # exact duplicates
    scores = rng.integers(0, 5, n).astype(float)
    for thr in (0.0, 0.3, 0.7, 0.95):
        assert mask_nms(masks, scores, thr) == _matrix_nms(masks, scores, thr), thr
