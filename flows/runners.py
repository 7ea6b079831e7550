"""Task runner chosen from params (runtime.task_runner): threads, Dask, or Ray."""

from __future__ import annotations

import os
from typing import Any

from use_core.config import RuntimeConfig

# Worker bookkeeping the project's LocalCluster has no use for (it runs without a dashboard):
# the statistical profiler samples the task thread's stack every 10 ms, and the event-loop tick
# and the system and memory monitors poll several times a second. With two workers on two cores
# those threads preempt the task threads. Measured on the masks stage, 2 workers: the workers'
# other threads took 4.5 % of a core with Dask's defaults, 0.5 % with these, and each image
# 5 % less wall time. The memory limits are still enforced, checked every second.
QUIET_WORKER_CONFIG: dict[str, Any] = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "200ms",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.memory.monitor-interval": "1s",
    # skip the interpreter's final garbage collection when a worker exits (flows.worker_setup)
    "distributed.worker.preload": ["flows.worker_setup"],
}


def local_cluster(retain_freed_memory: bool = True, **cluster_kwargs: Any) -> Any:
    """A ``distributed.LocalCluster`` with quiet workers (:data:`QUIET_WORKER_CONFIG`).

    With ``retain_freed_memory`` the worker processes start with
    :func:`use_core.malloc.malloc_env`: Dask's nanny sets ``distributed.nanny.pre-spawn-environ``
    before spawning each worker, and its own default there, ``MALLOC_TRIM_THRESHOLD_=65536``,
    returns freed memory to the kernel at once, which made every image re-fault its activations
    (masks 1.8x slower per image, measured).
    """
    import dask
    from distributed import LocalCluster

    from use_core.malloc import malloc_env

    config = dict(QUIET_WORKER_CONFIG)
    environ: dict[str, str] = {}
    if retain_freed_memory:
        environ = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **malloc_env()}
        config["distributed.nanny.pre-spawn-environ"] = environ
    saved = {key: os.environ.get(key) for key in environ}
    try:
        with dask.config.set(config):  # the nanny hands its config to the worker it spawns
            return LocalCluster(**cluster_kwargs)
    finally:  # the nanny writes the pre-spawn variables into this process's environment too
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
            cluster_class=local_cluster,
            cluster_kwargs={
                "retain_freed_memory": runtime.retain_freed_memory,
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
