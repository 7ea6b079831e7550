"""Measure the trained head against the untrained one on the shapes demo (a script, not a test).

Generates a shapes corpus (or reuses ``--shapes``), loads the demo models through the model
registry (tiny random CLIP, real MobileSAM), trains the USE head for each encoder from GT pairs,
and reports zero-shot top-1 on the val colour × shape classes (epoch 0 = the untrained head),
split into colour right / shape right, with wall times. It also reports how distinct the class
name embeddings of the text tower are (mean / max off-diagonal cosine), the ceiling the text side
puts on any head::

    python -m benchmarks.measure_demo --out /tmp/use_measure \\
        --mobile-sam .cache/models/mobile_sam.pt --encoders sam clip+sam \\
        --sam-input-size 448 --epochs 30 --batch-size 8 --lr 1e-3

The frozen features are cached under ``--out/feature_cache`` (keyed by model spec, data and
augmentation), so re-running with other head settings (lr, epochs, batch size) does not run a
backbone again.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from use_core.config import Params
from use_core.data.shapes.gt import pairs_from_shapes_gt, shapes_class_names
from use_core.model.text import TextEncoder
from use_core.train.loop import train_use_model


def class_embedding_stats(
    text_encoder: Any, class_names: Sequence[str], templates: Sequence[str]
) -> dict[str, float]:
    """Mean / max off-diagonal cosine of the class-name embeddings (``templates`` averaged)."""
    emb = text_encoder(list(class_names), list(templates))
    cos = emb @ emb.T
    off = cos[~torch.eye(len(class_names), dtype=torch.bool, device=cos.device)]
    return {"text/class_cos_mean": float(off.mean()), "text/class_cos_max": float(off.max())}


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--mobile-sam", type=Path, default=os.environ.get("USE_MOBILE_SAM"))
    ap.add_argument("--shapes", type=Path, default=None, help="existing shapes corpus to use")
    ap.add_argument("--encoders", nargs="+", default=["sam", "clip+sam"])
    ap.add_argument("--train-images", type=int, default=200)
    ap.add_argument("--val-images", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--cache-views", type=int, default=2)
    # Demo augmentation: the paper's 560 crops at scale 0.5-2 put train views at 0.4-1.6x the
    # val scale (SAM sees the 560 crop at 448); a narrow range matches the val scenes.
    ap.add_argument("--crop-size", type=int, default=448)
    ap.add_argument("--scale-min", type=float, default=0.8)
    ap.add_argument("--scale-max", type=float, default=1.25)
    ap.add_argument("--sam-input-size", type=int, default=448, help="0: the checkpoint's 1024")
    ap.add_argument("--grid-size", type=int, default=32)
    ap.add_argument("--no-cls", action="store_true", help="train without the cls tokens")
    ap.add_argument("--tag", default="", help="suffix of the run folders")
    return ap


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    ap = _parser()
    args = ap.parse_args(argv)
    if args.mobile_sam is None or not Path(args.mobile_sam).is_file():
        ap.error("--mobile-sam (or USE_MOBILE_SAM) must name the MobileSAM checkpoint")

    from use_core.data.shapes.scenes import generate_shapes
    from use_core.pretrained.demo import build_demo_model
    from use_core.pretrained.registry import load_component

    out: Path = args.out
    shapes: Path = args.shapes or out / "shapes"
    if not (shapes / "classes.json").exists():
        generate_shapes(
            shapes,
            train_images=args.train_images,
            val_images=args.val_images,
            image_size=448,
            show_progress=False,
        )
    cache = out / "models"
    build_demo_model("clip", cache, seed=0)
    if not (cache / "mobile_sam.pt").exists():
        (cache / "mobile_sam.pt").symlink_to(Path(args.mobile_sam).resolve())
    params = Params()
    params.models.cache_dir = str(cache)
    components = {
        "clip": load_component("clip", params.models, "cpu"),
        "sam": load_component("sam", params.models, "cpu"),
    }
    train = pairs_from_shapes_gt(shapes, "train")
    val = pairs_from_shapes_gt(shapes, "val", with_class_name=True)
    classes = shapes_class_names(shapes)
    sam_size = args.sam_input_size or None
    report: dict[str, dict[str, float]] = {}
    for encoder in args.encoders:
        params.train.encoder = encoder
        params.train.epochs = args.epochs
        params.train.batch_size = args.batch_size
        params.train.lr = args.lr
        params.train.cache_views = args.cache_views
        params.train.crop_size = args.crop_size
        params.train.scale_min = args.scale_min
        params.train.scale_max = args.scale_max
        params.train.use_cls = not args.no_cls
        t0 = time.perf_counter()
        result = train_use_model(
            params,
            train,
            val,
            shapes,
            out / f"run_{encoder}{args.tag}",
            components,
            class_names=classes,
            grid_size=args.grid_size,
            sam_input_size=sam_size,
            cache_dir=out / "feature_cache",
            resume=False,
            show_progress=False,
        )
        clip_model = getattr(components["clip"], "model", components["clip"])
        text_stats = class_embedding_stats(
            TextEncoder(clip_model), classes, params.eval.class_templates
        )
        report[encoder] = {
            **result.metrics,
            **text_stats,
            "total_wall_time_s": time.perf_counter() - t0,
            "steps": float(args.epochs * math.ceil(train["image_id"].nunique() / args.batch_size)),
        }
        print(json.dumps({encoder: report[encoder]}, indent=2, sort_keys=True), flush=True)
    (out / f"measure{args.tag}.json").write_text(json.dumps(report, indent=2, sort_keys=True))
    return report


if __name__ == "__main__":
    main()
