"""Prefect flow of the curation pipeline: each stage's shards mapped over the task runner.

No logic lives here: every task calls the same `use_core` function the DVC stage calls.
Finished shards are skipped (their key is already in the store), so a re-run resumes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task, unmapped

from flows.runners import make_task_runner
from use_core.config import Params, load_params
from use_core.curation.plan import Plan, Shard, build_plan
from use_core.curation.stages import STAGES, process_shard, prune_stage, store_for


@task(retries=2, retry_delay_seconds=5, task_run_name="{stage}-shard-{shard.index}")
def shard_task(stage: str, shard: Shard, params: Params) -> dict[str, Any]:
    """One shard of one stage (skipped when already stored)."""
    from use_core.runtime import set_threads

    set_threads(1 if params.runtime.task_runner != "threads" else params.runtime.num_threads)
    computed, counters = process_shard(stage, shard, params)
    return {"shard": shard.index, "computed": computed, **counters}


@task
def plan_task(params: Params) -> Plan:
    return build_plan(params)


@task
def report_task(params: Params, metrics_path: str) -> dict[str, Any]:
    from use_core.curation.report import curation_report

    return curation_report(params, Path(metrics_path))


def run_curation_stages(params: Params, plan: Plan) -> dict[str, list[dict[str, Any]]]:
    """Map every stage over the plan's shards, stage after stage, inside the current flow."""
    from use_core.curation.stages import quarantine_for

    results: dict[str, list[dict[str, Any]]] = {}
    for stage in STAGES:
        with store_for(stage, params).lock():
            if stage == "caption":
                quarantine_for("sources", params).write("plan", plan.quarantine)
            futures = shard_task.map(unmapped(stage), plan.shards, unmapped(params))
            results[stage] = [f.result() for f in futures]
            prune_stage(stage, params, plan)
    return results


@flow(name="use-curation", log_prints=True)
def curation_flow(
    params_path: str = "params.yaml",
    overrides: dict[str, Any] | None = None,
    metrics_path: str = "metrics/curation.json",
) -> dict[str, Any]:
    """captions → expressions + grounding → SAM masks → mask NMS → pairs, then statistics."""
    params = load_params(params_path, overrides)
    plan = plan_task(params)
    results = run_curation_stages(params, plan)
    stats = report_task(params, metrics_path)
    return {"stages": results, "stats": stats}


def curation_flow_with_runner(params_path: str = "params.yaml", **kwargs: Any) -> Any:
    """The curation flow on the task runner params.yaml selects (threads, Dask or Ray)."""
    params = load_params(params_path, kwargs.get("overrides"))
    runner = make_task_runner(params.runtime)
    return curation_flow.with_options(task_runner=runner)(params_path=params_path, **kwargs)
