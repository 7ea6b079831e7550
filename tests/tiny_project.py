"""A tiny trained USE model in a throwaway project folder, shared by the CLI, serving and
notebook tests (not a test module: pytest does not collect it).

The model is real: the demo profile's CLIP backbone (from the model registry, as every stage
loads it) and a head trained for one epoch on the ground-truth segment-text pairs of a small
shapes corpus, saved by the training loop in the train stage's layout (``artifacts/train``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
    from use_core.train import train_use_model
    from use_core.train.stage import load_backbones

    params = load_params(params_path)
    pairs = pairs_from_shapes_gt(shapes_dir, "train")
    result = train_use_model(
        params, pairs, None, shapes_dir, train_dir, load_backbones(params), show_progress=False
    )
    assert (result.model_dir / "model.json").exists()
    return train_dir
