"""The `proposals` and `evaluate` stages.

``proposals`` runs SAM's grid proposals once for the images of every configured benchmark into a
content-addressed :class:`~use_core.infer.proposal_store.ProposalStore` (``artifacts/proposals``),
so re-training never re-runs SAM and benchmarks on the same images share the work.

``evaluate``: the trained model on one benchmark, tracked and linked to its training.

Writes ``metrics/eval/<benchmark>.json`` (keys prefixed by the benchmark, e.g. ``shapes_mIoU``,
for `dvc metrics diff` and the register stage), ``plots/eval_<benchmark>_per_class.csv``,
and the report folder ``reports/eval/<benchmark>/`` (per-class chart, confusion matrix,
overlays), all also logged to an MLflow run tagged with the training run's id.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from use_core.config import Params
from use_core.train.stage import TRAIN_DIR

PROPOSALS_DIR = Path("artifacts/proposals")
REPORTS = Path("reports/eval")
METRICS_DIR = Path("metrics")
PLOTS_DIR = Path("plots")


def load_trained_model(params: Params, train_dir: Path = TRAIN_DIR) -> Any:
    """The trained USE model of the train stage, backbones from the registry."""
    from use_core.model.checkpoint import load_use_model

    model_dir = train_dir / "model"
    if not (model_dir / "model.json").exists():
        raise FileNotFoundError(f"no trained model in {model_dir}: run `use train` first")
    model = load_use_model(model_dir, params=params)
    model.eval()
    return model


def proposal_settings(params: Params) -> dict[str, Any]:
    """What identifies a SAM proposal besides the image and the grid (part of the store key)."""
    from use_core.pretrained.profiles import resolve_spec

    return {"sam": resolve_spec("sam", params.models).model_dump(mode="json")}


def run_proposals_stage(params: Params, out_dir: Path = PROPOSALS_DIR) -> dict[str, Any]:
    """Compute the SAM proposals of every configured benchmark's images (skipping cached ones).

    Writes ``metrics/proposals.json``: images, computed, cached, mean proposals per image and
    seconds per computed image. Does nothing but report when ``eval.proposals`` is ``oracle``.
    """
    import time

    from tqdm import tqdm

    from use_core.data.images import load_rgb
    from use_core.eval.datasets import benchmark_root, load_benchmark
    from use_core.eval.evaluate import sam_proposal_masks, write_metrics_json
    from use_core.infer.proposal_store import ProposalStore

    paths: dict[str, Path] = {}
    if params.eval.proposals == "sam":
        for name in params.eval.benchmarks:
            bench = load_benchmark(name, benchmark_root(name, params.data.root))
            samples = bench.samples[: params.eval.max_images] if params.eval.max_images else None
            for sample in samples if samples is not None else bench.samples:
                paths.setdefault(str(sample.image_path.resolve()), sample.image_path)
    store = ProposalStore(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sam = None
    settings = proposal_settings(params)
    computed = cached = segments = 0
    seconds = 0.0
    for path in tqdm(list(paths.values()), desc="proposals"):
        image = load_rgb(path, params.data.max_image_pixels)
        if sam is None:
            from use_core.pretrained.registry import load_pretrained

            sam = load_pretrained("sam", params)
        start = time.perf_counter()
        masks, hit = sam_proposal_masks(
            sam,
            image,
            path,
            params.eval.points_per_side,
            params.nms.iou_threshold,
            store,
            settings,
        )
        if hit:
            cached += 1
        else:
            computed += 1
            seconds += time.perf_counter() - start
        segments += int(masks.shape[0])
    metrics = {
        "proposals_images": len(paths),
        "proposals_computed": computed,
        "proposals_cached": cached,
        "proposals_per_image": segments / len(paths) if paths else 0.0,
        "proposals_seconds_per_image": seconds / computed if computed else 0.0,
    }
    write_metrics_json(metrics, METRICS_DIR / "proposals.json")
    return metrics


def run_eval_stage(
    params: Params, benchmark: str, train_dir: Path = TRAIN_DIR, track: bool = True
) -> dict[str, Any]:
    """Evaluate on ``benchmark`` (a key of ``use_core.eval.datasets.BENCHMARKS``)."""
    from use_core.eval.datasets import benchmark_root
    from use_core.eval.evaluate import evaluate_benchmark, write_metrics_json

    model = load_trained_model(params, train_dir)
    sam = None
    if params.eval.proposals == "sam":
        from use_core.pretrained.registry import load_pretrained

        sam = load_pretrained("sam", params)
    from use_core.infer.proposal_store import ProposalStore

    out_dir = REPORTS / benchmark
    if out_dir.exists():
        shutil.rmtree(out_dir)
    metrics = evaluate_benchmark(
        benchmark,
        benchmark_root(benchmark, params.data.root),
        model,
        sam,
        params.eval,
        params.nms.iou_threshold,
        out_dir,
        logit_scale=params.train.logit_scale,
        max_pixels=params.data.max_image_pixels,
        proposal_store=ProposalStore(PROPOSALS_DIR, writable=False),
        proposal_settings=proposal_settings(params),
    )
    flat = {
        f"{benchmark}_{k}": v
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    write_metrics_json(flat, METRICS_DIR / "eval" / f"{benchmark}.json")
    write_per_class_plot(out_dir, PLOTS_DIR / f"eval_{benchmark}_per_class.csv")
    if track:
        _track(params, benchmark, flat, out_dir, train_dir)
    return flat


def write_per_class_plot(report_dir: Path, path: Path) -> Path:
    """``class,value`` CSV for `dvc plots`: per-class IoU in percent (semantic) or AP (parts)."""
    import pandas as pd

    iou, ap = report_dir / "per_class_iou.csv", report_dir / "per_class_ap.csv"
    source = iou if iou.exists() else ap
    table = pd.read_csv(source)
    table.columns = ["class", "value"]
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False, float_format="%.4f")
    return path


def _track(
    params: Params, benchmark: str, flat: dict[str, Any], out_dir: Path, train_dir: Path
) -> None:
    import math

    import mlflow

    from use_core.tracking.runs import tracking_run

    run_file = train_dir / "run.json"
    train_run = json.loads(run_file.read_text()).get("run_id") if run_file.exists() else None
    tags = {"benchmark": benchmark, "train_run_id": str(train_run)}
    with tracking_run(params, "evaluate", run_name=f"evaluate-{benchmark}", tags=tags):
        mlflow.log_metrics({k: float(v) for k, v in flat.items() if math.isfinite(float(v))})
        mlflow.log_artifacts(str(out_dir), f"eval/{benchmark}")
    if train_run:  # the training run shows its evaluation too
        client = mlflow.MlflowClient()
        for k, v in flat.items():
            if math.isfinite(float(v)):
                client.log_metric(train_run, k, float(v))
