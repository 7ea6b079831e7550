"""Shared fixtures: offline/quiet environment, real assets, small generated corpora."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# Offline and quiet for every test (../shared/STACK.md).
for _key, _value in {
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
}.items():
    os.environ.setdefault(_key, _value)


@pytest.fixture(autouse=True)
def _prefect_console_on_live_stderr() -> Iterator[None]:
    """Point Prefect's console log handlers at the current ``sys.stderr`` before each test.

    The handlers keep the stream they were configured with; when Prefect is first imported
    under a temporary stream (typer's ``CliRunner`` in the CLI tests), a later flow logs to a
    closed file and Python's logging error path recurses. Cheap: only when Prefect is loaded.
    """
    if "prefect" in sys.modules:
        from prefect.logging.handlers import PrefectConsoleHandler

        loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
        for logger in loggers:
            for handler in getattr(logger, "handlers", []):
                if isinstance(handler, PrefectConsoleHandler):
                    handler.console.file = sys.stderr
    yield


REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS_CACHE = Path(os.environ.get("USE_MODELS_CACHE", REPO_ROOT / ".cache" / "models"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def models_cache() -> Path:
    return MODELS_CACHE


@pytest.fixture(scope="session")
def mobile_sam_checkpoint() -> Path:
    """The real, hash-verified MobileSAM checkpoint fetched by `make assets`."""
    env = os.environ.get("USE_MOBILE_SAM")
    path = Path(env) if env else MODELS_CACHE / "mobile_sam.pt"
    if not path.exists():
        pytest.fail(f"MobileSAM checkpoint missing at {path}: run `make assets` first")
    return path


@pytest.fixture(scope="session")
def demo_models(models_cache: Path) -> dict[str, Path]:
    """Tiny random demo models in each library's format (built once, idempotent)."""
    from use_core.pretrained.demo import build_demo_models

    return build_demo_models(models_cache, seed=0)


@pytest.fixture(scope="session")
def shapes_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small shapes corpus (8 train + 4 val scenes at 224 px)."""
    from use_core.data.shapes.scenes import generate_shapes

    out = tmp_path_factory.mktemp("shapes")
    generate_shapes(out, train_images=8, val_images=4, image_size=224, seed=0, show_progress=False)
    return out
