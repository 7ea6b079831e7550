"""The great-expectations gate on the pairs table (between curation and training).

:func:`run_pairs_checks` adds derived columns to a copy of the table (``rle_ok``, ``area_ok``,
``bbox_ok``, ``texts_ok``, ``sources_ok``, ``size_consistent``, ``max_iou_in_image``,
``segments_in_image``), validates it against an expectation suite built with GX 1.x built-in
expectations, and returns a :class:`ChecksReport` (per expectation: success, unexpected count,
a few example rows by ``image_id``/``segment_id``), writable as JSON or text.

The suite, its derived columns and its report stay together: each expectation names the
column it reads, and the report quotes the suite's own wording.
"""

from __future__ import annotations

import json
import logging
import math
import os
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from use_core.config import ChecksConfig
from use_core.ops.rle import decode_rle, rle_iou_matrix

REQUIRED_COLUMNS = (
    "image_id",
    "segment_id",
    "height",
    "width",
    "rle",
    "bbox",
    "area",
    "texts",
    "sources",
    "stability_score",
    "pred_iou",
)
MAX_EXAMPLES = 5
_BBOX_TOLERANCE_PX = 1e-6


@dataclass(frozen=True)
class _Check:
    name: str
    description: str
    kind: str  # rows | not_null | unique | true | between
    columns: tuple[str, ...]
    min_value: float | None = None
    max_value: float | None = None


def _suite_checks(nms_iou: float, checks: ChecksConfig) -> list[_Check]:
    return [
        _Check("table_not_empty", "the table has at least one row", "rows", ()),
        _Check("image_id_not_null", "image_id is present", "not_null", ("image_id",)),
        _Check("segment_id_not_null", "segment_id is present", "not_null", ("segment_id",)),
        _Check(
            "image_segment_unique",
            "(image_id, segment_id) identifies one row",
            "unique",
            ("image_id", "segment_id"),
        ),
        _Check(
            "rle_decodes_to_image_size",
            "rle decodes to a [height, width] mask",
            "true",
            ("rle_ok",),
        ),
        _Check("area_in_range", "0 < area <= height * width", "true", ("area_ok",)),
        _Check(
            "bbox_inside_image",
            "bbox is [x, y, w, h] with w, h > 0 inside the image",
            "true",
            ("bbox_ok",),
        ),
        _Check(
            "texts_non_empty",
            "texts is a non-empty list of non-empty strings",
            "true",
            ("texts_ok",),
        ),
        _Check(
            "sources_parallel_to_texts",
            "sources is a list of non-empty strings, one per text",
            "true",
            ("sources_ok",),
        ),
        _Check(
            "image_size_consistent",
            "all segments of an image share one (height, width)",
            "true",
            ("size_consistent",),
        ),
        _Check(
            "stability_score_in_unit_range",
            "0 <= stability_score <= 1",
            "between",
            ("stability_score",),
            0.0,
            1.0,
        ),
        _Check("pred_iou_in_unit_range", "0 <= pred_iou <= 1", "between", ("pred_iou",), 0.0, 1.0),
        _Check(
            "no_overlap_above_nms_iou",
            f"no two segments of an image have mask IoU > {nms_iou} (the NMS threshold)",
            "between",
            ("max_iou_in_image",),
            0.0,
            nms_iou,
        ),
        _Check(
            "segments_per_image_in_range",
            f"{checks.min_segments_per_image} <= segments per image"
            f" <= {checks.max_segments_per_image}",
            "between",
            ("segments_in_image",),
            float(checks.min_segments_per_image),
            float(checks.max_segments_per_image),
        ),
    ]


def _safe(fn: Callable[[pd.Series], bool]) -> Callable[[pd.Series], bool]:
    def wrapped(row: pd.Series) -> bool:
        try:
            return bool(fn(row))
        except (TypeError, ValueError, KeyError, OverflowError):
            return False

    return wrapped


def _rle_ok(row: pd.Series) -> bool:
    hw = (int(row["height"]), int(row["width"]))
    mask = decode_rle({"size": list(hw), "counts": row["rle"]}, expected_hw=hw)
    return mask.shape == hw


def _area_ok(row: pd.Series) -> bool:
    return 0 < int(row["area"]) <= int(row["height"]) * int(row["width"])


def _bbox_ok(row: pd.Series) -> bool:
    box = [float(v) for v in row["bbox"]]
    if len(box) != 4 or not all(math.isfinite(v) for v in box):
        return False
    x, y, w, h = box
    tol = _BBOX_TOLERANCE_PX
    return (
        w > 0
        and h > 0
        and x >= -tol
        and y >= -tol
        and x + w <= float(row["width"]) + tol
        and y + h <= float(row["height"]) + tol
    )


def _string_list_ok(values: Any) -> bool:
    items = list(values)
    return len(items) > 0 and all(isinstance(t, str) and t.strip() for t in items)


def _sources_ok(row: pd.Series) -> bool:
    sources = list(row["sources"])
    return all(isinstance(s, str) and s.strip() for s in sources) and len(sources) == len(
        list(row["texts"])
    )


def _max_iou_per_row(df: pd.DataFrame) -> np.ndarray:
    """Per row: the max mask IoU with another segment of the same image (NaN if undecodable)."""
    out = np.full(len(df), np.nan)
    positions = np.arange(len(df))
    ok = df["rle_ok"].to_numpy(dtype=bool)
    keys = np.array(
        [
            f"{i!r}|{h!r}|{w!r}"
            for i, h, w in zip(df["image_id"], df["height"], df["width"], strict=True)
        ],
        dtype=object,
    )
    for _, idx in pd.Series(positions[ok]).groupby(keys[ok]):
        rows = idx.to_numpy()
        if len(rows) == 1:
            out[rows] = 0.0
            continue
        rles = [
            {
                "size": [int(df["height"].iat[i]), int(df["width"].iat[i])],
                "counts": df["rle"].iat[i],
            }
            for i in rows
        ]
        iou = rle_iou_matrix(rles)
        np.fill_diagonal(iou, 0.0)
        out[rows] = iou.max(axis=1)
    return out


def add_derived_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Copy of ``df`` with the boolean/numeric columns the suite checks (see module doc)."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"pairs table is missing columns {missing}")
    out = df.reset_index(drop=True).copy()
    if len(out) == 0:
        for name in ("rle_ok", "area_ok", "bbox_ok", "texts_ok", "sources_ok", "size_consistent"):
            out[name] = pd.Series([], dtype=bool)
        out["max_iou_in_image"] = pd.Series([], dtype=float)
        out["segments_in_image"] = pd.Series([], dtype="int64")
        return out
    out["rle_ok"] = out.apply(_safe(_rle_ok), axis=1)
    out["area_ok"] = out.apply(_safe(_area_ok), axis=1)
    out["bbox_ok"] = out.apply(_safe(_bbox_ok), axis=1)
    out["texts_ok"] = out.apply(_safe(lambda r: _string_list_ok(r["texts"])), axis=1)
    out["sources_ok"] = out.apply(_safe(_sources_ok), axis=1)
    sizes = out["height"].astype(str) + "x" + out["width"].astype(str)
    out["size_consistent"] = sizes.groupby(out["image_id"], dropna=False).transform("nunique").eq(1)
    out["max_iou_in_image"] = _max_iou_per_row(out)
    per_image = out.groupby("image_id", dropna=False)["segment_id"].transform("size")
    out["segments_in_image"] = per_image.astype("int64")
    return out


@dataclass
class ExpectationOutcome:
    """Result of one expectation: ``examples`` are up to 5 failing rows (image_id, segment_id)."""

    name: str
    description: str
    expectation: str
    columns: list[str]
    success: bool
    unexpected_count: int
    unexpected_percent: float
    examples: list[dict[str, Any]] = field(default_factory=list)
    observed_value: Any = None
    error: str | None = None


@dataclass
class ChecksReport:
    """Outcome of the gate: ``success`` is True only when every expectation passed."""

    success: bool
    rows: int
    images: int
    nms_iou: float
    outcomes: list[ExpectationOutcome]

    @property
    def failed(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success]

    def outcome(self, name: str) -> ExpectationOutcome:
        """The outcome of the expectation called ``name`` (KeyError if none)."""
        for o in self.outcomes:
            if o.name == name:
                return o
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, path: str | Path) -> Path:
        """Write the report as indented JSON (parents created)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")
        return p

    def to_text(self) -> str:
        """A human-readable summary, one block per expectation, failures first."""
        status = "PASSED" if self.success else "FAILED"
        lines = [
            f"pairs checks {status}: {len(self.failed)} of {len(self.outcomes)} expectations "
            f"failed on {self.rows} rows, {self.images} images (NMS IoU {self.nms_iou})"
        ]
        for o in sorted(self.outcomes, key=lambda o: o.success):
            mark = "ok  " if o.success else "FAIL"
            on = ", ".join(o.columns) or "the table"
            lines.append(
                f"  [{mark}] {o.name}: {o.description} — {o.unexpected_count} unexpected "
                f"({o.unexpected_percent:.1f}%) [{o.expectation} on {on}]"
            )
            if o.observed_value is not None:
                lines.append(f"         observed: {o.observed_value}")
            if o.error:
                lines.append(f"         error: {o.error}")
            for ex in o.examples:
                lines.append("         e.g. " + ", ".join(f"{k}={v!r}" for k, v in ex.items()))
        return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if value.is_integer():
            return int(value)
    return value


def _build_expectation(check: _Check) -> Any:
    import great_expectations.expectations as gxe

    meta = {"name": check.name}
    if check.kind == "rows":
        return gxe.ExpectTableRowCountToBeBetween(min_value=1, meta=meta)
    if check.kind == "not_null":
        return gxe.ExpectColumnValuesToNotBeNull(column=check.columns[0], meta=meta)
    if check.kind == "unique":
        return gxe.ExpectCompoundColumnsToBeUnique(column_list=list(check.columns), meta=meta)
    if check.kind == "true":
        return gxe.ExpectColumnValuesToBeInSet(column=check.columns[0], value_set=[True], meta=meta)
    return gxe.ExpectColumnValuesToBeBetween(
        column=check.columns[0], min_value=check.min_value, max_value=check.max_value, meta=meta
    )


def _validate(table: pd.DataFrame, checks: list[_Check]) -> list[Any]:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    tag = uuid.uuid4().hex[:8]
    batch = (
        context.data_sources.add_pandas(f"pairs_{tag}")
        .add_dataframe_asset("pairs")
        .add_batch_definition_whole_dataframe("whole")
    )
    suite = context.suites.add(gx.ExpectationSuite(name=f"pairs_suite_{tag}"))
    for check in checks:
        suite.add_expectation(_build_expectation(check))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"pairs_gate_{tag}", data=batch, suite=suite)
    )
    result = definition.run(
        batch_parameters={"dataframe": table},
        result_format={
            "result_format": "COMPLETE",
            "unexpected_index_column_names": ["image_id", "segment_id"],
        },
    )
    return list(result.results)


def _outcome(check: _Check, res: Any) -> ExpectationOutcome:
    info = res.result or {}
    index_list = info.get("unexpected_index_list") or []
    examples = []
    for entry in index_list[:MAX_EXAMPLES]:
        if isinstance(entry, dict):
            ordered = {k: entry[k] for k in ("image_id", "segment_id") if k in entry}
            ordered.update(entry)
            examples.append({k: _jsonable(v) for k, v in ordered.items()})
    error = None
    exc = res.exception_info or {}
    if exc.get("raised_exception"):
        error = str(exc.get("exception_message"))
    return ExpectationOutcome(
        name=check.name,
        description=check.description,
        expectation=res.expectation_config.type,
        columns=list(check.columns),
        success=bool(res.success),
        unexpected_count=int(info.get("unexpected_count") or 0),
        unexpected_percent=float(info.get("unexpected_percent") or 0.0),
        examples=examples,
        observed_value=_jsonable(info.get("observed_value")),
        error=error,
    )


def run_pairs_checks(df: pd.DataFrame, nms_iou: float, checks: ChecksConfig) -> ChecksReport:
    """Validate a pairs table (columns of :data:`use_core.data.pairs.PAIRS_SCHEMA`).

    Arguments:
      df: the pairs table, one row per segment.
      nms_iou: the mask-NMS IoU threshold the table was built with (``params.nms.iou_threshold``).
      checks: per-image segment-count bounds.
    Returns a :class:`ChecksReport`; raises ``ValueError`` only if required columns are missing.
    """
    table = add_derived_columns(df)
    suite = _suite_checks(nms_iou, checks)
    results = _validate(table, suite)
    by_name = {r.expectation_config.meta.get("name"): r for r in results}
    outcomes = [_outcome(c, by_name[c.name]) for c in suite]
    return ChecksReport(
        success=all(o.success for o in outcomes),
        rows=len(table),
        images=int(table["image_id"].nunique()),
        nms_iou=float(nms_iou),
        outcomes=outcomes,
    )
