"""Timing helpers shared by the benchmarks: interleaved side-by-side repeats, medians, memory.

These machines are noisy (shared cores), so every figure is a *ratio* of two paths timed in
the same run, their repeats interleaved (A, B, A, B, ...) so that a burst of load hits both.
Absolute seconds are reported too, but only the ratio is compared with the target.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
QUIET_ENV = {
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def quiet_env() -> None:
    """Offline, telemetry-free environment for this process and its children."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def models_cache() -> Path:
    """Where ``make assets`` puts the models (``USE_MODELS_CACHE`` overrides)."""
    return Path(os.environ.get("USE_MODELS_CACHE", REPO_ROOT / ".cache" / "models"))


def mobile_sam_path() -> Path:
    """The MobileSAM checkpoint (``USE_MOBILE_SAM`` overrides); FileNotFoundError if missing."""
    env = os.environ.get("USE_MOBILE_SAM")
    path = Path(env) if env else models_cache() / "mobile_sam.pt"
    if not path.is_file():
        raise FileNotFoundError(f"MobileSAM checkpoint missing at {path}: run `make assets`")
    return path


def machine_info() -> dict[str, Any]:
    """Cores, torch threads and versions, load average: recorded beside every result."""
    import torch

    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cuda": torch.cuda.is_available(),
    }
    try:
        info["load_average"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    return info


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Run ``fn`` once; return (wall seconds, its result)."""
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def interleaved(
    fns: Mapping[str, Callable[[], Any]],
    repeats: int = 3,
    warmup: int = 1,
    warm_each: bool = False,
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Time several paths side by side: ``warmup`` untimed rounds, then ``repeats`` rounds of
    A, B, ... in turn. Returns (name → list of seconds, name → last result).

    ``warm_each``: every timed run comes right after an untimed run of the same path, so each
    path is timed in its steady state. Without it, a sub-second path timed right after a
    multi-second one starts cold (measured, P1's USE side: 0.35 s after the 15 s baseline,
    0.29-0.30 s warm, 0.58 s after 5 s idle), while the long path's own cold start is lost in
    its length; the ratio then measures the order of the calls as much as the paths.
    """
    last: dict[str, Any] = {}
    for _ in range(warmup):
        for name, fn in fns.items():
            last[name] = fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if warm_each:
                fn()
            seconds, last[name] = timed(fn)
            times[name].append(seconds)
    return times, last


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def self_peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (Linux ``ru_maxrss`` is KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# Linux starts a new program's peak RSS (ru_maxrss) at the RSS of the process it was forked
# from, so a child of a large benchmark process reports at least the parent's size. A small
# launcher in between forks the program from a ~10 MiB process and reports its wait4 peak.
_LAUNCHER = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(str(usage.ru_maxrss))
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def run_child(
    args: Sequence[str], cwd: Path | str | None = None, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Run a child process to completion; its wall time, exit code and peak RSS.

    The peak RSS is ``wait4``'s resource usage of that child (on Linux it covers the
    descendants it waited for), in MiB, measured through :data:`_LAUNCHER` so that this
    process's own size does not count. Output is captured; the tail of stderr is kept.
    """
    full_env = {**os.environ, **QUIET_ENV, **(env or {})}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        peak_file = Path(tmp) / "maxrss"
        done = subprocess.run(
            [sys.executable, "-c", _LAUNCHER, str(peak_file), *args],
            cwd=cwd,
            env=full_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        peak_kib = float(peak_file.read_text()) if peak_file.exists() else float("nan")
    return {
        "args": list(args),
        "returncode": done.returncode,
        "seconds": time.perf_counter() - start,
        "peak_rss_mib": peak_kib / 1024.0,
        "stderr_tail": done.stderr.decode(errors="replace")[-2000:],
    }


def python_exe() -> str:
    return sys.executable


def result(
    bench_id: str,
    what: str,
    ratio: float,
    target: str,
    met: bool,
    figure: str | None = None,
    **details: Any,
) -> dict[str, Any]:
    """The dict every ``run()`` returns: id, what, ratio, target, met, figure, details."""
    return {
        "id": bench_id,
        "what": what,
        "ratio": round(float(ratio), 3),
        "target": target,
        "met": bool(met),
        "figure": figure or f"{ratio:.2f}x",
        **details,
    }


def rounded(times: Mapping[str, Sequence[float]], digits: int = 4) -> dict[str, Any]:
    """name → {"median_s", "runs_s"} for the results file."""
    return {
        k: {"median_s": round(median(v), digits), "runs_s": [round(x, digits) for x in v]}
        for k, v in times.items()
    }
