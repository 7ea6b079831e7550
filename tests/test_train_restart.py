"""The train stage's resume mode: resume the same run, start over for another (DVC re-runs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_project import write_tiny_params

from use_core.config import load_params
from use_core.data.shapes.gt import pairs_from_shapes_gt
from use_core.model.factory import load_backbones
from use_core.train import train_use_model


def test_same_run_resumes_and_another_run_starts_over(
    shapes_small: Path, models_cache: Path, tmp_path: Path
) -> None:
    pairs = pairs_from_shapes_gt(shapes_small, "train")

    def run(lr: float, epochs: int, resume: object) -> object:
        path = write_tiny_params(
            tmp_path / f"p_{lr}_{epochs}.yaml",
            shapes_small,
            models_cache,
            train={"lr": lr, "epochs": epochs},
        )
        params = load_params(path)
        return train_use_model(
            params,
            pairs,
            None,
            shapes_small,
            tmp_path / "train",
            load_backbones(params),
            show_progress=False,
            resume=resume,  # type: ignore[arg-type]
        )

    run(1e-3, 1, "same_run")
    assert (tmp_path / "train" / "checkpoints").is_dir()
    with pytest.raises(ValueError, match="different run"):
        run(2e-3, 1, True)  # plain resume refuses another run's checkpoints
    again = run(2e-3, 1, "same_run")  # another run: starts over rather than failing
    fresh_dir = tmp_path / "fresh"
    params = load_params(tmp_path / "p_0.002_1.yaml")
    fresh = train_use_model(
        params, pairs, None, shapes_small, fresh_dir, load_backbones(params), show_progress=False
    )
    assert again.metrics["train/loss"] == pytest.approx(fresh.metrics["train/loss"], rel=1e-6)
