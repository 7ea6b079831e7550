"""The `evaluate` stage: the trained model on one benchmark, tracked and linked to its training.

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
from use_core.pipeline.runner import StageIO


def load_trained_model(params: Params, train_dir: Path) -> Any:
    """The trained USE model of the train stage, backbones from the registry."""
    from use_core.model.checkpoint import load_use_model

    model_dir = train_dir / "model"
    if not (model_dir / "model.json").exists():
        raise FileNotFoundError(f"no trained model in {model_dir}: run `use train` first")
    model = load_use_model(model_dir, params=params)
    model.eval()
    return model


def run(params: Params, io: StageIO, track: bool = True) -> dict[str, Any]:
    """The stage for benchmark ``io.item``: reports, per-class plot and metrics outputs."""
    assert io.item is not None
    return run_eval_stage(
        params,
        io.item,
        train_dir=io.input("train"),
        proposals_dir=io.input("proposals"),
        out_dir=io.output("reports"),
        metrics_path=io.output("metrics"),
        per_class_plot=io.output("per_class"),
        track=track,
    )


def run_eval_stage(
    params: Params,
    benchmark: str,
    train_dir: Path,
    proposals_dir: Path,
    out_dir: Path,
    metrics_path: Path,
    per_class_plot: Path,
    track: bool = True,
) -> dict[str, Any]:
    """Evaluate on ``benchmark`` (a key of ``use_core.eval.datasets.BENCHMARKS``), found where
    its ``eval.benchmarks`` entry says (its ``root``, else under ``data.root``)."""
    from use_core.data.metrics_json import write_metrics_json
    from use_core.eval.datasets import entry_root
    from use_core.eval.evaluate import evaluate_benchmark
    from use_core.infer.proposal_store import LazySam, ProposalStore
    from use_core.pipeline.proposals import proposal_settings
    from use_core.pretrained.registry import load_pretrained

    model = load_trained_model(params, train_dir)
    # SAM is loaded only if a proposal is missing from the proposals stage's store
    sam = (
        LazySam(lambda: load_pretrained("sam", params)) if params.eval.proposals == "sam" else None
    )

    if out_dir.exists():
        shutil.rmtree(out_dir)
    entry = params.eval.benchmark_entry(benchmark)
    metrics = evaluate_benchmark(
        benchmark,
        entry_root(benchmark, entry.root, params.data.root),
        model,
        sam,
        params.eval,
        params.nms.iou_threshold,
        out_dir,
        logit_scale=params.train.logit_scale,
        max_pixels=params.data.max_image_pixels,
        proposal_store=ProposalStore(proposals_dir, writable=False),
        proposal_settings=proposal_settings(params),
        label_order=entry.label_order,
    )
    metrics["sam_loaded"] = int(isinstance(sam, LazySam) and sam.loaded)
    flat = {
        f"{benchmark}_{k}": v
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    conventions = {f"{benchmark}_{k}": v for k, v in metrics.get("conventions", {}).items()}
    write_metrics_json({**flat, "conventions": conventions} if conventions else flat, metrics_path)
    write_per_class_plot(out_dir, per_class_plot)
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
