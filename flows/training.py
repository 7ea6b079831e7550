"""Prefect flows for the model side: checks gate → training; proposals → evaluation → register.

Thin: each task runs one stage of the table (:mod:`flows.stages`), as its DVC stage does.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.stages import run_stage_task
from use_core.config import load_params
from use_core.malloc import apply_runtime
from use_core.pipeline.table import stage

TRAINING_STAGES = ("checks", "train")
EVALUATION_STAGES = ("proposals", "evaluate", "register")


@flow(name="use-training", log_prints=True)
def training_flow(params_path: str = "params.yaml", overrides: dict[str, Any] | None = None) -> Any:
    """Gate the pairs, then train the USE head (resumes from its last checkpoint)."""
    params = load_params(params_path, overrides)
    apply_runtime(params.runtime)
    return {name: run_stage_task(stage(name), params) for name in TRAINING_STAGES}


@flow(name="use-evaluation", log_prints=True)
def evaluation_flow(
    params_path: str = "params.yaml", overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """SAM proposals, the trained model on every configured benchmark, then registration."""
    params = load_params(params_path, overrides)
    apply_runtime(params.runtime)
    return {name: run_stage_task(stage(name), params) for name in EVALUATION_STAGES}
