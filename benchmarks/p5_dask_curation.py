"""P5: curation throughput on a Dask LocalCluster — 2 workers / 1 worker (one torch thread each).

Both sides run the product flow ``flows.curation.curation_flow_with_runner`` (Prefect, a
temporary Prefect server as in ``tests/test_flows.py``) on the same freshly generated shapes
corpus, with ``runtime.task_runner = dask`` and ``runtime.dask_workers`` 1 or 2; every task sets
one torch thread. The wall time covers the whole flow (cluster start-up and model loading in
each worker included). Captioning is off (the demo's tiny captioner only adds noise captions)
and grounding keeps ``max_boxes`` boxes per caption, so the work is grounding + SAM masks + NMS
on the shapes' COCO captions and VG regions. Both outputs must hold the same pairs.

Sizes: 16 and 48 images in shards of 8, so both sizes split into an even number of equal shards
(the ratio measures scaling, not a left-over shard); the headline ratio is the whole flow at 48
images (median of two interleaved rounds, 1 worker then 2 workers, twice), and
``marginal_ratio`` compares seconds per extra image between the sizes (throughput with the fixed
start-up cost removed). ``--quick``: 4 images in shards of 2, one round.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from benchmarks.common import median, models_cache, result, timed
from use_core.data.shapes import generate_shapes

ID = "P5"
WHAT = "curation flow throughput: Dask LocalCluster 2 workers / 1 worker (1 torch thread each)"
TARGET = ">= 1.6x"


def write_project(
    root: Path, shapes: Path, workers: int, max_boxes: int, shard_size: int = 2
) -> Path:
    """A project folder with a copy of the corpus and a params file; returns the params path."""
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    shutil.copytree(shapes, data / "shapes")
    params = {
        "data": {"root": str(data), "shard_size": shard_size},
        "caption": {"enabled": False},
        "ground": {"max_boxes": max_boxes},
        "models": {"cache_dir": str(models_cache())},
        "runtime": {"task_runner": "dask", "dask_workers": workers},
    }
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def curated_pairs(params_path: Path) -> pd.DataFrame:
    """The NMS stage's pairs, without provenance, in a stable order."""
    from use_core.config import load_params
    from use_core.curation.stages import read_stage

    df = read_stage("nms", load_params(params_path))
    return (
        df.drop(columns=["provenance"], errors="ignore")
        .sort_values(["image_id", "segment_id"])
        .reset_index(drop=True)
    )


def run_flow(params_path: Path) -> dict[str, Any]:
    """Run the curation flow once; wall seconds and segment count."""
    from flows.curation import curation_flow_with_runner

    metrics = params_path.parent / "curation.json"
    seconds, out = timed(
        lambda: curation_flow_with_runner(str(params_path), metrics_path=str(metrics))
    )
    return {"seconds": seconds, "segments": int(out["stats"].get("segments", 0))}


def run(quick: bool = False) -> dict[str, Any]:
    from prefect.testing.utilities import prefect_test_harness

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    sizes = (4,) if quick else (16, 48)
    rounds = 1 if quick else 2  # at the largest size: 1 worker, 2 workers, 1 worker, 2 workers
    shard_size = 2 if quick else 8
    max_boxes = 2 if quick else 4
    runs: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp, prefect_test_harness(server_startup_timeout=120):
        for n in sizes:
            shapes = Path(tmp) / f"corpus{n}"
            generate_shapes(
                shapes, train_images=n, val_images=1, image_size=224, seed=0, show_progress=False
            )
            for r in range(rounds if n == sizes[-1] else 1):
                for workers in (1, 2):
                    project = Path(tmp) / f"n{n}_w{workers}_r{r}"  # a fresh store every run
                    params = write_project(project, shapes, workers, max_boxes, shard_size)
                    runs.setdefault(f"{n}_images_{workers}_workers", []).append(
                        {**run_flow(params), "pairs": curated_pairs(params)}
                    )
    n = sizes[-1]
    one, two = runs[f"{n}_images_1_workers"], runs[f"{n}_images_2_workers"]
    first = one[0]["pairs"]
    same = all(run["pairs"].equals(first) for run in one + two)
    round_ratios = [a["seconds"] / b["seconds"] for a, b in zip(one, two, strict=True)]
    ratio = median(round_ratios)
    seconds = {k: median([run["seconds"] for run in v]) for k, v in runs.items()}
    marginal = None
    if len(sizes) > 1:  # seconds per extra image, fixed start-up cost removed
        lo = sizes[0]
        per_image = {
            w: (seconds[f"{n}_images_{w}_workers"] - seconds[f"{lo}_images_{w}_workers"]) / (n - lo)
            for w in (1, 2)
        }
        marginal = round(per_image[1] / per_image[2], 2) if per_image[2] > 0 else None
    return result(
        ID,
        WHAT,
        ratio,
        TARGET,
        ratio >= 1.6 and same,
        images=n,
        shard_size=shard_size,
        same_pairs=same,
        round_ratios=[round(x, 3) for x in round_ratios],
        marginal_ratio=marginal,
        runs={
            k: {
                "seconds": round(seconds[k], 2),
                "runs_s": [round(run["seconds"], 2) for run in v],
                "segments": v[0]["segments"],
                "images_per_s": round(int(k.split("_")[0]) / seconds[k], 3),
                "seconds_per_image": round(seconds[k] / int(k.split("_")[0]), 3),
            }
            for k, v in runs.items()
        },
        note=(
            "wall time of the whole flow: includes Dask start-up and per-worker model loading; "
            f"ratio: median over {rounds} interleaved rounds at {n} images; marginal_ratio "
            "compares the seconds per extra image between the two sizes (throughput)"
        ),
    )


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick=True), indent=2))
