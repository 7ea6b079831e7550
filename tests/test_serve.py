"""The registered champion served over HTTP by `mlflow models serve` (through `use serve`).

A tiny trained model is logged as the USE pyfunc exactly as the train stage logs it, registered
in a SQLite MLflow store as champion, served on a free loopback port, and queried with real
requests: embeddings of given masks, labels for a vocabulary, and refused bad input (HTTP 4xx).
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image
from tiny_project import train_tiny_model, write_tiny_params

MODEL_NAME = "use-serve-test"
MAX_PIXELS = 120_000  # data.max_image_pixels of the served model: a 400×400 image is oversize


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _png_b64(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _request(columns: list[str], rows: list[list[Any]]) -> dict[str, Any]:
    return {"dataframe_split": {"columns": columns, "data": rows}}


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory,
    shapes_small: Path,
    models_cache: Path,
    demo_models: dict,
) -> Iterator[dict[str, Any]]:
    """Train → log pyfunc → register champion → `use serve` on loopback; yields the URL."""
    import mlflow

    from use_core.config import load_params
    from use_core.tracking.promotion import register_and_promote
    from use_core.tracking.pyfunc import log_use_model
    from use_core.tracking.runs import tracking_run

    root = tmp_path_factory.mktemp("serve_project")
    params_path = write_tiny_params(
        root / "params.yaml",
        shapes_small,
        models_cache,
        data={"max_image_pixels": MAX_PIXELS},
        runtime={"tracking_uri": f"sqlite:///{root / 'mlflow.db'}", "experiment": "serve"},
        register={"model_name": MODEL_NAME},
    )
    train_dir = train_tiny_model(params_path, shapes_small, root / "artifacts" / "train")
    params = load_params(params_path)
    cwd, previous_uri = Path.cwd(), mlflow.get_tracking_uri()
    old_cache = os.environ.get("USE_MODELS_CACHE")
    os.environ["USE_MODELS_CACHE"] = str(models_cache)  # the logged input example is checked
    os.chdir(root)
    try:
        with tracking_run(params, "train"):
            uri = log_use_model(train_dir / "model", params)
        promotion = register_and_promote(uri, MODEL_NAME, "shapes_mIoU", 0.1)
        assert promotion.promoted and promotion.reason == "first version"
    finally:
        os.chdir(cwd)
        mlflow.set_tracking_uri(previous_uri)
        if old_cache is None:
            os.environ.pop("USE_MODELS_CACHE", None)
        else:
            os.environ["USE_MODELS_CACHE"] = old_cache

    port = _free_port()
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
        yield {"url": url, "params": params, "train_dir": train_dir}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()


def _shapes_request(shapes: Path) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """A val image of the corpus and the RLEs of its ground-truth instances."""
    from use_core.data.images import load_rgb

    coco = json.loads((shapes / "val" / "instances.json").read_text())
    info = coco["images"][0]
    image = load_rgb(shapes / "val" / "images" / info["file_name"], MAX_PIXELS)
    rles = [a["segmentation"] for a in coco["annotations"] if a["image_id"] == info["id"]]
    return image, rles


@pytest.mark.slow
def test_served_model_returns_unit_embeddings_and_labels(
    served: dict[str, Any], shapes_small: Path
) -> None:
    from use_core.infer.embed import embed_masks
    from use_core.model.checkpoint import load_use_model
    from use_core.ops.rle import decode_rles
    from use_core.pipeline.train import load_backbones

    image, rles = _shapes_request(shapes_small)
    body = _request(["image", "masks"], [[_png_b64(image), json.dumps(rles)]])
    resp = requests.post(f"{served['url']}/invocations", json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    rows = resp.json()["predictions"]
    assert [r["segment"] for r in rows] == list(range(len(rles)))
    emb = np.array([json.loads(r["embedding"]) for r in rows], dtype=np.float64)
    model = load_use_model(served["train_dir"] / "model", load_backbones(served["params"])).eval()
    assert emb.shape == (len(rles), model.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    local = embed_masks(model, image, decode_rles(rles, image.shape[:2])).numpy()
    np.testing.assert_allclose(emb, local, atol=1e-4)  # the served model is this model
    for row, rle in zip(rows, rles, strict=True):
        assert json.loads(row["rle"]) == {"size": rle["size"], "counts": rle["counts"]}

    vocab = ["red diamond", "blue circle", "green square"]
    body = _request(
        ["image", "vocab", "masks"], [[_png_b64(image), ",".join(vocab), json.dumps(rles)]]
    )
    resp = requests.post(f"{served['url']}/invocations", json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    rows = resp.json()["predictions"]
    assert len(rows) == len(rles)
    assert all(r["label"] in vocab and 1 / 3 <= r["score"] <= 1.0 for r in rows), rows


@pytest.mark.slow
def test_served_model_refuses_bad_input_with_4xx(
    served: dict[str, Any], shapes_small: Path
) -> None:
    image, rles = _shapes_request(shapes_small)
    good = _png_b64(image)
    big = _png_b64(np.zeros((400, 400, 3), np.uint8))  # 160 000 px > data.max_image_pixels
    masks = json.dumps(rles)
    cases = {  # name: (request, a fragment of the server's error message)
        "not base64": (_request(["image"], [["%%% not an image %%%"]]), "not valid base64"),
        "not an image": (
            _request(["image"], [[base64.b64encode(b"hello").decode()]]),
            "cannot be read",
        ),
        "oversize": (_request(["image", "masks"], [[big, masks]]), "exceeds"),
        "masks of another size": (
            _request(["image", "masks"], [[good, json.dumps([{"size": [5, 5], "counts": "0"}])]]),
            "'masks' must be a JSON list of COCO RLEs",
        ),
        "too many rows": (
            _request(["image", "masks"], [[good, masks]] * 17),
            "images per request",
        ),
        "no image column": (_request(["picture"], [[good]]), "image"),
    }
    for name, (body, fragment) in cases.items():
        resp = requests.post(f"{served['url']}/invocations", json=body, timeout=60)
        assert 400 <= resp.status_code < 500, (name, resp.status_code, resp.text)
        assert fragment in resp.json().get("message", ""), (name, resp.text)
    resp = requests.post(
        f"{served['url']}/invocations",
        data=b"{not json",
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert 400 <= resp.status_code < 500, resp.text
