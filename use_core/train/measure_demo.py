"""Measure the trained head against the untrained one on the shapes demo (a script, not a test).

Generates a shapes corpus, loads the demo models through the model registry (tiny random CLIP,
real MobileSAM), trains the USE head for each encoder from GT pairs, and reports zero-shot top-1
on the val colour × shape classes (epoch 0 = the untrained head) with wall times::

    python -m use_core.train.measure_demo --out /tmp/use_measure \\
        --mobile-sam .cache/models/mobile_sam.pt --encoders sam clip+sam
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from use_core.config import Params
from use_core.train.loop import train_use_model
from use_core.train.shapes_gt import pairs_from_shapes_gt, shapes_class_names


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--mobile-sam", type=Path, default=os.environ.get("USE_MOBILE_SAM"))
    ap.add_argument("--encoders", nargs="+", default=["sam", "clip+sam"])
    ap.add_argument("--train-images", type=int, default=48)
    ap.add_argument("--val-images", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--cache-views", type=int, default=2)
    args = ap.parse_args(argv)
    if args.mobile_sam is None or not Path(args.mobile_sam).is_file():
        ap.error("--mobile-sam (or USE_MOBILE_SAM) must name the MobileSAM checkpoint")

    from use_core.data.shapes import generate_shapes
    from use_core.models.demo import build_demo_model
    from use_core.models.registry import load_component

    out: Path = args.out
    shapes = out / "shapes"
    if not (shapes / "classes.json").exists():
        generate_shapes(
            shapes, train_images=args.train_images, val_images=args.val_images, image_size=448
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
    report: dict[str, dict[str, float]] = {}
    for encoder in args.encoders:
        params.train.encoder = encoder  # type: ignore[assignment]
        params.train.epochs = args.epochs
        params.train.batch_size = args.batch_size
        params.train.cache_views = args.cache_views
        t0 = time.perf_counter()
        result = train_use_model(
            params, train, val, shapes, out / f"run_{encoder}", components, class_names=classes
        )
        report[encoder] = {**result.metrics, "total_wall_time_s": time.perf_counter() - t0}
        print(json.dumps({encoder: report[encoder]}, indent=2, sort_keys=True))
    (out / "measure.json").write_text(json.dumps(report, indent=2, sort_keys=True))
    return report


if __name__ == "__main__":
    main()
