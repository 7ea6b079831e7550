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

:func:`growth` (``python -m benchmarks.p5_dask_curation --growth 50,200,800``, not in
``make bench``: about an hour here) runs the issue's sizes once each with 1 and 2 workers.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from benchmarks.common import median, models_cache, result, timed
from use_core.data.shapes.scenes import generate_shapes

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
    from use_core.pipeline.shards import read_stage

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


def curation_runs(
    sizes: tuple[int, ...], rounds: int, shard_size: int, max_boxes: int
) -> dict[str, list[dict[str, Any]]]:
    """The flow with 1 and 2 workers on a fresh shapes corpus of each size (``rounds``
    interleaved rounds at the largest size, one elsewhere), under a temporary Prefect server.
    Keys ``"{n}_images_{w}_workers"``; each run: seconds, segments, pairs, images."""
    from prefect.testing.utilities import prefect_test_harness

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
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
                        {**run_flow(params), "pairs": curated_pairs(params), "images": n}
                    )
                    shutil.rmtree(project)  # the next size's store must not sit on disk too
    return runs


def _summary(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    seconds = {k: median([run["seconds"] for run in v]) for k, v in runs.items()}
    return {
        k: {
            "seconds": round(seconds[k], 2),
            "runs_s": [round(run["seconds"], 2) for run in v],
            "segments": v[0]["segments"],
            "images_per_s": round(v[0]["images"] / seconds[k], 3),
            "seconds_per_image": round(seconds[k] / v[0]["images"], 3),
        }
        for k, v in runs.items()
    }


def _per_extra_image(summary: dict[str, dict[str, Any]], lo: int, hi: int, workers: int) -> float:
    a = summary[f"{lo}_images_{workers}_workers"]["seconds"]
    b = summary[f"{hi}_images_{workers}_workers"]["seconds"]
    return (b - a) / (hi - lo)


def run(quick: bool = False) -> dict[str, Any]:
    sizes = (4,) if quick else (16, 48)
    rounds = 1 if quick else 2  # at the largest size: 1 worker, 2 workers, 1 worker, 2 workers
    shard_size = 2 if quick else 8
    runs = curation_runs(sizes, rounds, shard_size, max_boxes=2 if quick else 4)
    n = sizes[-1]
    one, two = runs[f"{n}_images_1_workers"], runs[f"{n}_images_2_workers"]
    first = one[0]["pairs"]
    same = all(run["pairs"].equals(first) for run in one + two)
    round_ratios = [a["seconds"] / b["seconds"] for a, b in zip(one, two, strict=True)]
    ratio = median(round_ratios)
    summary = _summary(runs)
    marginal = None
    if len(sizes) > 1:  # seconds per extra image, fixed start-up cost removed
        per_image = {w: _per_extra_image(summary, sizes[0], n, w) for w in (1, 2)}
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
        runs=summary,
        note=(
            "wall time of the whole flow: includes Dask start-up and per-worker model loading; "
            f"ratio: median over {rounds} interleaved rounds at {n} images; marginal_ratio "
            "compares the seconds per extra image between the two sizes (throughput)"
        ),
    )


def growth(sizes: tuple[int, ...] = (50, 200, 800), shard_size: int = 8) -> dict[str, Any]:
    """The issue's curation growth table: the flow at each size with 1 and 2 workers, once.
    Not part of ``make bench`` (800 images take ≈ 30 min with 1 worker on 2 cores).

    Reports per size and worker count the wall seconds and seconds per image, the seconds per
    extra image between consecutive sizes (linear growth = about constant), and the 2 / 1
    worker ratio of the whole flow at each size."""
    runs = curation_runs(tuple(sizes), 1, shard_size, max_boxes=4)
    summary = _summary(runs)
    per_extra = {
        f"{lo}->{hi}": {
            f"{w}_workers": round(_per_extra_image(summary, lo, hi, w), 3) for w in (1, 2)
        }
        for lo, hi in itertools.pairwise(sizes)
    }
    ratio_at = {
        str(n): round(
            summary[f"{n}_images_1_workers"]["seconds"]
            / summary[f"{n}_images_2_workers"]["seconds"],
            3,
        )
        for n in sizes
    }
    same = all(
        runs[f"{n}_images_1_workers"][0]["pairs"].equals(runs[f"{n}_images_2_workers"][0]["pairs"])
        for n in sizes
    )
    return {
        "id": f"{ID}-growth",
        "what": "curation flow wall time vs images (shapes corpus, 224 px, shards of "
        f"{shard_size}), 1 and 2 Dask workers",
        "runs": summary,
        "seconds_per_extra_image": per_extra,
        "two_over_one_worker_ratio": ratio_at,
        "same_pairs": same,
    }


if __name__ == "__main__":
    import argparse
    import json

    from benchmarks.common import machine_info

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--growth", help="comma-separated corpus sizes, e.g. 50,200,800")
    parser.add_argument("--out", help="also write the result to this JSON file")
    args = parser.parse_args()
    if args.growth:
        out = growth(tuple(int(x) for x in args.growth.split(",")))
        out["machine"] = machine_info()
    else:
        out = run(quick=True)
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
