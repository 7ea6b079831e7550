"""Device, precision, seeding and threading: the runtime knobs of ``params.yaml``'s ``runtime``."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from use_core.config import RuntimeConfig


def select_device(runtime_cfg: RuntimeConfig) -> torch.device:
    """``runtime.device`` → a torch device (``auto``: CUDA if available, else CPU).

    Asking for ``cuda`` on a machine without one is an error, not a silent CPU fallback.
    """
    if runtime_cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if runtime_cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("runtime.device is 'cuda' but no CUDA device is available")
    return torch.device(runtime_cfg.device)


def backbone_dtype(device: torch.device, runtime_cfg: RuntimeConfig) -> torch.dtype:
    """dtype for frozen backbones: float16 on CUDA when ``half_precision_on_gpu``, else float32."""
    if device.type == "cuda" and runtime_cfg.half_precision_on_gpu:
        return torch.float16
    return torch.float32


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global RNG and torch (CPU and every CUDA device)."""
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def set_threads(n: int) -> None:
    """Set torch's intra-op thread count; ``0`` keeps torch's default."""
    if n < 0:
        raise ValueError(f"thread count must be >= 0, got {n}")
    if n > 0:
        torch.set_num_threads(n)


def run_split(
    run: Callable[[int, int], None],
    n: int,
    parts: int | None = None,
    device: torch.device | None = None,
) -> None:
    """``run(start, stop)`` over ``range(n)`` split in contiguous parts, at most one per torch
    intra-op thread (and at most ``parts``), each part in its own Python thread running
    single-threaded torch ops; torch's thread count is restored afterwards. Work on a
    ``device`` other than the CPU runs in the calling thread (one thread feeds a GPU's queue).

    For many small, independent pieces of work (one SAM prompt, one mask): split across
    OpenMP threads every small op waits at a barrier for the slowest thread, which on a shared
    machine is often descheduled (measured: 2 threads slower than 1 under load). Whole pieces
    per thread need no barrier; torch ops, OpenCV and most of NumPy release the GIL. With one
    thread (or one piece) ``run(0, n)`` runs in the calling thread.
    """
    threads = torch.get_num_threads()
    workers = min(threads, n, parts if parts is not None else n)
    if device is not None and device.type != "cpu":
        workers = 1
    if workers <= 1:
        run(0, n)
        return
    bounds = [round(i * n / workers) for i in range(workers + 1)]
    grad = torch.is_grad_enabled()
    inference = torch.is_inference_mode_enabled()

    def part(i: int) -> None:
        torch.set_num_threads(1)
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            run(bounds[i], bounds[i + 1])

    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(part, range(workers)))
    finally:
        torch.set_num_threads(threads)
