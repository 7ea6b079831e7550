"""Registry and champion semantics against a real MLflow SQLite store."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from use_core.config import Params
from use_core.tracking.promotion import is_better, register_and_promote
from use_core.tracking.runs import safe_params, tracking_run


@pytest.fixture()
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Params:
    monkeypatch.chdir(tmp_path)
    p = Params()
    p.runtime.tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    p.runtime.experiment = "test"
    return p


class _Scale(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        return model_input * 2


def _log_model_run(params: Params, value: float) -> str:
    with tracking_run(params, "train"):
        mlflow.log_metric("shapes_mIoU", value)
        info = mlflow.pyfunc.log_model(name="model", python_model=_Scale(), pip_requirements=[])
    return str(info.model_uri)


def test_is_better() -> None:
    assert is_better(0.5, None, True) and is_better(0.5, 0.4, True)
    assert not is_better(0.4, 0.4, True) and is_better(0.3, 0.4, False)
    assert not is_better(float("nan"), 0.1, True)


def test_first_version_becomes_champion_then_only_strictly_better(store: Params) -> None:
    name = "use-test"
    first = register_and_promote(_log_model_run(store, 0.5), name, "shapes_mIoU", 0.5)
    assert first.promoted and first.reason == "first version"
    client = MlflowClient()
    assert str(client.get_model_version_by_alias(name, "champion").version) == first.version

    worse = register_and_promote(_log_model_run(store, 0.4), name, "shapes_mIoU", 0.4)
    equal = register_and_promote(_log_model_run(store, 0.5), name, "shapes_mIoU", 0.5)
    assert not worse.promoted and not equal.promoted
    assert str(client.get_model_version_by_alias(name, "champion").version) == first.version
    assert client.get_model_version(name, worse.version).tags["compared_to"] == first.version

    better = register_and_promote(_log_model_run(store, 0.6), name, "shapes_mIoU", 0.6)
    assert better.promoted and better.champion_version == first.version
    assert str(client.get_model_version_by_alias(name, "champion").version) == better.version


def test_run_logs_flat_params_and_fingerprint(store: Params) -> None:
    with tracking_run(store, "train") as run:
        pass
    got = MlflowClient().get_run(run.info.run_id)
    assert got.data.params["train.lr"] == "0.001"
    assert got.data.tags["stage"] == "train" and "git_commit" in got.data.tags


def test_safe_params_scrubs_absolute_paths_and_secrets(tmp_path: Path) -> None:
    flat = {
        "data.root": str(tmp_path / "data"),
        "x.api_key": "abc",
        "y": "/etc/passwd",
        "uri": "sqlite:///mlflow.db",
    }
    out = safe_params(flat, cwd=tmp_path)
    assert out["data.root"] == "data" and out["x.api_key"] == "<redacted>"
    assert out["y"] == "<abs>/passwd" and "/etc" not in out["y"]
    assert out["uri"] == "sqlite:///mlflow.db"
