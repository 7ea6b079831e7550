"""One small interface for training metrics; the tracking layer plugs MLflow in behind it.

Keys are ``"train/loss"``, ``"train/lr"``, ``"val/zero_shot_top1"``...; ``step`` is the global
optimisation step (epoch metrics are logged at the last step of their epoch).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable


@runtime_checkable
class MetricsLogger(Protocol):
    """Anything with ``log_metrics(metrics, step)`` (e.g. a wrapper around ``mlflow``)."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...


class JsonlMetricsLogger:
    """Appends ``{"step": step, **metrics}`` as one JSON line per call to ``path``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        record = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        with self.path.open("a") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop records with a step > ``step`` (a resumed run re-logs those steps)."""
        if not self.path.exists():
            return
        kept = [
            line
            for line in self.path.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] <= step
        ]
        self.path.write_text("".join(line + "\n" for line in kept))


class FanOutLogger:
    """Sends every call to several loggers (e.g. the JSONL file and MLflow)."""

    def __init__(self, loggers: Sequence[MetricsLogger]) -> None:
        self.loggers = list(loggers)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for logger in self.loggers:
            logger.log_metrics(metrics, step)
