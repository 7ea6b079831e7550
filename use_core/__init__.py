"""USE — Universal Segment Embeddings: curation pipeline, model, evaluation, MLOps around them.

The names a user needs come from :mod:`use_core.api`, loaded on first use (so that
``import use_core`` stays light and a pipeline stage process loads only its own code)::

    import use_core

    params = use_core.load_params("params.yaml")
    model = use_core.load_model("artifacts/train", params)
    pred = use_core.segment(model, "photo.jpg", ["sky", "tree", "house"], params)
"""

from __future__ import annotations

import importlib
from typing import Any

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


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("use_core.api"), name)
    raise AttributeError(f"module 'use_core' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
