"""The whole USE pipeline as one Prefect flow, and its schedule (`use schedule`)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.curation import curation_flow
from flows.runners import make_task_runner
from flows.training import evaluation_flow, training_flow
from use_core.config import load_params


@flow(name="use-pipeline", log_prints=True)
def pipeline_flow(
    params_path: str = "params.yaml", overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """curation → checks → training → evaluation → registration, the same chain as dvc.yaml."""
    params = load_params(params_path, overrides)
    curation = curation_flow.with_options(task_runner=make_task_runner(params.runtime))(
        params_path=params_path, overrides=overrides
    )
    training = training_flow(params_path=params_path, overrides=overrides)
    evaluation = evaluation_flow(params_path=params_path, overrides=overrides)
    return {"curation": curation["stats"], "training": training, "evaluation": evaluation}


def serve_pipeline(params_path: str = "params.yaml", name: str = "use-pipeline") -> None:
    """Serve the pipeline with the cron schedule of ``runtime.schedule_cron`` (blocks)."""
    params = load_params(params_path)
    pipeline_flow.serve(
        name=name,
        cron=params.runtime.schedule_cron,
        parameters={"params_path": params_path},
    )
