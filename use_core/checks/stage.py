"""The `checks` stage: the great-expectations gate on the curated pairs table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from use_core.config import Params


class ChecksFailed(RuntimeError):
    """The pairs table failed the gate; the message is the readable report."""


def run_checks_stage(params: Params) -> dict[str, Any]:
    """Validate the pairs of the current plan, write the report, raise :class:`ChecksFailed`."""
    from use_core.checks.pairs_suite import run_pairs_checks
    from use_core.curation.stages import read_stage

    pairs = read_stage("nms", params)
    report = run_pairs_checks(pairs, params.nms.iou_threshold, params.checks)
    out = Path(params.checks.report)
    out.parent.mkdir(parents=True, exist_ok=True)
    report.to_json(out)
    if not report.success:
        raise ChecksFailed(f"{report.to_text()}\nreport: {out}")
    return {"success": True, "rows": len(pairs), "report": str(out)}
