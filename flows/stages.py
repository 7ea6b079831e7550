"""One Prefect task for any stage of the table: every flow runs stages through it.

No logic lives here: the task calls :func:`use_core.pipeline.runner.run`, the function the
``use`` stage commands and ``dvc.yaml`` call.
"""

from __future__ import annotations

from typing import Any

from prefect import task

from use_core.config import Params
from use_core.pipeline.table import StageSpec


@task(task_run_name="{name}", retries=0)
def stage_task(name: str, params: Params, item: str | None = None) -> dict[str, Any]:
    """Stage ``name`` (for ``item`` of a foreach stage) with the flow's params."""
    from use_core.pipeline.runner import run

    return run(name, params, item)


def run_stage_task(spec: StageSpec, params: Params) -> Any:
    """Run ``spec`` as a task (one task per item of a foreach stage, named after it)."""
    if spec.foreach is None:
        return stage_task(spec.name, params)
    return {
        item: stage_task.with_options(task_run_name=f"{spec.name}-{item}")(spec.name, params, item)
        for item in foreach_items(spec, params)
    }


def foreach_items(spec: StageSpec, params: Params) -> list[str]:
    """The values of the params list a foreach stage runs over (e.g. ``eval.benchmarks``)."""
    value: Any = params
    for part in (spec.foreach or "").split("."):
        value = getattr(value, part)
    return [v if isinstance(v, str) else str(getattr(v, "name", v)) for v in value]
