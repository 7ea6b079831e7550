"""Epoch checkpoints for resuming training, without pickles.

``{out}/checkpoints/epoch_{e:03d}/`` holds::

    model.safetensors, model.json    the trainable weights (``use_core.model.checkpoint``)
    optimizer.safetensors            AdamW state tensors, named ``state.{param}.{name}``
    train_state.json                 epoch, global step, optimizer param groups, LR scheduler
                                     state, history of epoch metrics, run fingerprint

A directory is written under a temporary name and renamed when complete, so an interrupted
write never looks like a checkpoint. All randomness of an epoch derives from (seed, epoch, ...)
(see ``use_core.train.loop``), so no RNG state needs saving.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from use_core.model.checkpoint import load_trainable_state, save_use_model
from use_core.model.use_model import USEModel

STATE_FILE = "train_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
_EPOCH_RE = re.compile(r"^epoch_(\d{3,})$")


@dataclass
class TrainState:
    """Where a run stands after ``epoch`` complete epochs."""

    epoch: int
    global_step: int
    fingerprint: str
    history: list[dict[str, float]] = field(default_factory=list)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], Any]:
    sd = optimizer.state_dict()
    tensors = {}
    for pid, state in sd["state"].items():
        for name, value in state.items():
            t = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"state.{pid}.{name}"] = t.detach().cpu().contiguous()
    return tensors, sd["param_groups"]


def save_checkpoint(
    out_dir: Path,
    model: USEModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: TrainState,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``out_dir/checkpoints/epoch_{state.epoch:03d}`` atomically; returns its path."""
    root = out_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"epoch_{state.epoch:03d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=root))
    try:
        save_use_model(model, tmp, extra)
        tensors, groups = _optimizer_tensors(optimizer)
        save_file(tensors, str(tmp / OPTIMIZER_FILE))
        payload = {
            "epoch": state.epoch,
            "global_step": state.global_step,
            "fingerprint": state.fingerprint,
            "history": state.history,
            "param_groups": groups,
            "scheduler": scheduler.state_dict(),
        }
        (tmp / STATE_FILE).write_text(json.dumps(payload, indent=2, sort_keys=True))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The complete ``epoch_*`` checkpoint with the highest epoch, if any."""
    root = out_dir / "checkpoints"
    if not root.is_dir():
        return None
    done = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if (m := _EPOCH_RE.match(p.name)) and (p / STATE_FILE).exists()
    ]
    return max(done)[1] if done else None


def read_train_state(ckpt: Path) -> TrainState:
    payload = json.loads((ckpt / STATE_FILE).read_text())
    return TrainState(
        epoch=int(payload["epoch"]),
        global_step=int(payload["global_step"]),
        fingerprint=str(payload["fingerprint"]),
        history=list(payload["history"]),
    )


def load_checkpoint(
    ckpt: Path,
    model: USEModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> TrainState:
    """Restore model weights, optimizer and scheduler from ``ckpt``; returns its state."""
    load_trainable_state(model, ckpt)
    payload = json.loads((ckpt / STATE_FILE).read_text())
    tensors = load_file(str(ckpt / OPTIMIZER_FILE), device=str(model.device))
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        opt_state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": opt_state, "param_groups": payload["param_groups"]})
    scheduler.load_state_dict(payload["scheduler"])
    return read_train_state(ckpt)
