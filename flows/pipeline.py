"""The whole USE pipeline as one Prefect flow, and its schedule (`use schedule`).

The flow runs every stage of :data:`use_core.pipeline.table.STAGES` in the table's order (which
is ``dvc.yaml``'s): the shard stages (caption → ground → masks → nms) as the curation sub-flow,
mapped over image shards on the task runner of ``runtime.task_runner``; every other stage as one
task (one per item of a foreach stage).
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.curation import curation_flow
from flows.runners import make_task_runner
from flows.stages import run_stage_task
from use_core.config import load_params
from use_core.malloc import apply_runtime
from use_core.pipeline.table import SHARD_STAGES, STAGES


@flow(name="use-pipeline", log_prints=True)
def pipeline_flow(
    params_path: str = "params.yaml", overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Every stage of the table, in order; the result of each by stage name."""
    params = load_params(params_path, overrides)
    apply_runtime(params.runtime)
    results: dict[str, Any] = {}
    for spec in STAGES:
        if spec.shards:
            if spec.name == SHARD_STAGES[0]:  # the sub-flow runs every shard stage
                runner = make_task_runner(params.runtime)
                curation = curation_flow.with_options(task_runner=runner)(
                    params_path=params_path, overrides=overrides
                )
                results.update({name: curation["stages"][name] for name in SHARD_STAGES})
                results["curation_stats"] = curation["stats"]
            continue
        results[spec.name] = run_stage_task(spec, params)
    return results


def serve_pipeline(params_path: str = "params.yaml", name: str = "use-pipeline") -> None:
    """Serve the pipeline with the cron schedule of ``runtime.schedule_cron`` (blocks)."""
    params = load_params(params_path)
    pipeline_flow.serve(
        name=name,
        cron=params.runtime.schedule_cron,
        parameters={"params_path": params_path},
    )
