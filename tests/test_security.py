"""Security: no pickle runs code at load time, no path leaves the data root, the served model
refuses bad requests with a 4xx-style error, MLflow params hold no absolute path or secret."""

from __future__ import annotations

import ast
import base64
import io
import json
import os
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "use_core"


# ---------------------------------------------------------------------------------- loading


def _calls(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                out.append((f"{func.value.id}.{func.attr}", node))
            elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Attribute):
                inner = func.value
                if isinstance(inner.value, ast.Name):
                    out.append((f"{inner.value.id}.{inner.attr}.{func.attr}", node))
    return out


def _kw(call: ast.Call, name: str) -> Any:
    for kw in call.keywords:
        if kw.arg == name and isinstance(kw.value, ast.Constant):
            return kw.value.value
    return None


def test_no_loader_in_the_package_can_unpickle_code() -> None:
    """Every torch.load passes weights_only=True; no pickle / joblib / unsafe yaml / np pickles."""
    bad: list[str] = []
    seen_torch_load = 0
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for name, call in _calls(tree):
            where = f"{path.relative_to(REPO)}:{call.lineno} {name}"
            if name == "torch.load":
                seen_torch_load += 1
                if _kw(call, "weights_only") is not True:
                    bad.append(f"{where} without weights_only=True")
            elif name in (
                "pickle.load",
                "pickle.loads",
                "joblib.load",
                "dill.load",
                "torch.jit.load",
            ):
                bad.append(where)
            elif name == "yaml.load" and "Safe" not in ast.unparse(call):
                bad.append(f"{where} without a safe loader")
            elif name == "np.load" and _kw(call, "allow_pickle") is not False:
                bad.append(f"{where} without allow_pickle=False")
            elif name in ("torch.save",):
                bad.append(f"{where}: checkpoints are written with safetensors")
    assert bad == [], "\n".join(bad)


class _Payload:
    """Unpickling this object writes a marker file: code execution at load time."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (self.marker, "code ran"))


def _pickle_bomb(tmp_path: Path, name: str) -> tuple[Path, Path]:
    marker = tmp_path / "pwned.txt"
    path = tmp_path / name
    torch.save({"model": _Payload(marker)}, path)
    return path, marker


def test_sam_loader_refuses_a_pickle_bomb(tmp_path: Path) -> None:
    from use_core.config import ModelSpec
    from use_core.pretrained.registry import load_spec

    bomb, marker = _pickle_bomb(tmp_path, "mobile_sam.pt")
    spec = ModelSpec(kind="mobile_sam", name="vit_t", pretrained=str(bomb))
    with pytest.raises(Exception, match="(?i)weights.only|unpickl"):
        load_spec("sam", spec, torch.device("cpu"))
    assert not marker.exists()


def test_sam_loader_refuses_a_pickle_bomb_whatever_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from use_core.config import ModelSpec
    from use_core.pretrained.registry import load_spec

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    bomb, marker = _pickle_bomb(tmp_path, "mobile_sam.pt")
    spec = ModelSpec(kind="mobile_sam", name="vit_t", pretrained=str(bomb))
    with pytest.raises(Exception):  # noqa: B017 - any refusal will do
        load_spec("sam", spec, torch.device("cpu"))
    assert not marker.exists()


def test_use_checkpoints_are_safetensors_only(tmp_path: Path) -> None:
    """A pickle dropped in place of model.safetensors is refused by the USE checkpoint loader."""
    from use_core.model.checkpoint import FORMAT, load_trainable_state

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    bomb, marker = _pickle_bomb(tmp_path, "bomb.pt")
    (ckpt / "model.safetensors").write_bytes(bomb.read_bytes())
    spec = {"backbones": []}
    (ckpt / "model.json").write_text(json.dumps({"format": FORMAT, "spec": spec}))
    model = SimpleNamespace(spec=lambda: spec, device=torch.device("cpu"))
    with pytest.raises(Exception, match="(?i)header|safetensor|deserializ"):
        load_trainable_state(model, ckpt)  # type: ignore[arg-type]
    assert not marker.exists()


# ---------------------------------------------------------------------------------- paths


def _params(root: Path, **source: Any) -> Any:
    from use_core.config import parse_params

    src = {"name": "s", "kind": "image_folder", "images": "imgs", **source}
    return parse_params({"data": {"root": str(root), "sources": [src]}})


@pytest.mark.parametrize(
    "source",
    [
        {"images": "../outside"},
        {"images": "/etc"},
        {"kind": "coco_captions", "annotations": "../../etc/passwd"},
        {"kind": "coco_captions", "annotations": "/etc/passwd"},
        {"images": "imgs/../../outside"},
        {"gt_instances": ["../secret.json"]},
    ],
)
def test_params_cannot_point_outside_the_data_root(tmp_path: Path, source: dict) -> None:
    from use_core.data.plan import build_plan
    from use_core.data.sources import UnsafePathError

    root = tmp_path / "data"
    (root / "imgs").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    with pytest.raises(UnsafePathError, match="outside the data root|not allowed"):
        build_plan(_params(root, **source))


def test_symlink_out_of_the_data_root_is_rejected(tmp_path: Path) -> None:
    from use_core.data.plan import build_plan
    from use_core.data.sources import UnsafePathError

    root = tmp_path / "data"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", root / "imgs")
    with pytest.raises(UnsafePathError, match="outside the data root"):
        build_plan(_params(root))


def test_manifest_entries_escaping_the_root_are_quarantined(tmp_path: Path) -> None:
    from use_core.data.plan import build_plan

    root = tmp_path / "data"
    (root / "imgs").mkdir(parents=True)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "imgs" / "ok.png")
    secret = tmp_path / "secret.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(secret)
    os.symlink(secret, root / "imgs" / "link.png")
    images = [
        {"id": 1, "file_name": "ok.png"},
        {"id": 2, "file_name": "../../secret.png"},
        {"id": 3, "file_name": str(secret)},
        {"id": 4, "file_name": "link.png"},
    ]
    (root / "caps.json").write_text(json.dumps({"images": images, "annotations": []}))
    plan = build_plan(_params(root, kind="coco_captions", annotations="caps.json"))
    assert [it.image_id for s in plan.shards for it in s.items] == ["imgs/ok.png"]
    unsafe = sorted(q.image_id for q in plan.quarantine if q.reason == "unsafe_path")
    assert unsafe == ["s/2", "s/3", "s/4"]


# ---------------------------------------------------------------------------------- serving


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, models_cache: Path, demo_models: dict) -> Any:
    """A USEPyfunc loaded through load_context from a real (untrained) USE checkpoint."""
    from use_core.config import Params
    from use_core.model import USEModelConfig, create_use_model
    from use_core.model.checkpoint import save_use_model
    from use_core.model.factory import load_backbones
    from use_core.tracking.pyfunc import USEPyfunc

    tmp = tmp_path_factory.mktemp("pyfunc")
    params = Params()
    params.models.cache_dir = str(models_cache)
    params.runtime.device = "cpu"
    params.train.encoder = "clip"
    params.train.image_size = 64
    params.train.feature_dim = 16
    config = USEModelConfig.from_params(params, grid_size=4)
    model = create_use_model(config, load_backbones(params), seed=0)
    save_use_model(model, tmp / "ckpt")
    (tmp / "config.json").write_text(json.dumps({"params": params.model_dump(mode="json")}))
    py = USEPyfunc()
    py.load_context(
        SimpleNamespace(
            artifacts={"checkpoint": str(tmp / "ckpt"), "config": str(tmp / "config.json")}
        )
    )
    return py


def _png(h: int = 32, w: int = 32) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), 200, np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _bomb_png() -> str:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", 60_000, 60_000, 8, 2, 0, 0, 0)
    raw = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return base64.b64encode(raw + chunk(b"IEND", b"")).decode()


def _mask_json(h: int = 32, w: int = 32) -> str:
    from use_core.ops.rle import encode_mask

    mask = np.zeros((h, w), bool)
    mask[8:24, 8:24] = True
    return json.dumps([encode_mask(mask)])


def test_pyfunc_answers_a_valid_request(served: Any) -> None:
    out = served.predict(
        None, pd.DataFrame({"image": [_png()], "vocab": ["red,blue"], "masks": [_mask_json()]})
    )
    assert list(out["label"]) in (["red"], ["blue"]) and 0.0 <= float(out["score"][0]) <= 1.0


BAD_REQUESTS: dict[str, tuple[Any, str]] = {
    "no image column": (pd.DataFrame({"picture": ["x"]}), "'image' column"),
    "too many rows": (pd.DataFrame({"image": [_png()] * 17}), "send 1..16 images"),
    "no rows": (pd.DataFrame({"image": []}), "send 1..16 images"),
    "image not a string": (pd.DataFrame({"image": [12345]}), "non-empty base64"),
    "image missing": (pd.DataFrame({"image": [None]}), "non-empty base64"),
    "not base64": (pd.DataFrame({"image": ["%%% not base64 %%%"]}), "not valid base64"),
    "base64 of text": (
        pd.DataFrame({"image": [base64.b64encode(b"hello world").decode()]}),
        "cannot be read",
    ),
    "oversize payload": (pd.DataFrame({"image": ["A" * (23 * 1024 * 1024)]}), "larger than"),
    "decompression bomb": (pd.DataFrame({"image": [_bomb_png()]}), "decompression-bomb"),
    "masks not json": (
        pd.DataFrame({"image": [_png()], "masks": ["[{oops"]}),
        "'masks' must be a JSON list",
    ),
    "masks of another size": (
        pd.DataFrame({"image": [_png()], "masks": [_mask_json(16, 16)]}),
        "'masks' must be a JSON list",
    ),
    "masks null": (pd.DataFrame({"image": [_png()], "masks": ["null"]}), "'masks'"),
    "masks an object": (pd.DataFrame({"image": [_png()], "masks": ['{"a": 1}']}), "'masks'"),
    "masks empty": (pd.DataFrame({"image": [_png()], "masks": ["[]"]}), "'masks' is empty"),
    "vocab not a string": (
        pd.DataFrame({"image": [_png()], "vocab": [7], "masks": [_mask_json()]}),
        "'vocab' must be",
    ),
    "vocab too long": (
        pd.DataFrame(
            {"image": [_png()], "vocab": [",".join(["c"] * 1001)], "masks": [_mask_json()]}
        ),
        "'vocab' must name 1..1000",
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_pyfunc_rejects_bad_input_with_a_400(served: Any, case: str) -> None:
    from mlflow.exceptions import MlflowException

    frame, message = BAD_REQUESTS[case]
    with pytest.raises(MlflowException) as err:
        served.predict(None, frame)
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"
    assert err.value.get_http_status_code() == 400
    assert message in err.value.message


# ---------------------------------------------------------------------------------- MLflow


def test_train_stage_params_and_model_config_hold_no_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tracking_run(params, "train")` is how the train stage logs its params; the pyfunc config
    artifact is :func:`portable_params`."""
    from mlflow import MlflowClient

    from use_core.config import Params, flatten
    from use_core.tracking.pyfunc import portable_params
    from use_core.tracking.runs import tracking_run

    work = tmp_path / "project"
    work.mkdir()
    monkeypatch.chdir(work)
    params = Params()
    params.runtime.tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params.runtime.experiment = "sec"
    params.data.root = str(work / "data")
    params.models.cache_dir = str(tmp_path / "elsewhere" / "models")
    params.checks.report = str(work / "reports" / "checks.json")
    with tracking_run(params, "train") as run:
        pass
    logged = MlflowClient().get_run(run.info.run_id).data
    # known leaks, tested separately below (runs.py): the tracking URI and MLflow's source tag
    known = {"runtime.tracking_uri", "mlflow.source.name"}
    values = [v for k, v in {**logged.params, **logged.tags}.items() if k not in known]
    leaks = [v for v in values if str(tmp_path) in v or v.startswith("/")]
    assert leaks == [], leaks
    assert logged.params["data.root"] == "data"
    assert logged.params["models.cache_dir"] == "<abs>/models"

    flat = json.dumps(portable_params(params))
    assert str(tmp_path) not in flat, [
        f"{k}={v}"
        for k, v in flatten(Params.model_validate(portable_params(params))).items()
        if str(tmp_path) in str(v)
    ]


def test_no_absolute_path_at_all_reaches_mlflow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    from use_core.config import Params
    from use_core.tracking.runs import tracking_run

    monkeypatch.chdir(tmp_path)
    params = Params()
    params.runtime.tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params.runtime.experiment = "sec2"
    with tracking_run(params, "train") as run:
        pass
    logged = MlflowClient().get_run(run.info.run_id).data
    values = list(logged.params.values()) + list(logged.tags.values())
    assert [v for v in values if "/tmp/" in v or v.startswith("/")] == []


def test_override_paths_are_stored_through_the_models_cache(tmp_path: Path) -> None:
    from use_core.config import ModelSpec, Params
    from use_core.tracking.pyfunc import portable_params, relocated_weights

    params = Params()
    params.models.cache_dir = str(tmp_path / "cache")
    params.models.overrides = {
        "sam": ModelSpec(kind="sam", name="vit_h", pretrained=str(tmp_path / "cache/sam/h.pth")),
        "clip": ModelSpec(kind="open_clip", name=f"local-dir:{tmp_path / 'w' / 'clip-l'}"),
        "dinov2": ModelSpec(kind="hf_dinov2", name="facebook/dinov2-large"),  # a hub id: kept
    }
    out = portable_params(params)["models"]["overrides"]
    assert out["sam"]["pretrained"] == "{cache}/sam/h.pth"
    assert out["clip"]["name"] == "local-dir:{cache}/clip/clip-l"
    assert out["dinov2"]["name"] == "facebook/dinov2-large"
    assert relocated_weights(params) == {"clip.name": "local-dir:{cache}/clip/clip-l"}
