"""Model registry semantics: register a version, promote it to the alias only if strictly better.

The champion alias is moved in one call (``set_registered_model_alias``) only after the new
version exists and is READY, so it never points at a version that does not exist.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Promotion:
    """The outcome of registering one model version."""

    name: str
    version: str
    metric: str
    value: float
    champion_version: str | None
    champion_value: float | None
    promoted: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_better(new: float, old: float | None, higher_is_better: bool) -> bool:
    """Strict comparison; a NaN new value is never better, anything beats a missing champion."""
    if math.isnan(new):
        return False
    if old is None or math.isnan(old):
        return True
    return new > old if higher_is_better else new < old


def register_and_promote(
    model_uri: str,
    name: str,
    metric: str,
    value: float,
    higher_is_better: bool = True,
    alias: str = "champion",
    client: Any = None,
) -> Promotion:
    """Register ``model_uri`` as a new version of ``name``; move ``alias`` to it if strictly better.

    The comparison is stored as version tags (``metric``, ``value``, ``compared_to``, ``promoted``).
    """
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = client or MlflowClient()
    champion_version: str | None = None
    champion_value: float | None = None
    try:
        current = client.get_model_version_by_alias(name, alias)
        champion_version = str(current.version)
        raw = (current.tags or {}).get(f"metric.{metric}")
        champion_value = float(raw) if raw is not None else None
    except MlflowException:
        pass  # no registered model or no alias yet: the first version becomes champion

    mv = mlflow.register_model(model_uri, name)
    version = str(mv.version)
    client.set_model_version_tag(name, version, f"metric.{metric}", repr(float(value)))
    promoted = is_better(float(value), champion_value, higher_is_better)
    if champion_version is None:
        reason = "first version"
    elif promoted:
        reason = f"{metric} {value:.4f} beats champion v{champion_version} ({champion_value:.4f})"
    else:
        shown = "n/a" if champion_value is None else f"{champion_value:.4f}"
        reason = f"{metric} {value:.4f} does not beat champion v{champion_version} ({shown})"
    client.set_model_version_tag(name, version, "compared_to", champion_version or "none")
    client.set_model_version_tag(name, version, "promoted", str(promoted).lower())
    client.set_model_version_tag(name, version, "comparison", reason)
    if promoted:
        client.set_registered_model_alias(name, alias, version)
    return Promotion(
        name, version, metric, float(value), champion_version, champion_value, promoted, reason
    )
