"""The USE model as an MLflow pyfunc: an image (optional masks, vocabulary) in, segments out.

Input: a DataFrame, one row per image, columns
  ``image``  base64 of a PNG/JPEG file (required, at most :data:`MAX_IMAGE_BYTES` decoded),
  ``vocab``  comma-separated class names (optional: without it, embeddings are returned),
  ``masks``  JSON list of COCO RLEs (optional: without it, SAM proposals on a point grid).
Output: one row per segment with ``row``, ``segment``, ``label``, ``score``, ``bbox`` (JSON xywh),
``rle`` (JSON COCO RLE) and ``embedding`` (JSON list, only without a vocabulary).
Segments, embeddings, labels and scores come from :func:`use_core.infer.predict.predict_segments`,
the predict path of ``use segment`` and of the evaluation (SAM on ``runtime.device``).
Malformed or oversize input raises an ``INVALID_PARAMETER_VALUE`` error, which the MLflow scoring
server answers with HTTP 400.

The artifact holds only the trained head (safetensors) and a JSON config naming the backbones as
registry specs; the frozen backbones are loaded through the model registry at load time (set
``USE_MODELS_CACHE`` to where the models live when serving from another folder). No absolute
path is stored: weights named by ``models.overrides`` are referenced through ``{cache}``, and
those that lived outside the cache are listed under ``relocated_weights`` in the config with the
place in the cache where the loading machine must put them.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from use_core.config import ModelSpec, Params

MAX_IMAGE_BYTES = 16 * 1024 * 1024
MAX_ROWS = 16
MAX_VOCAB = 1000

try:  # mlflow is a hard dependency; the guard keeps this module importable for type checkers
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover
    PythonModel = object  # type: ignore[misc,assignment]


class InvalidInput(ValueError):
    """A request the model refuses (maps to HTTP 400)."""


def _invalid(message: str) -> Exception:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def decode_image(payload: Any, max_pixels: int) -> np.ndarray:
    """base64 PNG/JPEG → HWC uint8 RGB; raises :class:`InvalidInput` with the reason."""
    from use_core.data.images import ImageLoadError, load_rgb

    if not isinstance(payload, str) or not payload:
        raise InvalidInput("'image' must be a non-empty base64 string")
    if len(payload) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise InvalidInput(f"'image' is larger than {MAX_IMAGE_BYTES} bytes")
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"'image' is not valid base64: {exc}") from None
    with tempfile.NamedTemporaryFile(suffix=".img") as fh:
        fh.write(raw)
        fh.flush()
        try:
            return load_rgb(fh.name, max_pixels)
        except ImageLoadError as exc:
            raise InvalidInput(f"'image' cannot be read: {exc.reason}") from None


def parse_vocab(value: Any) -> list[str] | None:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidInput("'vocab' must be a comma-separated string")
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names or len(names) > MAX_VOCAB:
        raise InvalidInput(f"'vocab' must name 1..{MAX_VOCAB} classes")
    return names


def parse_masks(value: Any, hw: tuple[int, int]) -> np.ndarray | None:
    from use_core.ops.rle import decode_rles

    if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
        return None
    try:
        rles = json.loads(value) if isinstance(value, str) else value
        masks = decode_rles(rles, hw)
    except (ValueError, TypeError, KeyError) as exc:
        raise InvalidInput(
            f"'masks' must be a JSON list of COCO RLEs of the image size: {exc}"
        ) from None
    if not len(masks):
        raise InvalidInput("'masks' is empty")
    return masks


class USEPyfunc(PythonModel):  # type: ignore[misc,valid-type]
    """Segment embeddings / open-vocabulary labels for images, as an MLflow model."""

    def load_context(self, context: Any) -> None:
        from use_core.model.checkpoint import load_use_model

        cfg = json.loads(Path(context.artifacts["config"]).read_text())
        params = Params.model_validate(cfg["params"])
        cache = os.environ.get("USE_MODELS_CACHE")
        if cache:
            params.models.cache_dir = cache
        self.params = params
        self.model = load_use_model(context.artifacts["checkpoint"], params=params)
        self.model.eval()
        self._sam: Any = None

    def _sam_model(self) -> Any:
        """SAM on ``runtime.device``, loaded at the first request that needs proposals."""
        if self._sam is None:
            from use_core.pretrained.registry import load_pretrained

            self._sam = load_pretrained("sam", self.params)
        return self._sam

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        try:
            return self._predict(model_input)
        except InvalidInput as exc:
            raise _invalid(str(exc)) from None

    def _predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        from use_core.infer.predict import predict_segments
        from use_core.ops.rle import encode_mask, rle_bbox_xywh

        if not isinstance(frame, pd.DataFrame) or "image" not in frame.columns:
            raise InvalidInput("input must be a table with an 'image' column")
        if not 1 <= len(frame) <= MAX_ROWS:
            raise InvalidInput(f"send 1..{MAX_ROWS} images per request, got {len(frame)}")
        rows: list[dict[str, Any]] = []
        for i, rec in enumerate(frame.to_dict("records")):
            image = decode_image(rec.get("image"), self.params.data.max_image_pixels)
            vocab = parse_vocab(rec.get("vocab"))
            masks = parse_masks(rec.get("masks"), image.shape[:2])
            pred = predict_segments(
                self.model,
                image,
                masks,
                self._sam_model() if masks is None else None,
                vocab,
                points_per_side=self.params.eval.points_per_side,
                class_templates=self.params.eval.class_templates,
                logit_scale=self.params.train.logit_scale,
                mask_nms_iou=self.params.nms.iou_threshold,
            )
            labels = pred.labels
            for k, mask in enumerate(pred.masks):
                rle = encode_mask(mask)
                row: dict[str, Any] = {
                    "row": i,
                    "segment": k,
                    "bbox": json.dumps(rle_bbox_xywh(rle)),
                    "rle": json.dumps(rle),
                }
                if labels is not None and pred.scores is not None:
                    row.update(label=labels[k], score=float(pred.scores[k]))
                else:
                    row.update(label="", score=float("nan"))
                    row["embedding"] = json.dumps([round(float(v), 6) for v in pred.embeddings[k]])
                rows.append(row)
        return pd.DataFrame(rows)


def pip_requirements() -> list[str]:
    """The project itself pins everything the model needs."""
    from importlib.metadata import version

    return [f"use-core=={version('use-core')}"]


def input_example() -> pd.DataFrame:
    """A tiny valid request: a 32×32 PNG, one mask, a two-class vocabulary."""
    from PIL import Image

    from use_core.ops.rle import encode_mask

    img = np.zeros((32, 32, 3), np.uint8)
    img[8:24, 8:24] = (220, 30, 30)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    mask = np.zeros((32, 32), bool)
    mask[8:24, 8:24] = True
    return pd.DataFrame(
        {
            "image": [base64.b64encode(buf.getvalue()).decode()],
            "vocab": ["red square,blue circle"],
            "masks": [json.dumps([encode_mask(mask)])],
        }
    )


LOCAL_DIR = "local-dir:"  # open_clip's prefix of a local model folder


def _portable_path(value: str | None, cache: Path, role: str) -> tuple[str | None, bool]:
    """``value`` with an absolute path made relative to the models cache: ``{cache}/<rel>``
    inside it, ``{cache}/<role>/<file name>`` outside it (the file must be put there on the
    machine that loads the model). Returns ``(value, relocated)``; other values are kept."""
    if value is None:
        return None, False
    prefix = LOCAL_DIR if value.startswith(LOCAL_DIR) else ""
    path = value[len(prefix) :]
    if "{cache}" in path or not Path(path).is_absolute():
        return value, False
    resolved = Path(path).resolve()
    try:
        return f"{prefix}{{cache}}/{resolved.relative_to(cache).as_posix()}", False
    except ValueError:
        return f"{prefix}{{cache}}/{role}/{resolved.name}", True


def portable_params(params: Params) -> dict[str, Any]:
    """Params for the artifact with no absolute path: the model cache relative to the working
    directory when inside it (else the default, overridable with ``USE_MODELS_CACHE``), and
    ``models.overrides`` paths through ``{cache}`` (:func:`relocated_weights` lists those that
    must be copied into the cache of the machine that loads the model)."""
    out = params.model_copy(deep=True)
    out.data.root = "data"
    # not used when serving, and may name local files: back to the (relative) defaults
    defaults = Params()
    out.checks.report = defaults.checks.report
    out.runtime.tracking_uri = defaults.runtime.tracking_uri
    cache = Path(out.models.cache_dir)
    if cache.is_absolute():
        try:
            out.models.cache_dir = cache.resolve().relative_to(Path.cwd().resolve()).as_posix()
        except ValueError:
            out.models.cache_dir = ".cache/models"
    out.models.overrides = _portable_overrides(params)[0]
    return out.model_dump(mode="json")


def relocated_weights(params: Params) -> dict[str, str]:
    """``"<role>.<field>" → "{cache}/<role>/<file>"`` for override paths outside the cache."""
    return _portable_overrides(params)[1]


def _portable_overrides(params: Params) -> tuple[dict[Any, ModelSpec], dict[str, str]]:
    """``models.overrides`` with every path through ``{cache}``, and the relocated ones."""
    cache = Path(params.models.cache_dir).expanduser().resolve()
    specs: dict[Any, ModelSpec] = {}
    moved: dict[str, str] = {}
    for role, spec in params.models.overrides.items():
        fields: dict[str, str | None] = {}
        for field in ("name", "pretrained"):
            value, relocated = _portable_path(getattr(spec, field), cache, role)
            fields[field] = value
            if relocated and value is not None:
                moved[f"{role}.{field}"] = value
        specs[role] = spec.model_copy(update=fields)
    return specs, moved


def signature() -> Any:
    """Input: image (required), vocab and masks (optional); output: one row per segment."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    inputs = Schema(
        [
            ColSpec("string", "image"),
            ColSpec("string", "vocab", required=False),
            ColSpec("string", "masks", required=False),
        ]
    )
    outputs = Schema(
        [
            ColSpec("long", "row"),
            ColSpec("long", "segment"),
            ColSpec("string", "bbox"),
            ColSpec("string", "rle"),
            ColSpec("string", "label"),
            ColSpec("double", "score"),
            ColSpec("string", "embedding", required=False),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)


def log_use_model(model_dir: Path, params: Params, name: str = "model") -> str:
    """Log the trained head as a pyfunc in the active run; return its model URI."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "use_pyfunc.json"
        doc = {"params": portable_params(params), "relocated_weights": relocated_weights(params)}
        config.write_text(json.dumps(doc, indent=2))
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=USEPyfunc(),
            artifacts={"checkpoint": str(model_dir), "config": str(config)},
            signature=signature(),
            input_example=input_example(),
            pip_requirements=pip_requirements(),
        )
    return str(info.model_uri)
