"""The great-expectations gate on the pairs table: a valid table passes; each defect fails
exactly the expectation that is about it, and the report says which rows."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from use_core.checks.pairs_suite import run_pairs_checks
from use_core.config import ChecksConfig
from use_core.data.pairs import PAIRS_COLUMNS
from use_core.ops.rle import encode_mask, rle_area, rle_bbox_xywh

H, W = 24, 32
NMS_IOU = 0.7


def _band(k: int, h: int = H, w: int = W) -> np.ndarray:
    mask = np.zeros((h, w), dtype=bool)
    mask[4 * k + 1 : 4 * k + 4, 2 : 10 + k] = True
    return mask


def _row(image_id: str, k: int, mask: np.ndarray) -> dict:
    rle = encode_mask(mask)
    return {
        "image_id": image_id,
        "image_path": f"images/{image_id}.png",
        "height": mask.shape[0],
        "width": mask.shape[1],
        "segment_id": k,
        "rle": rle["counts"],
        "bbox": rle_bbox_xywh(rle),
        "area": rle_area(rle),
        "texts": [f"band {k}"],
        "sources": ["shapes_vg/region"],
        "stability_score": 0.95,
        "pred_iou": 0.9,
        "provenance": "test",
    }


def valid_pairs() -> pd.DataFrame:
    """Three images with three disjoint segments each (IoU 0 between them)."""
    rows = [_row(f"s/{i}", k, _band(k)) for i in range(3) for k in range(3)]
    return pd.DataFrame(rows, columns=list(PAIRS_COLUMNS))


def _set(row: int, **values: object) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def mutate(df: pd.DataFrame) -> pd.DataFrame:
        for col, val in values.items():
            df[col] = df[col].astype(object)
            df.at[row, col] = val
        return df

    return mutate


def _overlap(df: pd.DataFrame) -> pd.DataFrame:
    # segment 1 of image s/1 becomes a copy of segment 0 enlarged by one column: IoU 8/9 ≈ 0.89
    mask = _band(0)
    mask[1:4, 10] = True
    df.loc[4] = _row("s/1", 1, mask)
    return df


def _other_size(df: pd.DataFrame) -> pd.DataFrame:
    # row 5 (image s/1) claims a 20x30 image; its own mask/box agree with that size
    df.loc[5] = _row("s/1", 2, _band(2, 20, 30))
    return df


CASES: dict[str, tuple[Callable[[pd.DataFrame], pd.DataFrame], str, int]] = {
    "empty table": (lambda d: d.iloc[:0], "table_not_empty", 0),
    "null image_id": (_set(0, image_id=None), "image_id_not_null", 1),
    "null segment_id": (_set(1, segment_id=None), "segment_id_not_null", 1),
    "duplicate key": (_set(2, segment_id=1), "image_segment_unique", 2),
    "garbage rle": (_set(3, rle="zzzz"), "rle_decodes_to_image_size", 1),
    "rle of other size": (
        _set(3, rle=encode_mask(np.ones((5, 5), bool))["counts"]),
        "rle_decodes_to_image_size",
        1,
    ),
    "zero area": (_set(4, area=0), "area_in_range", 1),
    "area above h*w": (_set(4, area=H * W + 1), "area_in_range", 1),
    "bbox past right edge": (_set(5, bbox=[20.0, 1.0, 13.0, 3.0]), "bbox_inside_image", 1),
    "bbox negative width": (_set(5, bbox=[2.0, 1.0, -3.0, 3.0]), "bbox_inside_image", 1),
    "bbox with 3 numbers": (_set(5, bbox=[2.0, 1.0, 3.0]), "bbox_inside_image", 1),
    "no texts": (_set(6, texts=[], sources=[]), "texts_non_empty", 1),
    "blank text": (_set(6, texts=["  "]), "texts_non_empty", 1),
    "sources not parallel": (_set(7, sources=["a", "b"]), "sources_parallel_to_texts", 1),
    "stability above 1": (_set(8, stability_score=1.5), "stability_score_in_unit_range", 1),
    "pred_iou below 0": (_set(8, pred_iou=-0.1), "pred_iou_in_unit_range", 1),
    "overlap above NMS IoU": (_overlap, "no_overlap_above_nms_iou", 2),
    "mixed image sizes": (_other_size, "image_size_consistent", 3),
}


def test_valid_table_passes(tmp_path: Path) -> None:
    report = run_pairs_checks(valid_pairs(), NMS_IOU, ChecksConfig())
    assert report.success, report.to_text()
    assert report.rows == 9 and report.images == 3 and not report.failed
    assert report.to_text().startswith("pairs checks PASSED: 0 of 14 expectations failed on 9 rows")
    saved = json.loads(report.to_json(tmp_path / "r" / "checks.json").read_text())
    assert saved["success"] is True and len(saved["outcomes"]) == 14


@pytest.mark.parametrize("case", list(CASES))
def test_each_defect_fails_exactly_its_expectation(case: str) -> None:
    mutate, expected, count = CASES[case]
    report = run_pairs_checks(mutate(valid_pairs()), NMS_IOU, ChecksConfig())
    assert not report.success
    assert [o.name for o in report.failed] == [expected], report.to_text()
    outcome = report.outcome(expected)
    assert outcome.unexpected_count == count
    text = report.to_text()
    assert f"[FAIL] {expected}:" in text and f"{count} unexpected" in text
    assert text.count("[FAIL]") == 1


def test_report_names_the_failing_rows(tmp_path: Path) -> None:
    df = _set(4, area=0)(_set(7, area=-5)(valid_pairs()))
    report = run_pairs_checks(df, NMS_IOU, ChecksConfig())
    outcome = report.outcome("area_in_range")
    assert outcome.unexpected_count == 2
    assert [(e["image_id"], e["segment_id"]) for e in outcome.examples] == [("s/1", 1), ("s/2", 1)]
    assert "e.g. image_id='s/1', segment_id=1" in report.to_text()
    saved = json.loads(report.to_json(tmp_path / "checks.json").read_text())
    area = next(o for o in saved["outcomes"] if o["name"] == "area_in_range")
    assert area["success"] is False and area["unexpected_count"] == 2
    assert area["examples"][0]["image_id"] == "s/1"


def test_segment_count_bounds_come_from_config() -> None:
    df = valid_pairs()
    report = run_pairs_checks(df, NMS_IOU, ChecksConfig(max_segments_per_image=2))
    assert [o.name for o in report.failed] == ["segments_per_image_in_range"]
    assert report.outcome("segments_per_image_in_range").unexpected_count == 9
    few = run_pairs_checks(
        df, NMS_IOU, ChecksConfig(min_segments_per_image=4, max_segments_per_image=10)
    )
    assert [o.name for o in few.failed] == ["segments_per_image_in_range"]
    assert run_pairs_checks(df.iloc[:7], NMS_IOU, ChecksConfig(max_segments_per_image=3)).success


def test_nms_threshold_is_the_parameter() -> None:
    df = _overlap(valid_pairs())  # IoU 8/9
    assert not run_pairs_checks(df, 0.7, ChecksConfig()).success
    assert run_pairs_checks(df, 0.9, ChecksConfig()).success


def test_missing_columns_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"missing columns \['rle'\]"):
        run_pairs_checks(valid_pairs().drop(columns=["rle"]), NMS_IOU, ChecksConfig())
