"""Prefect flows on real task runners (a temporary Prefect server, a real Dask LocalCluster)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

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
    from use_core.pipeline.shards import read_stage

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


@pytest.mark.slow
def test_pipeline_flow_runs_every_stage_of_the_table_in_order(
    tmp_path: Path,
    models_cache: Path,
    demo_models: dict,
    mobile_sam_checkpoint: Path,
    prefect_server,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pipeline flow, on a tiny project, runs the table's stages in dvc.yaml's order: each
    as a task (the shard stages inside the curation sub-flow), read back from the Prefect API."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
    )
    from prefect.client.schemas.sorting import TaskRunSort
    from tiny_project import TINY_TRAIN

    from flows.pipeline import pipeline_flow
    from use_core.pipeline.table import SHARD_STAGES, STAGES

    monkeypatch.chdir(tmp_path)  # the table's paths are relative to the project folder
    params = {
        "data": {
            "root": "data",
            "shard_size": 2,
            "shapes": {"train_images": 3, "val_images": 1, "image_size": 128},
        },
        "caption": {"enabled": False},
        "ground": {"max_boxes": 2},
        "models": {"cache_dir": str(models_cache)},
        "train": {**TINY_TRAIN, "sources": []},
        "eval": {"points_per_side": 4, "num_overlays": 0},
        "runtime": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))

    state = pipeline_flow(str(path), return_state=True)
    result = state.result()
    names = [s.name for s in STAGES]
    assert [k for k in result if k in names] == names
    assert int(result["register"]["version"]) == 1
    assert set(result["evaluate"]) == {"shapes", "shapes_parts"}

    async def task_names() -> list[str]:
        async with get_client() as client:
            flows = [state.state_details.flow_run_id]
            subflows = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=flows)
                )
            )
            ids = flows + [f.id for f in subflows]
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)),
                sort=TaskRunSort.EXPECTED_START_TIME_ASC,
            )
            return [r.name for r in runs]

    ran = asyncio.run(task_names())
    stage_of = [n.split("-shard-")[0].split("-")[0] for n in ran if n != "plan_task"]
    order = [n for i, n in enumerate(stage_of) if n in names and n not in stage_of[:i]]
    assert order == names, ran
    shards = {s: sum(n.startswith(f"{s}-shard-") for n in ran) for s in SHARD_STAGES}
    assert min(shards.values()) == max(shards.values()) >= 2, shards  # every shard, each stage


def _start(argv: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None) -> Any:
    return subprocess.Popen(
        argv,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


@pytest.mark.slow
def test_curation_on_a_running_dask_cluster_survives_a_killed_worker(
    tmp_path: Path,
    models_cache: Path,
    demo_models: dict,
    mobile_sam_checkpoint: Path,
    prefect_server,
) -> None:
    """`dask scheduler` and two `use dask-worker` processes on 127.0.0.1; the curation flow runs
    on them through runtime.dask_address while one worker is SIGKILLed in the middle of a shard
    (once the masks stage has begun): the scheduler reruns that shard elsewhere and the pairs
    equal the threads runner's (nothing lost, nothing duplicated)."""
    import json
    import signal
    import threading
    import time

    from distributed import Client

    from flows.curation import curation_flow_with_runner
    from use_core.config import load_params
    from use_core.pipeline.shards import store_for

    threads = _project(tmp_path, models_cache, "threads")
    curation_flow_with_runner(str(threads), metrics_path=str(tmp_path / "m.json"))
    expected = _pairs(tmp_path)
    shutil.rmtree(tmp_path / "data" / "curation")
    shutil.rmtree(tmp_path / "data" / "pairs")

    bin_dir = Path(sys.executable).parent
    scheduler_file = tmp_path / "scheduler.json"
    scheduler = _start(
        [str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0"]
        + ["--no-dashboard", "--scheduler-file", str(scheduler_file)],
        tmp_path,
        tmp_path / "scheduler.log",
    )
    procs = [scheduler]
    try:
        for _ in range(300):
            if scheduler_file.exists() and scheduler_file.stat().st_size:
                break
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        for i in range(2):  # as a user starts them on each machine
            procs.append(
                _start(
                    [str(bin_dir / "use"), "dask-worker", address, "-p", str(threads)],
                    tmp_path,
                    tmp_path / f"worker{i}.log",
                    {"OMP_NUM_THREADS": "1", "PATH": f"{bin_dir}:{os.environ['PATH']}"},
                )
            )
        client = Client(address, timeout=60)
        client.wait_for_workers(2, timeout=120)
        # the workers run with the LocalCluster workers' settings
        env = client.run(lambda: {k: os.environ.get(k) for k in ("MALLOC_ARENA_MAX",)})
        assert all(v["MALLOC_ARENA_MAX"] == "1" for v in env.values()), env

        params_path = tmp_path / "params-cluster.yaml"
        doc = yaml.safe_load(threads.read_text())
        doc["runtime"] = {"task_runner": "dask", "dask_address": address}
        params_path.write_text(yaml.safe_dump(doc))
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["result"] = curation_flow_with_runner(
                    str(params_path), metrics_path=str(tmp_path / "m2.json")
                )
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                outcome["error"] = exc

        flow = threading.Thread(target=run)
        flow.start()
        masks_store = store_for("masks", load_params(params_path))
        killed: list[str] = []
        deadline = time.monotonic() + 600
        while flow.is_alive() and not killed and time.monotonic() < deadline:
            busy = {w: keys for w, keys in client.processing().items() if keys}
            if busy and masks_store.dir.exists() and any(masks_store.dir.glob("*.parquet")):
                worker, keys = next(iter(busy.items()))
                pid = client.run(os.getpid, workers=[worker])[worker]
                os.kill(pid, signal.SIGKILL)
                killed.append(str(keys[0]))
            time.sleep(0.2)
        flow.join(timeout=900)
        assert not flow.is_alive(), "the flow did not finish"
        assert "error" not in outcome, outcome.get("error")
        assert killed, "no worker was busy in the masks or nms stage"
        got = _pairs(tmp_path)
        assert not got.duplicated(["image_id", "segment_id"]).any()
        pd.testing.assert_frame_equal(expected, got)
        client.close()
    finally:
        for proc in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
