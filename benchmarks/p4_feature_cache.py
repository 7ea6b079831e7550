"""P4: training steps per second with the feature cache / recomputing the frozen backbones.

Both sides are ``use_core.train.loop.train_use_model`` on the same shapes pairs, differing only
in ``train.feature_cache``. Backbones are ViT-B-sized with random weights: open_clip ViT-B-16
(224) and a transformers ``Dinov2Model`` with the base config (ViT-B/14, run at 224), encoder
``clip+dinov2`` as in the paper. Step time is read from the loop's own per-step metrics
(``train/segments`` / ``train/segments_per_s``), so cache building and validation are excluded;
the cache build time is reported separately (wall time difference).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import median, result, timed
from use_core.config import Params
from use_core.data.shapes.gt import pairs_from_shapes_gt
from use_core.data.shapes.scenes import generate_shapes
from use_core.train import train_use_model

ID = "P4"
WHAT = "training steps/s with the feature cache / recomputing frozen ViT-B backbones"
TARGET = ">= 10x"


class StepTimes:
    """A ``MetricsLogger`` that keeps each step's wall time (segments / segments_per_s)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if "train/segments_per_s" in metrics and metrics["train/segments_per_s"] > 0:
            self.seconds.append(metrics["train/segments"] / metrics["train/segments_per_s"])


def vit_b_components() -> dict[str, Any]:
    """Random ViT-B-16 CLIP bundle + ViT-B/14 DINOv2 (transformers base config), seeded."""
    from transformers import Dinov2Config, Dinov2Model

    from benchmarks.p1_segment_embedding import vit_b16_bundle

    torch.manual_seed(0)
    return {"clip": vit_b16_bundle(), "dinov2": Dinov2Model(Dinov2Config()).eval()}


def tiny_components() -> dict[str, Any]:
    """A small random open_clip CLIP (64 px, 2 blocks) for the quick mode."""
    import open_clip

    torch.manual_seed(0)
    clip = open_clip.CLIP(
        embed_dim=32,
        vision_cfg={"image_size": 64, "layers": 2, "width": 32, "head_width": 16, "patch_size": 16},
        text_cfg={"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    )
    return {"clip": clip}


def bench_params(feature_cache: bool, quick: bool) -> Params:
    params = Params()
    settings: dict[str, Any] = {
        "encoder": "clip" if quick else "clip+dinov2",
        "epochs": 2,
        "batch_size": 4,
        "crop_size": 224,
        "scale_min": 0.8,
        "scale_max": 1.25,
        "image_size": 224,
        "cache_views": 1,
        "max_segments_per_image": 8,
        "feature_cache": feature_cache,
    }
    if quick:
        settings.update(feature_dim=16, crop_size=96)
    for key, value in settings.items():
        setattr(params.train, key, value)
    return params


def train_once(
    shapes: Path, out: Path, components: Mapping[str, Any], feature_cache: bool, quick: bool
) -> dict[str, Any]:
    """One ``train_use_model`` run; its step times, wall time and final loss."""
    pairs = pairs_from_shapes_gt(shapes, "train")
    log = StepTimes()
    wall, res = timed(
        lambda: train_use_model(
            bench_params(feature_cache, quick),
            pairs,
            None,
            shapes,
            out,
            components,
            log,
            grid_size=8 if quick else 32,
            show_progress=False,
            resume=False,
        )
    )
    return {
        "step_s": log.seconds,
        "wall_s": wall,
        "loss": float(res.metrics.get("train/loss", float("nan"))),
        "text_cache": res.text_cache,
    }


def run(quick: bool = False) -> dict[str, Any]:
    components = tiny_components() if quick else vit_b_components()
    with tempfile.TemporaryDirectory() as tmp:
        shapes = Path(tmp) / "shapes"
        generate_shapes(
            shapes,
            train_images=8,
            val_images=1,
            image_size=96 if quick else 224,
            seed=0,
            show_progress=False,
        )
        cached = train_once(shapes, Path(tmp) / "cached", components, True, quick)
        live = train_once(shapes, Path(tmp) / "live", components, False, quick)
    ratio = median(live["step_s"]) / median(cached["step_s"])
    steps = len(cached["step_s"])
    return result(
        ID,
        WHAT,
        ratio,
        TARGET,
        ratio >= 10,
        encoder="clip" if quick else "clip+dinov2 (ViT-B-16 + ViT-B/14 at 224, random)",
        images=8,
        batch_size=4,
        steps=steps,
        step_s={
            "cached_median": round(median(cached["step_s"]), 4),
            "recompute_median": round(median(live["step_s"]), 4),
            "cached": [round(s, 4) for s in cached["step_s"]],
            "recompute": [round(s, 4) for s in live["step_s"]],
        },
        wall_s={"cached": round(cached["wall_s"], 2), "recompute": round(live["wall_s"], 2)},
        final_loss={"cached": cached["loss"], "recompute": live["loss"]},
        note="wall_s includes cache building (cached run) and model set-up (both)",
    )


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick=True), indent=2))
