"""Mask NMS: hand cases, agreement with a pairwise reference loop, text merging."""

from __future__ import annotations

import numpy as np
import pytest

from use_core.ops import nms as nms_module
from use_core.ops.nms import mask_iou_matrix, mask_nms, merge_texts, pack_crops


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


# --- the bit-packed, pruned path against plain references -----------------------------------


def _random_shapes(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """Ellipses, rectangles, edge-touching and word-straddling shapes, copies, nests, empties."""
    yy, xx = np.mgrid[:h, :w]
    masks = np.zeros((n, h, w), dtype=bool)
    for k in range(n):
        kind = rng.integers(0, 6)
        if kind == 0:  # ellipse, possibly cut by the border
            cy, cx = rng.uniform(-5, h + 5), rng.uniform(-5, w + 5)
            ry, rx = rng.uniform(1, h / 2), rng.uniform(1, w / 2)
            masks[k] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        elif kind == 1:  # rectangle touching the right / bottom edge (last, padded word)
            masks[k, rng.integers(0, h) :, rng.integers(0, w) :] = True
        elif kind == 2:  # thin column around a 64-pixel word boundary
            x = int(rng.choice([63, 64, 127, 128])) % w
            masks[k, : rng.integers(1, h + 1), max(0, x - 1) : x + 1] = True
        elif kind == 3 and k > 0:  # exact copy, or a copy with a few pixels flipped
            masks[k] = masks[rng.integers(0, k)]
            if rng.random() < 0.5:
                masks[k] ^= rng.random((h, w)) < 0.01
        elif kind == 4 and k > 0:  # eroded (nested) copy
            src = masks[rng.integers(0, k)]
            masks[k] = src & np.roll(src, 1, axis=0) & np.roll(src, 1, axis=1)
        # kind 5 (or a copy with nothing to copy): empty mask
    return masks


@pytest.mark.parametrize(("seed", "h", "w"), [(10, 37, 70), (11, 64, 64), (12, 50, 130)])
def test_packed_path_matches_pairwise_reference_on_adversarial_shapes(
    seed: int, h: int, w: int
) -> None:
    """Odd widths (padded last word), word-boundary shapes, duplicates, nests, empty masks."""
    rng = np.random.default_rng(seed)
    masks = _random_shapes(rng, 45, h, w)
    assert not masks.reshape(len(masks), -1).any(axis=1).all()  # some empty masks included
    scores = rng.integers(0, 4, len(masks)).astype(float)  # many ties
    for thr in (0.0, 0.25, 0.5, 0.7, 0.9, 1.0):
        assert mask_nms(masks, scores, thr) == _reference_nms(masks, scores, thr), thr


def test_candidate_pairs_contain_every_pair_above_the_threshold() -> None:
    """The pruning (box overlap, area ratio, overlap area) never drops a pair with IoU > t."""
    rng = np.random.default_rng(20)
    masks = _random_shapes(rng, 80, 40, 90)
    packed = pack_crops(masks)
    iou = mask_iou_matrix(masks)
    np.fill_diagonal(iou, 0.0)
    for thr in (0.0, 0.3, 0.7, 0.95):
        cand = nms_module._candidate_pairs(packed.boxes, packed.area, thr)
        assert not np.any((iou > thr) & ~cand), thr
        assert cand.sum() < (iou > 0).sum() or thr == 0.0  # and it does prune


@pytest.mark.parametrize("chunk", [1, 7, 32])
def test_pack_crops_boxes_areas_and_bits_are_exact(monkeypatch, chunk: int) -> None:
    """Boxes, areas, packed box crops and their positions round-trip, whatever the chunk."""
    monkeypatch.setattr(nms_module, "_PACK_CHUNK", chunk)
    rng = np.random.default_rng(21)
    masks = _random_shapes(rng, 60, 33, 150)
    packed = pack_crops(masks)
    np.testing.assert_array_equal(packed.area, masks.sum(axis=(1, 2)))
    assert packed.image_words == (33, 3) and packed.words.size == packed.sizes.sum()
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        y0, y1, x0, x1 = packed.boxes[i]
        if not ys.size:
            assert (y0, y1, x0, x1) == (0, 0, 0, 0) and packed.sizes[i] == 0
            continue
        assert (y0, y1, x0, x1) == (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1)
        # the crop's words, put back at their positions, give the whole packed mask
        start = packed.offsets[i]
        span = slice(start, start + packed.sizes[i])
        image = np.zeros(33 * 3, dtype=np.uint64)
        image[packed.positions[span]] = packed.words[span]
        bits = np.unpackbits(image.reshape(33, 3).view(np.uint8), axis=1, bitorder="little")
        np.testing.assert_array_equal(bits[:, :150].astype(bool), m)
        assert not bits[:, 150:].any()
        assert packed.crop(i).shape == (y1 - y0, -(-x1 // 64) - x0 // 64)


def test_threshold_equality_across_a_word_boundary_does_not_suppress() -> None:
    """IoU exactly 0.7 with both masks straddling pixel 64 (two packed words)."""
    a = _rect(10, 200, 0, 30, 10, 100)  # 10 x 70
    b = _rect(10, 200, 0, 30, 10, 130)  # 10 x 100, IoU 700 / 1000
    assert mask_nms(np.stack([b, a]), np.array([0.2, 0.9]), 0.7) == [[1], [0]]
    assert mask_nms(np.stack([b, a]), np.array([0.2, 0.9]), 0.6999) == [[1, 0]]


def test_non_bool_masks_and_zero_sized_images() -> None:
    rng = np.random.default_rng(23)
    masks = _random_shapes(rng, 20, 30, 40)
    scores = rng.random(20)
    expected = mask_nms(masks, scores, 0.5)
    assert mask_nms(masks.astype(np.uint8) * 255, scores, 0.5) == expected
    assert mask_nms(np.zeros((3, 0, 5), bool), np.array([0.1, 0.3, 0.2]), 0.5) == [[1], [2], [0]]


def test_chunk_sizes_do_not_change_the_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    """Packing chunks that do not divide N and AND steps of any size give the same groups."""
    rng = np.random.default_rng(24)
    masks = _random_shapes(rng, 40, 48, 96)
    masks[10:20] = masks[0]  # one big group
    scores = rng.random(40)
    expected = _reference_nms(masks, scores, 0.6)
    for chunk, budget in ((1, 1), (3, 50), (64, 10**6)):  # budget 1: one crop per AND step
        monkeypatch.setattr(nms_module, "_PACK_CHUNK", chunk)
        monkeypatch.setattr(nms_module, "_GATHER_BUDGET", budget)
        assert mask_nms(masks, scores, 0.6) == expected, (chunk, budget)
