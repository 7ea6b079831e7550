"""COCO RLE wrappers: round trips, metadata, and clear errors for malformed input."""

from __future__ import annotations

import numpy as np
import pytest

from use_core.ops.rle import (
    decode_rle,
    decode_rles,
    encode_mask,
    encode_masks,
    rle_area,
    rle_bbox_xywh,
    rle_from_string,
    rle_iou_matrix,
    rle_to_string,
    run_lengths,
)


def _mask(h: int = 12, w: int = 20) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[2:7, 3:11] = True  # 5 rows x 8 columns
    m[9, 18] = True
    return m


def test_round_trip_keeps_pixels_and_stores_str_counts() -> None:
    m = _mask()
    rle = encode_mask(m)
    assert rle["size"] == [12, 20]
    assert isinstance(rle["counts"], str)
    back = decode_rle(rle, expected_hw=(12, 20))
    assert back.dtype == np.bool_ and back.shape == (12, 20)
    np.testing.assert_array_equal(back, m)


def test_stack_round_trip_and_metadata() -> None:
    rng = np.random.default_rng(0)
    masks = rng.random((3, 9, 7)) > 0.5
    rles = encode_masks(masks)
    assert len(rles) == 3
    np.testing.assert_array_equal(decode_rles(rles), masks)
    assert [rle_area(r) for r in rles] == [int(m.sum()) for m in masks]
    assert decode_rles([], expected_hw=(4, 5)).shape == (0, 4, 5)


def test_area_and_bbox_are_xywh_pixels() -> None:
    rle = encode_mask(_mask())
    assert rle_area(rle) == 5 * 8 + 1
    assert rle_bbox_xywh(rle) == [3.0, 2.0, 16.0, 8.0]  # x from 3 to 18 inclusive, y from 2 to 9
    assert rle_bbox_xywh(encode_mask(np.zeros((4, 4), bool))) == [0.0, 0.0, 0.0, 0.0]


def test_string_helpers() -> None:
    rle = encode_mask(_mask())
    assert rle_to_string(rle["counts"].encode()) == rle["counts"]
    again = rle_from_string(rle["counts"], 12, 20)
    np.testing.assert_array_equal(decode_rle(again), _mask())


def test_run_lengths_match_column_major_runs() -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        mask = rng.random((h, w)) > rng.random()
        flat = mask.T.reshape(-1)  # COCO runs are column-major and start with a run of 0s
        change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
        bounds = np.concatenate([[0], change, [flat.size]])
        expected = np.diff(bounds).tolist()
        if flat[0]:
            expected = [0, *expected]
        assert run_lengths(encode_mask(mask)["counts"]) == expected


def test_short_runs_are_rejected_before_pycocotools_sees_them() -> None:
    # pycocotools would decode these into uninitialised memory (and its iou can hang on them)
    small = encode_mask(np.ones((5, 5), bool))
    with pytest.raises(ValueError, match="runs cover 25 pixels, a 24x32 mask has 768"):
        decode_rle({"size": [24, 32], "counts": small["counts"]})
    with pytest.raises(ValueError, match="runs cover 25 pixels"):
        rle_iou_matrix([{"size": [24, 32], "counts": small["counts"]}] * 2)


def test_iou_matrix() -> None:
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[:, :6] = True
    b[:, 4:] = True  # overlap 2 columns of 10 → IoU 20 / 100
    iou = rle_iou_matrix(encode_masks(np.stack([a, b])))
    assert iou.shape == (2, 2)
    assert iou[0, 1] == pytest.approx(0.2)
    assert iou[0, 0] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("rle", "message"),
    [
        ({"size": [3, 3]}, "'size' and 'counts'"),
        ({"size": [3], "counts": "9"}, "'size' must be"),
        ({"size": [-1, 3], "counts": "9"}, "'size' must be"),
        ({"size": [3, 3], "counts": [0, 9]}, "uncompressed"),
        ({"size": [3, 3], "counts": ""}, "empty 'counts'"),
        ({"size": [3, 3], "counts": "zzzz"}, "malformed RLE counts"),
        ({"size": [3, 3], "counts": "é"}, "not an ASCII"),
    ],
)
def test_malformed_rle_raises_clear_value_error(rle: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_rle(rle)


def test_wrong_size_raises() -> None:
    rle = encode_mask(_mask())
    with pytest.raises(ValueError, match=r"does not match the expected image size \[20, 12\]"):
        decode_rle(rle, expected_hw=(20, 12))
    # runs that do not add up to H*W are caught by pycocotools and reported by us
    with pytest.raises(ValueError, match="malformed RLE counts"):
        decode_rle({"size": [5, 5], "counts": rle["counts"]})


def test_encode_rejects_wrong_shapes_and_values() -> None:
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        encode_mask(np.zeros((2, 3, 4), bool))
    with pytest.raises(ValueError, match="boolean"):
        encode_masks(np.full((1, 2, 2), 3, dtype=np.uint8))
