"""Prefect flow of the curation pipeline: each stage's shards mapped over the task runner.

No logic lives here: every task calls the same `use_core` function the DVC stage calls.
Finished shards are skipped (their key is already in the store), so a re-run resumes.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

from prefect import flow, task

from flows.runners import make_task_runner
from use_core.config import Params, load_params
from use_core.data.plan import Plan, Shard, build_plan
from use_core.malloc import apply_runtime
from use_core.pipeline.shards import STAGES, process_shard, prune_stage, store_for


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
def report_task(params: Params, metrics_path: str | None) -> dict[str, Any]:
    """The nms stage's statistics (its ``metrics`` output unless ``metrics_path`` is given)."""
    from use_core.pipeline.nms import write_statistics

    return write_statistics(params, Path(metrics_path) if metrics_path else None)


def run_curation_stages(params: Params, plan: Plan) -> dict[str, list[dict[str, Any]]]:
    """Run every shard's chain caption → ground → masks → nms on the task runner.

    A shard's next stage starts as soon as its own previous stage is stored (``wait_for``),
    with no barrier between stages, so workers never idle waiting for another shard's slowest
    stage. Every stage's store is locked for the whole run (in stage order, as ``use`` does
    stage by stage); stale shards are pruned at the end.
    """
    from use_core.pipeline.shards import quarantine_for

    with ExitStack() as locks:
        for stage in STAGES:
            locks.enter_context(store_for(stage, params).lock())
        quarantine_for("sources", params).write("plan", plan.quarantine)
        futures: dict[str, list[Any]] = {}
        previous: list[Any] | None = None
        for stage in STAGES:  # stage-major submission: runners start the earliest work first
            futures[stage] = [
                shard_task.submit(
                    stage,
                    shard,
                    params,
                    return_state=False,
                    wait_for=[previous[i]] if previous is not None else None,
                )
                for i, shard in enumerate(plan.shards)
            ]
            previous = futures[stage]
        results = {stage: [f.result() for f in futures[stage]] for stage in STAGES}
        for stage in STAGES:
            prune_stage(stage, params, plan)
    return results


@flow(name="use-curation", log_prints=True)
def curation_flow(
    params_path: str = "params.yaml",
    overrides: dict[str, Any] | None = None,
    metrics_path: str | None = None,
) -> dict[str, Any]:
    """captions → expressions + grounding → SAM masks → mask NMS → pairs, then statistics."""
    params = load_params(params_path, overrides)
    apply_runtime(params.runtime)  # the threads runner's tasks run in this process
    plan = plan_task(params)
    results = run_curation_stages(params, plan)
    stats = report_task(params, metrics_path)
    return {"stages": results, "stats": stats}


def curation_flow_with_runner(params_path: str = "params.yaml", **kwargs: Any) -> Any:
    """The curation flow on the task runner params.yaml selects (threads, Dask or Ray)."""
    params = load_params(params_path, kwargs.get("overrides"))
    runner = make_task_runner(params.runtime)
    return curation_flow.with_options(task_runner=runner)(params_path=params_path, **kwargs)
