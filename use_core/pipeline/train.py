"""The `train` stage: curated pairs → trained USE head, tracked in MLflow and logged as a model.

Outputs (DVC): ``artifacts/train/`` (checkpoints, final model, feature cache), the metrics JSON
and the per-epoch CSV for plots. The MLflow run logs every param, per-step and per-epoch
metrics, the data fingerprint, the checks report and the curation statistics, and the model as
a pyfunc (see :mod:`use_core.tracking.pyfunc`); its run id is written to ``run.json`` so the
evaluate and register stages attach to it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from use_core.config import Params
from use_core.pipeline.runner import StageIO
from use_core.pipeline.table import stage


def filter_sources(pairs: pd.DataFrame, prefixes: list[str]) -> pd.DataFrame:
    """Keep only texts whose source tag starts with one of ``prefixes`` (all when empty);
    segments left without a text are dropped."""
    if not prefixes or not len(pairs):
        return pairs.reset_index(drop=True)
    texts, sources, keep = [], [], []
    for ts, ss in zip(pairs["texts"], pairs["sources"], strict=True):
        pairs_kept = [(t, s) for t, s in zip(ts, ss, strict=True) if s.startswith(tuple(prefixes))]
        texts.append([t for t, _ in pairs_kept])
        sources.append([s for _, s in pairs_kept])
        keep.append(bool(pairs_kept))
    out = pairs.assign(texts=texts, sources=sources)[keep]
    return out.reset_index(drop=True)


def shapes_validation(params: Params) -> tuple[pd.DataFrame | None, list[str] | None]:
    """Ground-truth val segments of the shapes corpus with class names, when it exists."""
    from use_core.data.shapes.gt import pairs_from_shapes_gt, shapes_class_names

    shapes = Path(params.data.root) / "shapes"
    if not (shapes / "val" / "instances.json").exists():
        return None, None
    val = pairs_from_shapes_gt(shapes, "val", with_class_name=True)
    val = val.assign(image_path=["shapes/" + p for p in val["image_path"]])
    return val, shapes_class_names(shapes)


def run(params: Params, io: StageIO, track: bool = True) -> dict[str, Any]:
    """The stage: train into the ``model_dir`` output, metrics and the epochs CSV beside it."""
    return run_train_stage(
        params,
        io.output("model_dir"),
        io.output("metrics"),
        io.output("epochs"),
        checks_report=io.input("checks.json"),
        curation_metrics=Path(stage("nms").output("metrics")),
        track=track,
    )


def run_train_stage(
    params: Params,
    out_dir: Path,
    metrics_path: Path,
    epochs_plot: Path,
    checks_report: Path | None = None,
    curation_metrics: Path = Path("metrics/curation.json"),
    track: bool = True,
) -> dict[str, Any]:
    """Train on the curated pairs of the current plan; return the final metrics.

    ``checks_report`` and ``curation_metrics`` (when they exist) are logged with the run.
    """
    from use_core.pipeline.shards import read_stage
    from use_core.runtime import seed_everything
    from use_core.train.loop import train_use_model
    from use_core.train.metrics_log import FanOutLogger, JsonlMetricsLogger

    seed_everything(params.train.seed)
    pairs = filter_sources(read_stage("nms", params), params.train.sources)
    if not len(pairs):
        raise RuntimeError(
            f"no training pairs from sources {params.train.sources or 'any'}: "
            "run the curation stages first or change train.sources"
        )
    val_pairs, class_names = shapes_validation(params)
    from use_core.model.factory import load_backbones

    components = load_backbones(params)
    out_dir.mkdir(parents=True, exist_ok=True)
    loggers: list[Any] = [JsonlMetricsLogger(out_dir / "steps.jsonl")]

    def train(extra_logger: Any = None) -> Any:
        return train_use_model(
            params,
            pairs,
            val_pairs,
            params.data.root,
            out_dir,
            components,
            FanOutLogger(loggers + ([extra_logger] if extra_logger else [])),
            class_names=class_names,
            resume="same_run",
        )

    if track:
        import mlflow

        from use_core.tracking.runs import MlflowMetricsLogger, tracking_run

        with tracking_run(params, "train") as run:
            result = train(MlflowMetricsLogger())
            mlflow.log_metrics(_numeric(result.metrics))
            mlflow.log_artifact(str(out_dir / "epochs.csv"), "plots")
            for extra in (checks_report, curation_metrics):
                if extra is not None and extra.exists():
                    mlflow.log_artifact(str(extra), "data")
            from use_core.tracking.pyfunc import log_use_model

            model_uri = log_use_model(result.model_dir, params)
            run_info = {"run_id": run.info.run_id, "model_uri": model_uri}
    else:
        result = train()
        run_info = {"run_id": None, "model_uri": None}
    (out_dir / "run.json").write_text(json.dumps(run_info, indent=2))
    metrics = {
        **result.metrics,
        "epochs_run": result.epochs_run,
        "train_pairs": len(pairs),
        "text_cache_hit_rate": _hit_rate(result.text_cache),
    }
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    metrics_path.write_text(json.dumps(_numeric(metrics), indent=2, sort_keys=True) + "\n")
    epochs_plot.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out_dir / "epochs.csv", epochs_plot)
    return metrics


def _hit_rate(counters: dict[str, int]) -> float:
    hits, misses = counters.get("hits", 0), counters.get("misses", 0)
    return hits / (hits + misses) if hits + misses else 0.0


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    import math

    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, int | float):
            continue
        if math.isfinite(float(v)):
            out[k] = float(v)
    return out
