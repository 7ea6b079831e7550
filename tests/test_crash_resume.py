"""Crash and resume: SIGKILL at random (seeded) points, re-run, get the uninterrupted result.

Killing needs processes. Loading the curation models takes seconds, so one runner process (this
file run as a script) loads them once, then forks a child per trial and SIGKILLs it after a
random delay: trials cost only the work they do. The runner uses one torch thread (forking a
process with a live thread pool is unsafe, and one thread keeps results bit-identical).

* curation: caption+ground killed >= 20 times (fresh stores per cycle, kills until a run
  completes), masks+nms killed a few times on top of that; the final pairs table (and every
  stage table and the quarantine) must equal an uninterrupted run's;
* concurrency: two simultaneous runs on one store: the second fails with StoreLockedError, or,
  waiting for the lock, both finish; shards are never interleaved (outputs equal the reference);
* training: ``train_use_model`` killed after epoch checkpoints, resumed: same final weights and
  metrics as an uninterrupted run;
* register: killed at random points of ``register_and_promote`` on a real MLflow SQLite store:
  the champion alias never points at a version that does not exist or is not READY.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SEED = 8
CG_KILLS = 20
MASK_KILLS = 3
REGISTER_KILLS = 6

# ----------------------------------------------------------------------------------------------
# Runner side (executed as `python tests/test_crash_resume.py MODE CONFIG_JSON`)


def _child(fn: Callable[[], Any], quiet: bool = True) -> int:
    """Fork; the child runs ``fn`` and exits 0 (1 on an exception); return the child's pid."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            if quiet:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1)
                os.dup2(devnull, 2)
            fn()
        except BaseException as exc:  # noqa: BLE001 - reported through the exit code and a file
            code = 1
            err = os.environ.get("CRASH_CHILD_ERR")
            if err:
                Path(err).write_text(f"{type(exc).__name__}: {exc}")
        os._exit(code)
    return pid


def _run_to_end(fn: Callable[[], Any]) -> int:
    pid = _child(fn)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _kill_after(fn: Callable[[], Any], delay: float) -> tuple[bool, int]:
    """Run ``fn`` in a child, SIGKILL it after ``delay`` s. Returns (killed, exit code)."""
    pid = _child(fn)
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return False, os.waitstatus_to_exitcode(status)
        time.sleep(min(0.005, max(deadline - time.monotonic(), 0)))
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return code == -signal.SIGKILL, code


def _curation_params(root: Path, models_cache: str) -> Any:
    from use_core.config import Params, parse_params

    return parse_params(
        {
            "data": {
                "root": str(root),
                "shard_size": 1,
                "sources": [s.model_dump() for s in Params().data.sources],
            },
            "caption": {"max_new_tokens": 8},
            "ground": {"max_boxes": 2},
            "models": {"cache_dir": models_cache},
            "runtime": {"device": "cpu"},
        }
    )


def _snapshot(params: Any) -> dict[str, Any]:
    """Stage outputs, quarantine and leftovers of a curation root, as comparable JSON strings."""
    from use_core.data.pairs import pairs_to_table
    from use_core.data.quarantine import read_quarantine
    from use_core.pipeline.shards import STAGES, read_stage, store_for

    out: dict[str, Any] = {}
    for stage in STAGES:
        df = read_stage(stage, params)
        if stage == "nms":
            pairs_to_table(df)  # the final table fits the schema
            out["pairs_rows"] = len(df)
            out["pairs_duplicates"] = int(df.duplicated(["image_id", "segment_id"]).sum())
        out[stage] = df.to_json(orient="records")
        out[f"{stage}_files"] = len(store_for(stage, params).keys())
    q = read_quarantine(Path(params.data.root) / "curation" / "quarantine")
    out["quarantine"] = q.to_json(orient="records")
    out["tmp_files"] = sum(len(store_for(s, params).stale_tmp_files()) for s in STAGES)
    return out


def _progress(params: Any) -> dict[str, int]:
    from use_core.pipeline.shards import STAGES, store_for

    shards = {s: len(store_for(s, params).keys()) for s in STAGES}
    shards["tmp"] = sum(len(store_for(s, params).stale_tmp_files()) for s in STAGES)
    return shards


def _compare(a: dict[str, Any], b: dict[str, Any], keys: tuple[str, ...]) -> list[str]:
    return [k for k in keys if a[k] != b[k]]


def run_curation_trials(cfg: dict[str, Any]) -> dict[str, Any]:
    """Reference run, caption+ground kill cycles, masks+nms kills, concurrency; returns JSON."""
    import torch

    torch.set_num_threads(1)
    from use_core.data.pairs import StoreLockedError
    from use_core.data.shapes.scenes import generate_shapes
    from use_core.pipeline.shards import STAGES, run_stage, store_for

    work = Path(cfg["work"])
    rng = random.Random(cfg["seed"])
    roots = {name: work / name / "data" for name in ("ref", "trial", "conc", "wait")}
    for root in roots.values():
        generate_shapes(
            root / "shapes", train_images=4, val_images=1, image_size=128, show_progress=False
        )
    params = {name: _curation_params(root, cfg["models_cache"]) for name, root in roots.items()}
    from use_core.pretrained.registry import load_pretrained

    for role in ("captioner", "spacy", "grounding", "sam"):
        load_pretrained(role, params["ref"])  # loaded once, inherited by every forked child

    def stages_fn(p: Any, stages: tuple[str, ...], wait: bool = False) -> Callable[[], None]:
        def run() -> None:
            for stage in stages:
                run_stage(stage, p, show_progress=False, wait_for_lock=wait)

        return run

    timing = work / "timing.json"

    def timed_reference() -> None:
        marks = {"start": time.monotonic()}
        for stage in STAGES:
            run_stage(stage, params["ref"], show_progress=False)
            marks[stage] = time.monotonic()
        timing.write_text(json.dumps(marks))

    assert _run_to_end(timed_reference) == 0, "the reference run failed"
    marks = json.loads(timing.read_text())
    t_cg = marks["ground"] - marks["start"]
    t_caption = marks["caption"] - marks["start"]
    t_mn = marks["nms"] - marks["ground"]
    ref = _snapshot(params["ref"])
    ref_cg = _snapshot_stages(params["ref"], ("caption", "ground"))

    trial = params["trial"]
    curation_dirs = [roots["trial"] / "curation", roots["trial"] / "pairs"]
    kills: list[dict[str, Any]] = []
    cycles: list[dict[str, Any]] = []
    cg = ("caption", "ground")
    while sum(k["phase"] == "caption+ground" for k in kills) < cfg["cg_kills"]:
        for d in curation_dirs:
            shutil.rmtree(d, ignore_errors=True)
        n = 0
        while True:
            # Stratified: captioning is a small part of caption+ground, so the first kill of
            # every other cycle is drawn inside it; the rest anywhere in caption+ground.
            in_caption = n == 0 and len(cycles) % 2 == 0
            delay = rng.uniform(0.0, 0.8 * t_caption if in_caption else t_cg)
            killed, code = _kill_after(stages_fn(trial, cg), delay)
            if not killed:
                assert code == 0, f"a caption+ground run failed (exit {code})"
                break
            n += 1
            kills.append({"phase": "caption+ground", "delay": round(delay, 3), **_progress(trial)})
        snap = _snapshot_stages(trial, cg)
        cycles.append({"kills": n, "differs": _compare(snap, ref_cg, tuple(snap))})

    mask_kills = 0
    mask_restarts = 0
    while mask_kills < cfg["mask_kills"]:
        delay = rng.uniform(0.0, t_mn)
        killed, code = _kill_after(stages_fn(trial, STAGES), delay)
        if killed:
            mask_kills += 1
            kills.append({"phase": "masks+nms", "delay": round(delay, 3), **_progress(trial)})
            continue
        assert code == 0, f"a full run failed (exit {code})"
        if mask_kills < cfg["mask_kills"]:  # finished too early: redo masks + nms, kill again
            for stage in ("masks", "nms"):
                shutil.rmtree(store_for(stage, trial).dir, ignore_errors=True)
            mask_restarts += 1
    assert _run_to_end(stages_fn(trial, STAGES)) == 0
    final = _snapshot(trial)
    keys = (*STAGES, "quarantine", "pairs_rows")
    result: dict[str, Any] = {
        "t_caption_ground": t_cg,
        "t_caption": t_caption,
        "t_masks_nms": t_mn,
        "kills": kills,
        "cycles": cycles,
        "mask_restarts": mask_restarts,
        "reference": {k: ref[k] for k in ("pairs_rows", "pairs_duplicates", "tmp_files")},
        "final": {k: final[k] for k in ("pairs_rows", "pairs_duplicates", "tmp_files")},
        "final_differs": _compare(final, ref, keys),
        "reference_pairs_files": ref["nms_files"],
        "final_pairs_files": final["nms_files"],
    }

    # concurrency 1: two simultaneous runs, fail fast: exactly one gets StoreLockedError
    conc = params["conc"]
    errs = [work / f"conc_err_{i}.txt" for i in range(2)]
    pids = []
    for err in errs:
        os.environ["CRASH_CHILD_ERR"] = str(err)
        pids.append(_child(stages_fn(conc, cg)))
    os.environ.pop("CRASH_CHILD_ERR")
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
    messages = [e.read_text() if e.exists() else "" for e in errs]
    # whichever lost the race stopped at its first locked stage; finish the store and compare
    assert _run_to_end(stages_fn(conc, cg)) == 0
    result["concurrent_fail_fast"] = {
        "exit_codes": codes,
        "messages": messages,
        "differs": _compare(_snapshot_stages(conc, cg), ref_cg, (*cg, "quarantine")),
        "lock_error_class": StoreLockedError.__name__,
    }

    # concurrency 2: both wait for the lock: both finish, the result equals the reference
    wait = params["wait"]
    pids = [_child(stages_fn(wait, cg, wait=True)) for _ in range(2)]
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
    tmp_files = sum(len(store_for(s, wait).stale_tmp_files()) for s in cg)
    result["concurrent_wait"] = {
        "exit_codes": codes,
        "differs": _compare(_snapshot_stages(wait, cg), ref_cg, (*cg, "quarantine")),
        "tmp_files": tmp_files,
    }
    return result


def _snapshot_stages(params: Any, stages: tuple[str, ...]) -> dict[str, Any]:
    from use_core.data.quarantine import read_quarantine
    from use_core.pipeline.shards import read_stage

    out = {s: read_stage(s, params).to_json(orient="records") for s in stages}
    q = read_quarantine(Path(params.data.root) / "curation" / "quarantine")
    q = q[q["stage"].isin(["sources", *stages])]
    out["quarantine"] = q.reset_index(drop=True).to_json(orient="records")
    return out


# -- training ----------------------------------------------------------------------------------


def train_params(models_cache: str) -> Any:
    from use_core.config import Params

    params = Params()
    params.models.cache_dir = models_cache
    params.runtime.device = "cpu"
    for key, value in {
        "encoder": "clip",
        "epochs": 10,
        "batch_size": 4,
        "crop_size": 96,
        "image_size": 64,
        "feature_dim": 16,
        "cache_views": 1,
        "max_segments_per_image": 6,
        "sources": [],
    }.items():
        setattr(params.train, key, value)
    return params


def run_training_trials(cfg: dict[str, Any]) -> dict[str, Any]:
    """Uninterrupted training, then a run SIGKILLed after the checkpoints of epochs 1 and 2 and
    resumed; each in a forked child of this process (backbones loaded once)."""
    import torch

    torch.set_num_threads(1)
    from use_core.data.shapes.gt import pairs_from_shapes_gt, shapes_class_names
    from use_core.model.factory import load_backbones
    from use_core.train.loop import train_use_model

    params = train_params(cfg["models_cache"])
    shapes = Path(cfg["shapes"])
    work = Path(cfg["work"])
    train = pairs_from_shapes_gt(shapes, "train")
    val = pairs_from_shapes_gt(shapes, "val", with_class_name=True)
    components = load_backbones(params)
    classes = shapes_class_names(shapes)

    def train_into(out: Path, result: Path | None = None) -> Callable[[], None]:
        def run() -> None:
            r = train_use_model(
                params,
                train,
                val,
                shapes,
                out,
                components,
                class_names=classes,
                grid_size=4,
                show_progress=False,
            )
            if result is not None:
                payload = {
                    "metrics": r.metrics,
                    "history": r.history,
                    "resumed_from_epoch": r.resumed_from_epoch,
                }
                result.write_text(json.dumps(payload))

        return run

    rng = random.Random(cfg["seed"])
    assert _run_to_end(train_into(work / "full", work / "full.json")) == 0
    killed_dir = work / "killed"
    history = json.loads((work / "full.json").read_text())["history"]
    epoch_s = min(h["train/epoch_time_s"] for h in history if "train/epoch_time_s" in h)
    kills: list[dict[str, Any]] = []
    for after_epoch in (2, 6):  # epochs take ~10 ms here: room to land mid-run
        pid = _child(train_into(killed_dir))
        marker = killed_dir / "checkpoints" / f"epoch_{after_epoch:03d}" / "train_state.json"
        deadline = time.monotonic() + 300
        while not marker.exists() and time.monotonic() < deadline:
            if os.waitpid(pid, os.WNOHANG)[0]:
                raise RuntimeError("the training child ended before its checkpoint")
            time.sleep(0.002)
        delay = rng.uniform(0.0, 0.8 * epoch_s)  # somewhere in the next epoch
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        kills.append(
            {
                "after_epoch": after_epoch,
                "delay": round(delay, 3),
                "code": code,
                "checkpoints": sorted(p.name for p in (killed_dir / "checkpoints").iterdir()),
                "finished": (killed_dir / "model").exists(),
            }
        )
    assert _run_to_end(train_into(killed_dir, work / "resumed.json")) == 0
    return {
        "full": json.loads((work / "full.json").read_text()),
        "resumed": json.loads((work / "resumed.json").read_text()),
        "kills": kills,
        "full_model": str(work / "full" / "model" / "model.safetensors"),
        "resumed_model": str(killed_dir / "model" / "model.safetensors"),
    }


# -- register ----------------------------------------------------------------------------------


def run_register_trials(cfg: dict[str, Any]) -> dict[str, Any]:
    """Kill ``register_and_promote`` at random points; check the alias after every kill."""
    import mlflow  # imported once; the database is only ever opened in the children

    work = Path(cfg["work"])
    os.chdir(work)
    rng = random.Random(cfg["seed"])
    name, metric = "crash-test-model", "shapes_mIoU"
    out = work / "register_out.json"
    uri = f"sqlite:///{work / 'mlflow.db'}"

    def setup() -> None:
        from use_core.config import Params
        from use_core.tracking.runs import tracking_run

        class _Doubler(mlflow.pyfunc.PythonModel):  # type: ignore[misc,name-defined]
            def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
                return model_input * 2

        params = Params()
        params.runtime.tracking_uri = uri
        params.runtime.experiment = "crash"
        with tracking_run(params, "train"):
            info = mlflow.pyfunc.log_model(
                name="model", python_model=_Doubler(), pip_requirements=[]
            )
        out.write_text(json.dumps({"model_uri": str(info.model_uri)}))

    assert _run_to_end(setup) == 0, "logging the model failed"
    model_uri = json.loads(out.read_text())["model_uri"]

    def register(value: float) -> Callable[[], None]:
        def run() -> None:
            from use_core.tracking.promotion import register_and_promote

            mlflow.set_tracking_uri(uri)
            promotion = register_and_promote(model_uri, name, metric, value)
            out.write_text(json.dumps({"t": time.monotonic(), **promotion.to_dict()}))

        return run

    def check(load: bool = False) -> Callable[[], None]:
        def run() -> None:
            from mlflow import MlflowClient
            from mlflow.exceptions import MlflowException

            mlflow.set_tracking_uri(uri)
            client = MlflowClient()
            state: dict[str, Any] = {"alias": None}
            try:
                mv = client.get_model_version_by_alias(name, "champion")
            except MlflowException as exc:
                state["alias_error"] = str(exc)[:200]
            else:
                state["alias"] = str(mv.version)
                got = client.get_model_version(name, mv.version)  # raises if it does not exist
                state["status"] = got.status
                state["tags"] = dict(got.tags)
                if load:
                    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
                    state["loaded"] = type(model).__name__
            versions = client.search_model_versions(f"name='{name}'")
            state["versions"] = sorted(int(v.version) for v in versions)
            out.write_text(json.dumps(state))

        return run

    start = time.monotonic()
    assert _run_to_end(register(0.10)) == 0
    t_register = time.monotonic() - start
    trials: list[dict[str, Any]] = []
    value = 0.10
    while len([t for t in trials if t["killed"]]) < cfg["register_kills"]:
        value += 0.01  # every attempt would be promoted: the alias is always about to move
        delay = rng.uniform(0.0, t_register)
        killed, code = _kill_after(register(value), delay)
        assert _run_to_end(check()) == 0, "checking the registry failed"
        state = json.loads(out.read_text())
        trials.append({"killed": killed, "code": code, "delay": round(delay, 3), **state})
    assert _run_to_end(register(value + 0.01)) == 0
    final_promotion = json.loads(out.read_text())
    assert _run_to_end(check(load=True)) == 0
    final = json.loads(out.read_text())
    return {
        "t_register": t_register,
        "trials": trials,
        "final_promotion": final_promotion,
        "final": final,
    }


def run_curation_once(cfg: dict[str, Any]) -> dict[str, Any]:
    """One uninterrupted curation run on a fresh tiny shapes corpus; its tables as JSON."""
    import torch

    torch.set_num_threads(1)
    from use_core.data.shapes.scenes import generate_shapes
    from use_core.pipeline.shards import STAGES, run_stage

    root = Path(cfg["work"]) / "data"
    generate_shapes(
        root / "shapes", train_images=cfg["images"], val_images=1, image_size=128,
        show_progress=False,
    )  # fmt: skip
    params = _curation_params(root, cfg["models_cache"])
    for stage in STAGES:
        run_stage(stage, params, show_progress=False)
    return _snapshot(params)


def run_training_once(cfg: dict[str, Any]) -> dict[str, Any]:
    """One training run (2 epochs); metrics, history and a hash of the final weights."""
    import hashlib

    import torch

    torch.set_num_threads(1)
    from safetensors.torch import load_file

    from use_core.data.shapes.gt import pairs_from_shapes_gt, shapes_class_names
    from use_core.model.factory import load_backbones
    from use_core.runtime import seed_everything
    from use_core.train.loop import train_use_model

    params = train_params(cfg["models_cache"])
    params.train.epochs = 2
    seed_everything(params.train.seed)
    shapes = Path(cfg["shapes"])
    r = train_use_model(
        params,
        pairs_from_shapes_gt(shapes, "train"),
        pairs_from_shapes_gt(shapes, "val", with_class_name=True),
        shapes,
        Path(cfg["work"]) / "out",
        load_backbones(params),
        class_names=shapes_class_names(shapes),
        grid_size=4,
        show_progress=False,
    )
    weights = load_file(str(r.model_dir / "model.safetensors"))
    digest = hashlib.sha256()
    for key in sorted(weights):
        digest.update(key.encode())
        digest.update(weights[key].numpy().tobytes())
    return {"metrics": r.metrics, "history": r.history, "weights_sha256": digest.hexdigest()}


MODES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "curation": run_curation_trials,
    "train": run_training_trials,
    "register": run_register_trials,
    "curate_once": run_curation_once,
    "train_once": run_training_once,
}


def _main() -> None:
    mode, config = sys.argv[1], json.loads(sys.argv[2])
    result = MODES[mode](config)
    Path(config["result"]).write_text(json.dumps(result, indent=1, default=str))


# ----------------------------------------------------------------------------------------------
# Test side


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["OMP_NUM_THREADS"] = "1"
    return env


def _runner(
    mode: str, config: dict[str, Any], timeout: float = 600, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run this file as a script in ``mode``; return its JSON result (fail with its stderr)."""
    result = Path(config["work"]) / f"{mode}_result.json"
    result.unlink(missing_ok=True)
    proc = subprocess.run(
        [sys.executable, __file__, mode, json.dumps({**config, "result": str(result)})],
        env={**_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0 or not result.exists():
        pytest.fail(f"{mode} runner failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(result.read_text())


@pytest.fixture(scope="module")
def curation_trials(
    tmp_path_factory: pytest.TempPathFactory,
    models_cache: Path,
    demo_models: dict,
    mobile_sam_checkpoint: Path,
) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("crash")
    config = {
        "work": str(work),
        "models_cache": str(models_cache),
        "seed": SEED,
        "cg_kills": CG_KILLS,
        "mask_kills": MASK_KILLS,
    }
    return _runner("curation", config)


@pytest.mark.slow
def test_curation_killed_at_random_points_resumes_to_the_same_pairs(
    curation_trials: dict[str, Any],
) -> None:
    r = curation_trials
    kills = r["kills"]
    assert sum(k["phase"] == "caption+ground" for k in kills) >= CG_KILLS
    assert sum(k["phase"] == "masks+nms" for k in kills) >= MASK_KILLS
    assert len(kills) >= 20
    # the kills landed at different points: mid-caption, mid-ground and mid-masks
    assert any(k["caption"] < 4 for k in kills if k["phase"] == "caption+ground")
    assert any(k["caption"] == 4 and k["ground"] < 4 for k in kills)
    assert any(k["masks"] < 4 for k in kills if k["phase"] == "masks+nms")
    # every caption+ground cycle, resumed after its kills, equals the uninterrupted run
    assert r["cycles"] and all(c["differs"] == [] for c in r["cycles"]), r["cycles"]
    assert r["reference"]["pairs_rows"] > 0
    assert r["final_differs"] == [], r["final_differs"]
    assert r["final"] == {**r["reference"], "pairs_duplicates": 0, "tmp_files": 0}
    assert r["final_pairs_files"] == r["reference_pairs_files"] == 4


@pytest.mark.slow
def test_two_runs_on_one_store_never_interleave(curation_trials: dict[str, Any]) -> None:
    fast = curation_trials["concurrent_fail_fast"]
    # exactly one of the two simultaneous runs met the lock and stopped with a clear message
    assert sorted(fast["exit_codes"]) == [0, 1], fast
    message = next(m for m in fast["messages"] if m)
    assert message.startswith("StoreLockedError: store ")
    assert "is locked by another run (pid " in message and "wait for it to finish" in message
    assert fast["differs"] == []
    waited = curation_trials["concurrent_wait"]
    assert waited["exit_codes"] == [0, 0] and waited["differs"] == [] and waited["tmp_files"] == 0


def test_store_lock_is_exclusive_across_processes(tmp_path: Path) -> None:
    """A second process cannot take a held store lock; it can once the holder is SIGKILLed."""
    from use_core.data.pairs import ShardStore, StoreLockedError

    code = (
        "import sys, time; from pathlib import Path; from use_core.data.pairs import ShardStore\n"
        "with ShardStore(Path(sys.argv[1]), 'pairs').lock():\n"
        "    print('locked', flush=True); time.sleep(60)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], env=_env(), stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        store = ShardStore(tmp_path, "pairs")
        with pytest.raises(StoreLockedError, match=rf"locked by another run \(pid {holder.pid}\)"):
            with store.lock():
                pass
        with pytest.raises(StoreLockedError, match="after waiting 0.3 s"):
            with store.lock(wait=True, timeout=0.3):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with store.lock(wait=True, timeout=5):  # the kernel released the dead holder's lock
        assert (store.dir / ".lock").read_text() == str(os.getpid())


@pytest.mark.slow
def test_training_killed_after_checkpoints_resumes_to_the_same_weights(
    tmp_path: Path, models_cache: Path, demo_models: dict
) -> None:
    from safetensors.torch import load_file

    from use_core.data.shapes.scenes import generate_shapes

    shapes = tmp_path / "shapes"
    generate_shapes(shapes, train_images=8, val_images=2, image_size=128, show_progress=False)
    r = _runner(
        "train",
        {
            "work": str(tmp_path),
            "models_cache": str(models_cache),
            "shapes": str(shapes),
            "seed": SEED,
        },  # fmt: skip
    )
    assert [k["code"] for k in r["kills"]] == [-signal.SIGKILL, -signal.SIGKILL], r["kills"]
    for kill in r["kills"]:
        assert f"epoch_{kill['after_epoch']:03d}" in kill["checkpoints"] and not kill["finished"]
    full, resumed = r["full"], r["resumed"]
    assert full["resumed_from_epoch"] is None and resumed["resumed_from_epoch"] >= 6
    wa, wb = load_file(r["full_model"]), load_file(r["resumed_model"])
    assert set(wa) == set(wb)
    for key in wa:
        assert (wa[key] == wb[key]).all(), key

    def untimed(rows: list[dict[str, float]]) -> list[dict[str, float]]:
        return [{k: v for k, v in row.items() if not k.endswith("time_s")} for row in rows]

    assert len(full["history"]) == 11  # epoch 0 (untrained head) + 10 epochs
    assert untimed(resumed["history"]) == untimed(full["history"])
    assert untimed([resumed["metrics"]]) == untimed([full["metrics"]])


@pytest.mark.slow
def test_register_killed_never_leaves_a_dangling_champion(tmp_path: Path) -> None:
    r = _runner(
        "register",
        {"work": str(tmp_path), "seed": SEED, "register_kills": REGISTER_KILLS},
    )
    killed = [t for t in r["trials"] if t["killed"]]
    assert len(killed) >= REGISTER_KILLS
    for t in r["trials"]:
        # the alias always names an existing, READY version (get_model_version succeeded)
        assert t["alias"] is not None and t["status"] == "READY", t
        assert int(t["alias"]) in t["versions"], t
        assert t["tags"]["promoted"] == "true", t
    final = r["final"]
    assert final["alias"] == r["final_promotion"]["version"] and final["status"] == "READY"
    assert final["loaded"] == "PyFuncModel"


if __name__ == "__main__":
    _main()
