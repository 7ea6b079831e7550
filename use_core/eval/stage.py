"""The `evaluate` stage: the trained model on one benchmark, tracked and linked to its training.

Writes ``metrics/eval_<benchmark>.json`` (keys prefixed by the benchmark, e.g. ``shapes_mIoU``,
for `dvc metrics diff` and the register stage), ``plots/eval_<benchmark>_per_class_iou.csv``,
and the report folder ``reports/eval/<benchmark>/`` (per-class chart, confusion matrix,
overlays), all also logged to an MLflow run tagged with the training run's id.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from use_core.config import Params
from use_core.train.stage import TRAIN_DIR, load_backbones

REPORTS = Path("reports/eval")
METRICS_DIR = Path("metrics")
PLOTS_DIR = Path("plots")


def load_trained_model(params: Params, train_dir: Path = TRAIN_DIR) -> Any:
    """The trained USE model of the train stage, backbones from the registry."""
    from use_core.model.checkpoint import load_use_model

    model_dir = train_dir / "model"
    if not (model_dir / "model.json").exists():
        raise FileNotFoundError(f"no trained model in {model_dir}: run `use train` first")
    model = load_use_model(model_dir, load_backbones(params))
    model.eval()
    return model


def run_eval_stage(
    params: Params, benchmark: str, train_dir: Path = TRAIN_DIR, track: bool = True
) -> dict[str, Any]:
    """Evaluate on ``benchmark`` (a key of ``use_core.eval.benchmarks.BENCHMARKS``)."""
    from use_core.eval.benchmarks import benchmark_root
    from use_core.eval.evaluate import evaluate_benchmark, write_metrics_json

    model = load_trained_model(params, train_dir)
    sam = None
    if params.eval.proposals == "sam":
        from use_core.models.registry import load_component

        sam = load_component("sam", params.models)
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
    )
    flat = {
        f"{benchmark}_{k}": v
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    write_metrics_json(flat, METRICS_DIR / f"eval_{benchmark}.json")
    per_class = out_dir / "per_class_iou.csv"
    if per_class.exists():
        PLOTS_DIR.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(per_class, PLOTS_DIR / f"eval_{benchmark}_per_class_iou.csv")
    if track:
        _track(params, benchmark, flat, out_dir, train_dir)
    return flat


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
