"""Prefect flows on real task runners (a temporary Prefect server, a real Dask LocalCluster)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import yaml

from use_core.data.shapes.scenes import generate_shapes


@pytest.fixture(scope="module")
def prefect_server():  # type: ignore[no-untyped-def]
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def _project(tmp: Path, models_cache: Path, runner: str) -> Path:
    """A tiny project: 4 shapes images, no captioner, few grounding boxes."""
    shapes = tmp / "data" / "shapes"
    if not shapes.exists():
        generate_shapes(shapes, train_images=4, val_images=1, image_size=160, show_progress=False)
    params = {
        "data": {"root": str(tmp / "data"), "shard_size": 2},
        "caption": {"enabled": False},
        "ground": {"max_boxes": 2},
        "models": {"cache_dir": str(models_cache)},
        "runtime": {"task_runner": runner, "dask_workers": 2},
    }
    path = tmp / f"params-{runner}.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _pairs(tmp: Path) -> pd.DataFrame:
    from use_core.config import load_params
    from use_core.curation.stages import read_stage

    p = load_params(tmp / "params-threads.yaml")
    df = read_stage("nms", p)
    return (
        df.drop(columns=["provenance"])
        .sort_values(["image_id", "segment_id"])
        .reset_index(drop=True)
    )


@pytest.mark.slow
def test_curation_flow_dask_equals_threads(
    tmp_path: Path,
    models_cache: Path,
    demo_models: dict,
    mobile_sam_checkpoint: Path,
    prefect_server,
) -> None:
    from flows.curation import curation_flow_with_runner

    threads = _project(tmp_path, models_cache, "threads")
    out = curation_flow_with_runner(str(threads), metrics_path=str(tmp_path / "m.json"))
    assert out["stats"]["segments"] > 0
    first = _pairs(tmp_path)
    assert first["texts"].map(len).min() >= 1

    # a second run resumes: every shard is already stored
    again = curation_flow_with_runner(str(threads), metrics_path=str(tmp_path / "m.json"))
    assert all(not r["computed"] for rs in again["stages"].values() for r in rs)

    shutil.rmtree(tmp_path / "data" / "curation")
    shutil.rmtree(tmp_path / "data" / "pairs")
    dask = _project(tmp_path, models_cache, "dask")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out = curation_flow_with_runner(str(dask), metrics_path=str(tmp_path / "m2.json"))
    assert any(r["computed"] for rs in out["stages"].values() for r in rs)
    pd.testing.assert_frame_equal(first, _pairs(tmp_path))


def test_worker_teardown_freezes_the_objects_for_exit() -> None:
    """``flows.worker_setup.dask_teardown`` leaves nothing for the exit-time collection."""
    code = textwrap.dedent(
        """
        import gc
        from flows.worker_setup import dask_teardown

        junk = [[i] for i in range(100_000)]
        assert gc.get_freeze_count() == 0
        dask_teardown(None)
        print(gc.get_freeze_count(), len(gc.get_objects()))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    frozen, left = (int(x) for x in done.stdout.split())
    assert frozen > 100_000  # the process's objects, the 100,000 lists among them
    assert left < 1_000  # what a final collection would still have to walk
