"""Determinism: the same inputs and seed give identical pairs tables and training metrics, in
separate processes with different Python hash seeds (so no set/dict-order or process state
leaks into the results)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent


def _runner_module() -> ModuleType:
    """The crash/resume test module, whose script mode runs one curation / training."""
    spec = importlib.util.spec_from_file_location(
        "crash_resume_runner", HERE / "test_crash_resume.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _twice(mode: str, tmp_path: Path, config: dict[str, Any]) -> list[dict[str, Any]]:
    runner = _runner_module()
    results = []
    for i, hash_seed in enumerate(("1", "2")):
        work = tmp_path / f"run{i}"
        work.mkdir()
        results.append(
            runner._runner(mode, {**config, "work": str(work)}, env={"PYTHONHASHSEED": hash_seed})
        )
    return results


@pytest.mark.slow
def test_curation_twice_gives_identical_pairs(
    tmp_path: Path, models_cache: Path, demo_models: dict, mobile_sam_checkpoint: Path
) -> None:
    a, b = _twice("curate_once", tmp_path, {"models_cache": str(models_cache), "images": 2})
    assert a["pairs_rows"] > 0 and a["pairs_duplicates"] == 0
    for table in ("caption", "ground", "masks", "nms", "quarantine"):
        assert a[table] == b[table], table


@pytest.mark.slow
def test_training_twice_with_one_seed_gives_identical_metrics(
    tmp_path: Path, models_cache: Path, demo_models: dict
) -> None:
    from use_core.data.shapes.scenes import generate_shapes

    shapes = tmp_path / "shapes"
    generate_shapes(shapes, train_images=8, val_images=2, image_size=128, show_progress=False)
    a, b = _twice(
        "train_once", tmp_path, {"models_cache": str(models_cache), "shapes": str(shapes)}
    )

    def untimed(d: dict[str, float]) -> dict[str, float]:
        return {k: v for k, v in d.items() if "time" not in k}

    assert a["weights_sha256"] == b["weights_sha256"]
    assert untimed(a["metrics"]) == untimed(b["metrics"])
    assert [untimed(h) for h in a["history"]] == [untimed(h) for h in b["history"]]
    assert "val/zero_shot_top1" in a["metrics"]
