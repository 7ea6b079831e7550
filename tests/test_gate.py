"""The gate: a pairs table broken in each way the GX suite checks fails the `checks` stage with a
readable report, and the `use checks` command exits non-zero, so DVC never runs `train`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import yaml
from PIL import Image

from use_core.config import Params, parse_params
from use_core.data.pairs import PAIRS_COLUMNS, PAIRS_SCHEMA, atomic_write_parquet
from use_core.data.plan import build_plan
from use_core.ops.rle import encode_mask, rle_area, rle_bbox_xywh
from use_core.pipeline.checks import ChecksFailed, run_checks_stage
from use_core.pipeline.shards import shard_stage_key, store_for

REPO = Path(__file__).resolve().parents[1]
H, W = 24, 32


def _band(k: int, h: int = H, w: int = W) -> np.ndarray:
    mask = np.zeros((h, w), dtype=bool)
    mask[4 * k + 1 : 4 * k + 4, 2 : 10 + k] = True
    return mask


def _row(image_id: str, k: int, mask: np.ndarray) -> dict:
    rle = encode_mask(mask)
    return {
        "image_id": image_id,
        "image_path": "imgs/a.png",
        "height": mask.shape[0],
        "width": mask.shape[1],
        "segment_id": k,
        "rle": rle["counts"],
        "bbox": rle_bbox_xywh(rle),
        "area": rle_area(rle),
        "texts": [f"band {k}"],
        "sources": ["src/region"],
        "stability_score": 0.95,
        "pred_iou": 0.9,
        "provenance": "test",
    }


def _valid() -> pd.DataFrame:
    rows = [_row(f"src/{i}", k, _band(k)) for i in range(2) for k in range(3)]
    return pd.DataFrame(rows, columns=list(PAIRS_COLUMNS))


def _set(row: int, **values: object) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def mutate(df: pd.DataFrame) -> pd.DataFrame:
        for col, val in values.items():
            df[col] = df[col].astype(object)
            df.at[row, col] = val
        return df

    return mutate


def _overlap(df: pd.DataFrame) -> pd.DataFrame:
    mask = _band(0)
    mask[1:4, 10] = True
    df.loc[1] = _row("src/0", 1, mask)
    return df


# defect -> (mutation, the expectation that must fail). Nulls cannot be stored (the Parquet
# schema is non-nullable), so the stored-table cases are the semantic ones.
DEFECTS: dict[str, tuple[Callable[[pd.DataFrame], pd.DataFrame], str]] = {
    "empty table": (lambda d: d.iloc[:0], "table_not_empty"),
    "duplicate key": (_set(2, segment_id=1), "image_segment_unique"),
    "garbage rle": (_set(3, rle="zzzz"), "rle_decodes_to_image_size"),
    "rle of another size": (
        _set(3, rle=encode_mask(np.ones((5, 5), bool))["counts"]),
        "rle_decodes_to_image_size",
    ),
    "zero area": (_set(4, area=0), "area_in_range"),
    "bbox outside": (_set(5, bbox=[20.0, 1.0, 13.0, 3.0]), "bbox_inside_image"),
    "bbox with 3 numbers": (_set(5, bbox=[2.0, 1.0, 3.0]), "bbox_inside_image"),
    "no texts": (_set(0, texts=[], sources=[]), "texts_non_empty"),
    "blank text": (_set(0, texts=["   "]), "texts_non_empty"),
    "sources not parallel": (_set(1, sources=["a", "b"]), "sources_parallel_to_texts"),
    "stability above 1": (_set(2, stability_score=1.5), "stability_score_in_unit_range"),
    "pred_iou below 0": (_set(2, pred_iou=-0.1), "pred_iou_in_unit_range"),
    "overlap above NMS IoU": (_overlap, "no_overlap_above_nms_iou"),
    "mixed image sizes": (
        lambda d: d.assign(**{"height": [H] * 5 + [H + 1]}),
        "image_size_consistent",
    ),
}


@pytest.fixture()
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Params:
    """A data root with one image (a one-shard plan) and params pointing at it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "imgs").mkdir(parents=True)
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "data" / "imgs" / "a.png")
    raw = {
        "data": {
            "root": "data",
            "sources": [{"name": "src", "kind": "image_folder", "images": "imgs"}],
        },
        "checks": {"report": "reports/checks.json"},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    return parse_params(raw)


def _store_pairs(params: Params, df: pd.DataFrame) -> Path:
    """Write ``df`` as the pairs shard of the plan, bypassing the writer's structural checks
    (as a corrupted or hand-edited file on disk would)."""
    (shard,) = build_plan(params).shards
    path = store_for("nms", params).dir / f"{shard_stage_key('nms', shard, params)}.parquet"
    arrays = [pa.array(df[c].tolist(), type=PAIRS_SCHEMA.field(c).type) for c in PAIRS_COLUMNS]
    atomic_write_parquet(pa.Table.from_arrays(arrays, schema=PAIRS_SCHEMA), path)
    return path


def test_valid_table_passes_the_stage(project: Params) -> None:
    _store_pairs(project, _valid())
    result = run_checks_stage(project)
    assert result["success"] and result["rows"] == 6
    assert json.loads(Path("reports/checks.json").read_text())["success"] is True


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_each_defect_fails_the_stage_readably(project: Params, defect: str) -> None:
    mutate, expectation = DEFECTS[defect]
    _store_pairs(project, mutate(_valid()))
    with pytest.raises(ChecksFailed) as err:
        run_checks_stage(project)
    text = str(err.value)
    assert text.startswith("pairs checks FAILED")
    assert f"[FAIL] {expectation}:" in text and "report: reports/checks.json" in text
    saved = json.loads(Path("reports/checks.json").read_text())
    assert saved["success"] is False
    failed = [o["name"] for o in saved["outcomes"] if not o["success"]]
    assert expectation in failed


def _use(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    use = Path(sys.executable).with_name("use")
    return subprocess.run([str(use), *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_checks_command_exits_non_zero_so_train_never_runs(project: Params) -> None:
    _store_pairs(project, _set(3, rle="zzzz")(_valid()))
    proc = _use("checks", "--params", "params.yaml")
    assert proc.returncode == 1, proc.stderr
    assert "[FAIL] rle_decodes_to_image_size" in proc.stdout
    assert "e.g. image_id='src/1', segment_id=0" in proc.stdout
    assert "checks failed: nothing downstream runs" in proc.stderr
    # DVC runs train only after checks succeeded: train depends on the checks report
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert stages["checks"]["cmd"].startswith("python -m use_core.pipeline checks")
    assert "reports/checks.json" in stages["train"]["deps"]
    assert "data/pairs" in stages["checks"]["deps"]
