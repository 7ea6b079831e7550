"""The `checks` stage: the great-expectations gate on the curated pairs table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from use_core.config import Params
from use_core.pipeline.runner import StageFailed, StageIO


class ChecksFailed(StageFailed):
    """The pairs table failed the gate; the message is the readable report."""


def run_checks_stage(params: Params, out: Path | None = None) -> dict[str, Any]:
    """Validate the pairs of the current plan, write the report (``out``, default
    ``checks.report``), raise :class:`ChecksFailed` when the gate fails."""
    from use_core.checks.pairs_suite import run_pairs_checks
    from use_core.pipeline.shards import read_stage

    pairs = read_stage("nms", params)
    report = run_pairs_checks(pairs, params.nms.iou_threshold, params.checks)
    out = Path(params.checks.report) if out is None else out
    out.parent.mkdir(parents=True, exist_ok=True)
    report.to_json(out)
    if not report.success:
        raise ChecksFailed(f"{report.to_text()}\nreport: {out}")
    return {"success": True, "rows": len(pairs), "report": str(out)}


def run(params: Params, io: StageIO) -> dict[str, Any]:
    """The gate, its report at the ``report`` output."""
    return run_checks_stage(params, io.output("report"))
