"""Task runner chosen from params (runtime.task_runner): threads, Dask, or Ray."""

from __future__ import annotations

from typing import Any

from use_core.config import RuntimeConfig


def make_task_runner(runtime: RuntimeConfig) -> Any:
    """threads (default) | dask (LocalCluster, or an existing cluster's address) | ray (extra)."""
    if runtime.task_runner == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=runtime.dask_workers)
    if runtime.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if runtime.dask_address:
            return DaskTaskRunner(address=runtime.dask_address)
        return DaskTaskRunner(
            cluster_kwargs={
                "n_workers": runtime.dask_workers,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": None,
            }
        )
    try:
        from prefect_ray import RayTaskRunner  # optional extra: pip install prefect-ray
    except ImportError as exc:
        raise RuntimeError(
            "runtime.task_runner is 'ray' but prefect-ray is not installed: "
            "pip install prefect-ray (or use 'threads' / 'dask')"
        ) from exc
    return RayTaskRunner()
