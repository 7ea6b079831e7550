"""MLflow runs: one place that sets the tracking store, logs params, fingerprints and metrics.

Default store: ``sqlite:///mlflow.db`` with artifacts under ``mlartifacts/`` beside it (set
``runtime.tracking_uri`` to a server URI to share runs). Nothing absolute or secret is logged:
:func:`safe_params` rewrites absolute paths relative to the working directory and redacts keys
that look like credentials.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from use_core.config import Params, flatten

_SECRET_KEY = re.compile(r"(secret|token|password|passwd|api[_-]?key|credential)", re.I)
ARTIFACT_ROOT = "mlartifacts"


def safe_params(flat: Mapping[str, Any], cwd: Path | None = None) -> dict[str, str]:
    """Stringify params for MLflow; redact secrets and make absolute paths relative or opaque."""
    cwd = (cwd or Path.cwd()).resolve()
    out: dict[str, str] = {}
    for key, value in flat.items():
        if _SECRET_KEY.search(key):
            out[key] = "<redacted>"
            continue
        text = json.dumps(value) if isinstance(value, list | dict) else str(value)
        out[key] = _scrub_paths(text, cwd)[:6000]
    return out


def _portable(path: Path, cwd: Path) -> str:
    try:
        return path.resolve().relative_to(cwd).as_posix() or "."
    except ValueError:
        return f"<abs>/{path.name}"


def _scrub_paths(text: str, cwd: Path) -> str:
    def uri(match: re.Match[str]) -> str:  # sqlite:////abs/x.db, file:///abs/x
        scheme, rest = match.group(1), match.group(2)
        if scheme != "file" and not rest.startswith("/"):
            return match.group(0)  # sqlite:///relative.db
        return f"{scheme}:///{_portable(Path('/' + rest.lstrip('/')), cwd)}"

    text = re.sub(r"\b([a-z][\w+.-]*):///([^\s\"',]+)", uri, text)
    return re.sub(
        r"(?<![\w:/])/(?:[\w.@+-]+/)*[\w.@+-]+",
        lambda m: _portable(Path(m.group(0)), cwd),
        text,
    )


def git_commit(cwd: Path | None = None) -> str:
    """The current git commit (``unknown`` outside a repository), with ``-dirty`` if modified."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def data_fingerprint(dvc_lock: Path = Path("dvc.lock")) -> dict[str, str]:
    """DVC lock hashes of every stage output (the data a run saw) and the git commit."""
    tags = {"git_commit": git_commit()}
    if dvc_lock.exists():
        import yaml

        lock = yaml.safe_load(dvc_lock.read_text()) or {}
        for stage, body in (lock.get("stages") or {}).items():
            for out in body.get("outs") or []:
                tags[f"dvc.{stage}.{out['path']}"] = str(out.get("md5") or out.get("hash", ""))
        tags["dvc_lock_sha256"] = hashlib.sha256(dvc_lock.read_bytes()).hexdigest()
    return tags


def configure(params: Params) -> str:
    """Point MLflow at the configured store and experiment; return the experiment id."""
    import mlflow

    uri = params.runtime.tracking_uri
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(params.runtime.experiment)
    if experiment is not None:
        mlflow.set_experiment(params.runtime.experiment)
        return str(experiment.experiment_id)
    location = None
    if uri.startswith("sqlite:"):
        location = Path(ARTIFACT_ROOT).resolve().as_uri()
    exp_id = mlflow.create_experiment(params.runtime.experiment, artifact_location=location)
    mlflow.set_experiment(experiment_id=exp_id)
    return str(exp_id)


@contextmanager
def tracking_run(
    params: Params,
    stage: str,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> Iterator[Any]:
    """Start an MLflow run for a stage, logging all params (flattened) and the data fingerprint."""
    import mlflow

    configure(params)
    all_tags = {
        "stage": stage,
        "mlflow.source.name": f"use {stage}",  # not the entry script's absolute path
        **data_fingerprint(),
        **(tags or {}),
    }
    with mlflow.start_run(run_name=run_name or stage, tags=all_tags) as run:
        mlflow.log_params(safe_params(flatten(params)))
        yield run


class MlflowMetricsLogger:
    """The training/evaluation metrics interface, backed by the active MLflow run."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import math

        import mlflow

        clean = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(v)}
        if clean:
            mlflow.log_metrics(clean, step=step)
