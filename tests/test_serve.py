"""The registered champion served over HTTP by `mlflow models serve` (through `use serve`).

A tiny trained model is logged as the USE pyfunc exactly as the train stage logs it, registered
in a SQLite MLflow store as champion, served on a free loopback port, and queried with real
requests: embeddings of given masks, labels for a vocabulary, and refused bad input (HTTP 4xx).
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image
from tiny_project import serve_champion, train_tiny_model, write_tiny_params

MODEL_NAME = "use-serve-test"
MAX_PIXELS = 120_000  # data.max_image_pixels of the served model: a 400×400 image is oversize


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
    from use_core.config import load_params

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
    with serve_champion(root, params_path, train_dir, models_cache, MODEL_NAME) as url:
        yield {"url": url, "params": load_params(params_path), "train_dir": train_dir}


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
    from use_core.model.factory import load_backbones
    from use_core.ops.rle import decode_rles

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


@pytest.mark.slow
def test_a_registered_model_with_outside_weights_loads_from_a_copy_elsewhere(
    served: dict[str, Any],
    shapes_small: Path,
    models_cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A model whose CLIP override is an absolute folder outside the models cache is registered,
    downloaded, moved to another path and loaded with another cache (as on another machine) in
    which that folder was put where the config says: it answers as the served champion does."""
    import shutil

    import mlflow
    import pandas as pd

    from use_core.config import ModelSpec
    from use_core.tracking.pyfunc import log_use_model

    weights = tmp_path / "machine1" / "weights" / "my-clip"
    shutil.copytree(models_cache / "demo" / "clip", weights)
    params = served["params"].model_copy(deep=True)
    params.models.overrides["clip"] = ModelSpec(kind="open_clip", name=f"local-dir:{weights}")
    mlflow.set_tracking_uri(params.runtime.tracking_uri)
    mlflow.set_experiment("portable")
    with mlflow.start_run():
        uri = log_use_model(served["train_dir"] / "model", params)
    version = mlflow.register_model(uri, "use-portable-test").version
    copy = mlflow.artifacts.download_artifacts(
        f"models:/use-portable-test/{version}", dst_path=str(tmp_path / "machine1" / "download")
    )
    config = json.loads((Path(copy) / "artifacts" / "use_pyfunc.json").read_text())
    assert str(tmp_path) not in json.dumps(config)
    assert config["relocated_weights"] == {"clip.name": "local-dir:{cache}/clip/my-clip"}

    moved = shutil.move(copy, tmp_path / "machine2" / "model")
    shutil.rmtree(tmp_path / "machine1")
    cache2 = tmp_path / "machine2" / "cache"
    shutil.copytree(models_cache / "demo" / "clip", cache2 / "clip" / "my-clip")
    for entry in models_cache.iterdir():  # the profile's other models, as that machine has them
        (cache2 / entry.name).symlink_to(entry)
    monkeypatch.setenv("USE_MODELS_CACHE", str(cache2))
    image, rles = _shapes_request(shapes_small)
    vocab = "red diamond,blue circle,green square"
    frame = pd.DataFrame(
        {"image": [_png_b64(image)], "vocab": [vocab], "masks": [json.dumps(rles)]}
    )
    got = mlflow.pyfunc.load_model(str(moved)).predict(frame)

    body = _request(["image", "vocab", "masks"], [[_png_b64(image), vocab, json.dumps(rles)]])
    resp = requests.post(f"{served['url']}/invocations", json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    champion = resp.json()["predictions"]
    assert list(got["label"]) == [r["label"] for r in champion]
    np.testing.assert_allclose(got["score"], [r["score"] for r in champion], atol=1e-6)
