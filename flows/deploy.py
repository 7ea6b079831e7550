"""The pipeline flow as a scheduled Prefect deployment (used by `use schedule`).

``pipeline_deployment`` builds the deployment object without contacting any Prefect API (so it
can be printed and checked); ``serve_deployment`` registers it with the configured API and
blocks, starting a run at each cron tick or on ``prefect deployment run use-pipeline/<name>``.
"""

from __future__ import annotations

from typing import Any

from prefect.deployments.runner import RunnerDeployment

from flows.pipeline import pipeline_flow


def pipeline_deployment(
    params_path: str = "params.yaml",
    cron: str = "0 3 * * *",
    name: str = "use-pipeline",
    overrides: dict[str, Any] | None = None,
) -> RunnerDeployment:
    """The pipeline flow on ``cron`` (5-field cron, the server's time zone), with its
    parameters ``params_path`` and the dotted-key ``overrides`` (omitted when empty).

    Raises ``ValueError`` (pydantic's) for a malformed cron string.
    """
    parameters: dict[str, Any] = {"params_path": params_path}
    if overrides:
        parameters["overrides"] = overrides
    deployment = pipeline_flow.to_deployment(name=name, cron=cron, parameters=parameters)
    assert isinstance(deployment, RunnerDeployment)  # sync context: not a coroutine
    return deployment


def describe_deployment(deployment: RunnerDeployment) -> dict[str, Any]:
    """What the deployment will register: names, entrypoint, parameters and schedules."""
    schedules = []
    for item in deployment.schedules or []:
        sched = item.schedule
        schedules.append(
            {
                "cron": getattr(sched, "cron", None),
                "timezone": getattr(sched, "timezone", None),
                "active": item.active,
            }
        )
    return {
        "flow": deployment.flow_name,
        "deployment": deployment.name,
        "entrypoint": deployment.entrypoint,
        "parameters": deployment.parameters,
        "schedules": schedules,
        "trigger": f"prefect deployment run '{deployment.flow_name}/{deployment.name}'",
    }


def serve_deployment(deployment: RunnerDeployment) -> None:
    """Register ``deployment`` with the Prefect API and run its flow runs here (blocks)."""
    from prefect import serve

    serve(deployment)
