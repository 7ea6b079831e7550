"""A tiny trained USE model in a throwaway project folder, shared by the CLI, serving and
notebook tests (not a test module: pytest does not collect it).

The model is real: the demo profile's CLIP backbone (from the model registry, as every stage
loads it) and a head trained for one epoch on the ground-truth segment-text pairs of a small
shapes corpus, saved by the training loop in the train stage's layout (``artifacts/train``).
:func:`serve_champion` logs it as the USE pyfunc, registers it as champion and serves it with
`use serve` on a free loopback port.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

# Small enough to train in a few seconds on 2 CPU cores.
TINY_TRAIN: dict[str, Any] = {
    "encoder": "clip",
    "epochs": 1,
    "batch_size": 4,
    "crop_size": 160,
    "image_size": 224,
    "feature_dim": 16,
    "cache_views": 1,
    "max_segments_per_image": 8,
    "feature_cache": False,
}


def write_tiny_params(
    path: Path, data_root: Path, models_cache: Path, **sections: dict[str, Any]
) -> Path:
    """Write a params.yaml for the tiny model; ``sections`` are merged over the defaults."""
    raw: dict[str, Any] = {
        "data": {"root": str(data_root)},
        "models": {"cache_dir": str(models_cache)},
        "train": dict(TINY_TRAIN),
        "eval": {"points_per_side": 8},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def train_tiny_model(params_path: Path, shapes_dir: Path, train_dir: Path) -> Path:
    """Train the head on ``shapes_dir``'s train split into ``train_dir``; return ``train_dir``
    (holding ``model/model.json`` + ``model/model.safetensors``)."""
    from use_core.config import load_params
    from use_core.data.shapes.gt import pairs_from_shapes_gt
    from use_core.model.factory import load_backbones
    from use_core.train import train_use_model

    params = load_params(params_path)
    pairs = pairs_from_shapes_gt(shapes_dir, "train")
    result = train_use_model(
        params, pairs, None, shapes_dir, train_dir, load_backbones(params), show_progress=False
    )
    assert (result.model_dir / "model.json").exists()
    return train_dir


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve_champion(
    root: Path, params_path: Path, train_dir: Path, models_cache: Path, model_name: str
) -> Iterator[str]:
    """Log ``train_dir``'s model as the pyfunc (as the train stage does), register it as the
    champion ``model_name`` in the run's tracking store, serve it with `use serve` from
    ``root`` on a free loopback port; yields the server URL and stops the server after."""
    import mlflow

    from use_core.config import load_params
    from use_core.tracking.promotion import register_and_promote
    from use_core.tracking.pyfunc import log_use_model
    from use_core.tracking.runs import tracking_run

    params = load_params(params_path)
    cwd, previous_uri = Path.cwd(), mlflow.get_tracking_uri()
    old_cache = os.environ.get("USE_MODELS_CACHE")
    os.environ["USE_MODELS_CACHE"] = str(models_cache)  # the logged input example is checked
    os.chdir(root)
    try:
        with tracking_run(params, "train"):
            uri = log_use_model(train_dir / "model", params)
        promotion = register_and_promote(uri, model_name, "shapes_mIoU", 0.1)
        assert promotion.promoted and promotion.reason == "first version"
    finally:
        os.chdir(cwd)
        mlflow.set_tracking_uri(previous_uri)
        if old_cache is None:
            os.environ.pop("USE_MODELS_CACHE", None)
        else:
            os.environ["USE_MODELS_CACHE"] = old_cache

    port = free_port()
    use_bin = Path(sys.executable).with_name("use")
    log = (root / "serve.log").open("w")
    proc = subprocess.Popen(
        [str(use_bin), "serve", "--port", str(port), "-p", str(params_path)],
        cwd=root,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: mlflow's workers stop with it
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 75
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"server exited ({proc.returncode}):\n{(root / 'serve.log').read_text()}"
                )
            try:
                if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not up in 75 s:\n{(root / 'serve.log').read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()
