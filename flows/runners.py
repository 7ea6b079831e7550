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


def _dask_env_name(key: str) -> str:
    """Dask's environment-variable name of a config key (``DASK_`` + ``__`` between levels)."""
    return "DASK_" + key.upper().replace(".", "__").replace("-", "_")


def worker_environment(retain_freed_memory: bool = True) -> dict[str, str]:
    """Environment of a ``dask worker`` process that works as the project's LocalCluster workers:
    :data:`QUIET_WORKER_CONFIG` as ``DASK_*`` variables, and with ``retain_freed_memory`` the
    malloc settings of :func:`use_core.malloc.malloc_env`, set on the process and handed to the
    worker its nanny spawns (``distributed.nanny.pre-spawn-environ``, whose own default would
    undo them)."""
    import dask

    from use_core.malloc import malloc_env

    env = {
        _dask_env_name(k): v if isinstance(v, str) else repr(v)
        for k, v in QUIET_WORKER_CONFIG.items()
    }
    if retain_freed_memory:
        spawn = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **malloc_env()}
        env[_dask_env_name("distributed.nanny.pre-spawn-environ")] = repr(spawn)
        env.update(malloc_env())
    return env


def worker_command(address: str, nworkers: int = 1, memory_limit: str = "auto") -> list[str]:
    """``dask worker`` for a curation worker joining the scheduler at ``address``: one thread
    per worker process (the stages parallelise over processes); run it with
    :func:`worker_environment` (``use dask-worker`` does both)."""
    return [
        "dask",
        "worker",
        address,
        "--nworkers",
        str(nworkers),
        "--nthreads",
        "1",
        "--memory-limit",
        memory_limit,
        "--no-dashboard",
    ]  # the preload (flows.worker_setup) comes with worker_environment's config


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
