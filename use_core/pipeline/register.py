"""The `register` stage: register the trained model, promote it to champion only if better."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from use_core.config import Params
from use_core.pipeline.runner import StageIO


def run(params: Params, io: StageIO) -> dict[str, Any]:
    """The stage: the ``train`` input's model, the ``eval`` metrics folder, ``metrics`` out."""
    return run_register_stage(params, io.input("train"), io.input("eval"), io.output("metrics"))


def primary_metric(params: Params, eval_metrics: Path) -> float:
    """The configured primary metric (``register.metric``) from the evaluate stages' files."""
    name = params.register.metric
    for path in sorted(eval_metrics.glob("*.json")):
        values = json.loads(path.read_text())
        if name in values and values[name] is not None:
            return float(values[name])
    raise KeyError(f"metric {name!r} not found in {eval_metrics}/*.json: run `use evaluate`")


def run_register_stage(
    params: Params, train_dir: Path, eval_metrics: Path, out: Path
) -> dict[str, Any]:
    """Register the training run's model; move the alias only when strictly better."""
    from use_core.tracking.promotion import register_and_promote
    from use_core.tracking.runs import configure

    run = json.loads((train_dir / "run.json").read_text())
    if not run.get("model_uri"):
        raise RuntimeError("the training run logged no model (trained with --no-track?)")
    configure(params)
    cfg = params.register
    value = primary_metric(params, eval_metrics)
    promotion = register_and_promote(
        run["model_uri"], cfg.model_name, cfg.metric, value, cfg.higher_is_better, cfg.alias
    )
    result = promotion.to_dict()
    out.parent.mkdir(parents=True, exist_ok=True)
    numeric = {
        "version": int(promotion.version),
        "promoted": int(promotion.promoted),
        "value": promotion.value,
    }
    out.write_text(json.dumps(numeric, indent=2, sort_keys=True) + "\n")
    return result
