"""Task runner chosen from params (runtime.task_runner): threads, Dask, or Ray."""

from __future__ import annotations

import os
from typing import Any

from use_core.config import RuntimeConfig


def local_cluster_retaining_memory(**cluster_kwargs: Any) -> Any:
    """A ``distributed.LocalCluster`` whose worker processes start with :func:`malloc_env`.

    Dask's nanny sets ``distributed.nanny.pre-spawn-environ`` before spawning each worker (its
    own default, ``MALLOC_TRIM_THRESHOLD_=65536``, returns freed memory to the kernel at once,
    which made every image re-fault its activations: masks 1.8x slower per image, measured).
    """
    import dask
    from distributed import LocalCluster

    from use_core.malloc import malloc_env

    environ = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **malloc_env()}
    saved = {key: os.environ.get(key) for key in environ}
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
            return LocalCluster(**cluster_kwargs)
    finally:  # the nanny writes them into this process's environment too: undo that
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


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
            cluster_class=local_cluster_retaining_memory if runtime.retain_freed_memory else None,
            cluster_kwargs={
                "n_workers": runtime.dask_workers,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": None,
            },
        )
    try:
        from prefect_ray import RayTaskRunner  # optional extra: pip install prefect-ray
    except ImportError as exc:
        raise RuntimeError(
            "runtime.task_runner is 'ray' but prefect-ray is not installed: "
            "pip install prefect-ray (or use 'threads' / 'dask')"
        ) from exc
    return RayTaskRunner()
