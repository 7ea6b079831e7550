"""Prefect flows for the model side: checks gate → training → evaluation → registration.

Thin wrappers: each task calls the `use_core` stage function its DVC stage calls.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task

from use_core.config import Params, load_params
from use_core.malloc import apply_runtime


@task
def checks_task(params: Params) -> dict[str, Any]:
    from use_core.checks.stage import run_checks_stage

    return run_checks_stage(params)


@task(retries=1)
def train_task(params: Params) -> dict[str, Any]:
    from use_core.train.stage import run_train_stage

    return run_train_stage(params)


@task
def evaluate_task(params: Params, benchmark: str) -> dict[str, Any]:
    from use_core.eval.stage import run_eval_stage

    return run_eval_stage(params, benchmark)


@task
def register_task(params: Params) -> dict[str, Any]:
    from use_core.tracking.register import run_register_stage

    return run_register_stage(params)


@flow(name="use-training", log_prints=True)
def training_flow(params_path: str = "params.yaml", overrides: dict[str, Any] | None = None) -> Any:
    """Gate the pairs, then train the USE head (resumes from its last checkpoint)."""
    params = load_params(params_path, overrides)
    apply_runtime(params.runtime)
    checks_task(params)
    return train_task(params)


@flow(name="use-evaluation", log_prints=True)
def evaluation_flow(
    params_path: str = "params.yaml", overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Evaluate the trained model on every configured benchmark, then register it."""
    params = load_params(params_path, overrides)
    apply_runtime(params.runtime)
    results = {b: evaluate_task(params, b) for b in params.eval.benchmarks}
    return {"benchmarks": results, "register": register_task(params)}
