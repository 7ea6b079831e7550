"""glibc malloc keeps freed memory: measured as page faults of a reused 64 MiB buffer.

Each check runs in a fresh process (a new interpreter or a real Dask worker), because the
settings are process-wide and only apply to allocations made after them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from use_core.malloc import is_glibc, malloc_env

pytestmark = pytest.mark.skipif(not is_glibc(), reason="glibc malloc only")

BLOCK = 64 * 2**20  # above glibc's largest dynamic mmap threshold (32 MiB): mmap'd by default
PAGES = BLOCK // 4096


def faults_per_reuse(rounds: int = 8) -> float:
    """Minor page faults per malloc-touch-free of one 64 MiB block, in a new thread."""
    import ctypes
    import resource
    import threading

    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    out: list[float] = []

    def touch_and_free() -> None:
        block = libc.malloc(BLOCK)
        assert block, "malloc failed"
        ctypes.memset(block, 1, BLOCK)
        libc.free(block)

    def body() -> None:
        touch_and_free()  # first touch: faults in any case
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(rounds):
            touch_and_free()
        out.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / rounds)

    thread = threading.Thread(target=body)  # Prefect and Dask run tasks in threads
    thread.start()
    thread.join()
    return out[0]


def _in_new_process(retain: bool) -> float:
    code = textwrap.dedent(
        f"""
        from use_core.config import RuntimeConfig
        from use_core.malloc import apply_runtime
        from tests.test_malloc import faults_per_reuse
        assert apply_runtime(RuntimeConfig(retain_freed_memory={retain})) is {retain}
        print(faults_per_reuse())
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in malloc_env()}
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return float(done.stdout.split()[-1])


def test_retain_freed_memory_stops_refaulting() -> None:
    default = _in_new_process(retain=False)
    retained = _in_new_process(retain=True)
    assert default > 0.5 * PAGES, default  # every reuse re-faults (nearly) every page
    assert retained < 0.01 * PAGES, retained


def test_dask_workers_start_with_the_settings() -> None:
    from distributed import Client, LocalCluster

    from flows.runners import local_cluster

    kwargs = {"n_workers": 1, "threads_per_worker": 1, "processes": True}
    kwargs["dashboard_address"] = None
    with local_cluster(**kwargs) as cluster, Client(cluster) as client:
        env = client.run(lambda: {k: __import__("os").environ.get(k) for k in malloc_env()})
        retained = client.submit(faults_per_reuse, pure=False).result()
    assert list(env.values()) == [malloc_env()]
    assert retained < 0.01 * PAGES, retained
    assert not set(malloc_env()) & set(os.environ)  # this process's environment is left as is
    with LocalCluster(**kwargs) as cluster, Client(cluster) as client:  # Dask's own default
        default = client.submit(faults_per_reuse, pure=False).result()
    assert default > 0.5 * PAGES, default


def test_runner_uses_it_only_when_enabled() -> None:
    from distributed import Client

    from flows.runners import QUIET_WORKER_CONFIG, local_cluster, make_task_runner
    from use_core.config import RuntimeConfig

    on = make_task_runner(RuntimeConfig(task_runner="dask"))
    off = make_task_runner(RuntimeConfig(task_runner="dask", retain_freed_memory=False))
    assert on.cluster_class is off.cluster_class is local_cluster
    assert on.cluster_kwargs["retain_freed_memory"] is True
    kwargs = {**off.cluster_kwargs, "n_workers": 1}
    with local_cluster(**kwargs) as cluster, Client(cluster) as client:
        env = client.run(lambda: __import__("os").environ.get("MALLOC_ARENA_MAX"))
        config = client.run(
            lambda: {k: __import__("dask").config.get(k) for k in QUIET_WORKER_CONFIG}
        )
        preloaded = client.run(lambda dask_worker: [p.name for p in dask_worker.preloads])
    assert list(env.values()) == [None]
    assert list(config.values()) == [QUIET_WORKER_CONFIG]
    assert list(preloaded.values()) == [["flows.worker_setup"]]


def test_release_freed_memory_returns_the_kept_heap() -> None:
    """With retention on, a freed 256 MiB stays resident until ``release_freed_memory``."""
    code = textwrap.dedent(
        """
        import ctypes
        from use_core.malloc import release_freed_memory, retain_freed_memory

        def rss_mib():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * 4096 / 2**20

        assert retain_freed_memory()
        libc = ctypes.CDLL(None)
        libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
        libc.free.argtypes = [ctypes.c_void_p]
        blocks = [libc.malloc(2**20) for _ in range(256)]  # heap chunks, not one mmap
        for b in blocks:
            ctypes.memset(b, 1, 2**20)
        touched = rss_mib()
        for b in blocks:
            libc.free(b)
        kept = rss_mib()
        assert release_freed_memory()
        print(touched, kept, rss_mib())
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in malloc_env()}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    touched, kept, released = (float(x) for x in done.stdout.split())
    assert kept > touched - 16, (touched, kept)  # retained: freeing gave nothing back
    assert released < kept - 200, (kept, released)  # the trim returned (nearly) all of it
