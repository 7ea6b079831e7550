"""Device, precision, seeding and threading: the runtime knobs of ``params.yaml``'s ``runtime``."""

from __future__ import annotations

import os
import random

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
