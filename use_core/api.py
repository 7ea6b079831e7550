"""The handful of functions a user of USE needs from Python, with params.yaml's settings.

``import use_core`` gives these names lazily (``use_core.segment``...), so importing the package
stays light and no pipeline stage loads this module::

    import use_core

    params = use_core.load_params("params.yaml")
    model = use_core.load_model("artifacts/train", params)
    pred = use_core.segment(model, "photo.jpg", ["sky", "tree", "house"], params)
    pred.labels, pred.scores, pred.masks          # per segment (SAM proposals)
    index = use_core.build_index(model, use_core.read_pairs(params), params, "segments.parquet")
    hits = use_core.search(use_core.load_index(index.path), model, "a red roof", top_k=10)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from use_core.config import Params, load_params
from use_core.data.shapes.gt import pairs_from_shapes_gt, shapes_class_names
from use_core.data.shapes.scenes import generate_shapes
from use_core.infer.embed import embed_masks
from use_core.infer.predict import Prediction
from use_core.infer.query import IndexReport, load_index, save_hits_sheet, search

__all__ = [
    "Params",
    "Prediction",
    "build_index",
    "embed_masks",
    "generate_shapes",
    "input_example",
    "load_image",
    "load_index",
    "load_model",
    "load_params",
    "load_sam",
    "pair_masks",
    "pairs_from_shapes_gt",
    "read_pairs",
    "save_hits_sheet",
    "search",
    "segment",
    "shapes_class_names",
    "train_model",
]


def load_image(path: str | Path, params: Params) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB of an image file (at most ``data.max_image_pixels``)."""
    from use_core.data.images import load_rgb

    return load_rgb(path, params.data.max_image_pixels)


def pair_masks(pairs: pd.DataFrame) -> np.ndarray:
    """``(N, H, W)`` bool masks of pairs-table rows of one image (their ``rle``, ``height``,
    ``width``), in row order."""
    from use_core.ops.rle import decode_rle, rle_from_string

    if not len(pairs):
        raise ValueError("no rows to decode")
    return np.stack(
        [decode_rle(rle_from_string(r.rle, r.height, r.width)) for r in pairs.itertuples()]
    )


def train_model(
    params: Params, pairs: pd.DataFrame, image_root: str | Path, out_dir: str | Path
) -> Any:
    """Train the USE head on ``pairs`` (image paths relative to ``image_root``) into ``out_dir``
    as the train stage does, without tracking; the trained model in eval mode."""
    from use_core.model.factory import load_backbones
    from use_core.train import train_use_model

    result = train_use_model(
        params, pairs, None, image_root, out_dir, load_backbones(params), show_progress=False
    )
    return load_model(result.model_dir, params)


def input_example() -> pd.DataFrame:
    """A one-row request of the served model (``models:/<name>@champion``)."""
    from use_core.tracking.pyfunc import input_example as example

    return example()


def load_model(model_dir: str | Path, params: Params) -> Any:
    """The trained USE model in eval mode, on ``runtime.device``.

    ``model_dir`` is the train stage's folder (holding ``model/``) or a model folder (holding
    ``model.json``); the frozen backbones its config names load through the model registry.
    """
    from use_core.model.checkpoint import load_use_model

    folder = Path(model_dir)
    if not (folder / "model.json").exists() and (folder / "model" / "model.json").exists():
        folder = folder / "model"
    if not (folder / "model.json").exists():
        raise FileNotFoundError(f"no trained model in {model_dir}: run `use train` first")
    return load_use_model(folder, params=params).eval()


def load_sam(params: Params) -> Any:
    """SAM of ``params.models`` on ``runtime.device`` (cached per process)."""
    from use_core.pretrained.registry import load_pretrained

    return load_pretrained("sam", params)


def segment(
    model: Any,
    image: str | Path | np.ndarray,
    vocab: Sequence[str] | None,
    params: Params,
    masks: np.ndarray | None = None,
    sam: Any = None,
) -> Prediction:
    """Segments of ``image`` (a path, or ``(H, W, 3)`` uint8 RGB), embedded and, with a
    ``vocab``, labelled — the same predict path as ``use segment`` and the served model.

    ``masks`` (``(N, H, W)`` bool) replace SAM's proposals (grid of ``eval.points_per_side``,
    mask NMS at ``nms.iou_threshold``); ``sam`` defaults to :func:`load_sam`.
    """
    from use_core.infer.predict import predict_segments

    rgb = image if isinstance(image, np.ndarray) else load_image(image, params)
    if masks is None and sam is None:
        sam = load_sam(params)
    return predict_segments(
        model,
        rgb,
        masks,
        sam,
        list(vocab) if vocab is not None else None,
        points_per_side=params.eval.points_per_side,
        class_templates=params.eval.class_templates,
        logit_scale=params.train.logit_scale,
        mask_nms_iou=params.nms.iou_threshold,
    )


def read_pairs(params: Params) -> pd.DataFrame:
    """The curated pairs table of the current plan (one row per segment; see DESIGN's contract).

    Raises ``FileNotFoundError`` when a shard of the plan was never curated (`dvc repro nms`).
    """
    from use_core.pipeline.shards import read_stage

    return read_stage("nms", params)


def build_index(
    model: Any,
    segments: pd.DataFrame | str | Path,
    params: Params,
    out: str | Path,
    root: str | Path | None = None,
) -> IndexReport:
    """A searchable segment index (Parquet) at ``out`` for :func:`search`.

    ``segments``: a pairs table (frame or Parquet path; image paths relative to ``root``,
    default ``data.root``) or a folder of images (SAM proposals of each, as ``use index``).
    """
    from use_core.infer.query import build_index_from_images, build_index_from_pairs

    if isinstance(segments, str | Path) and Path(segments).is_dir():
        return build_index_from_images(
            model,
            load_sam(params),
            segments,
            out,
            points_per_side=params.eval.points_per_side,
            max_pixels=params.data.max_image_pixels,
            mask_nms_iou=params.nms.iou_threshold,
        )
    return build_index_from_pairs(
        model,
        segments,
        root if root is not None else params.data.root,
        out,
        max_pixels=params.data.max_image_pixels,
    )
