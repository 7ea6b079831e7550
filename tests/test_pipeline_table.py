"""The stage table is the pipeline: dvc.yaml, the stage processes and the flows follow from it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from use_core.pipeline import dvcfile
from use_core.pipeline.table import STAGES, downstream, stage, upstream

REPO = Path(__file__).resolve().parents[1]


def test_dvc_yaml_is_the_table_rendered() -> None:
    """The committed dvc.yaml is exactly what the table and the import closures give."""
    assert (REPO / "dvc.yaml").read_text() == dvcfile.render_dvc_yaml(REPO), (
        "dvc.yaml is stale: run `python -m use_core.pipeline.dvcfile`"
    )


def test_dvc_yaml_stages_in_table_order_with_the_table_fields() -> None:
    doc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert list(doc["stages"]) == [s.name for s in STAGES]
    for spec in STAGES:
        entry = doc["stages"][spec.name]
        body = entry["do"] if spec.foreach else entry
        assert body["cmd"].startswith(f"python -m use_core.pipeline {spec.name}")
        assert body["params"] == list(spec.params)
        declared = [next(iter(o)) if isinstance(o, dict) else o for o in body.get("outs", [])]
        assert declared == [o.path for o in spec.outputs if o.kind == "out"]
        assert set(spec.inputs) <= set(body["deps"])


def test_upstream_follows_from_the_paths() -> None:
    assert upstream("shapes") == ()
    assert upstream("caption") == ("shapes",)
    assert upstream("nms") == ("masks",)
    assert upstream("train") == ("nms", "checks")
    assert upstream("evaluate") == ("train", "proposals")
    assert upstream("register") == ("train", "evaluate")
    assert downstream("masks") == ("nms", "checks", "train", "evaluate", "register")
    assert downstream("proposals") == ("evaluate", "register")
    assert downstream("register") == ()


def _stages_running(path: str) -> set[str]:
    doc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    out = set()
    for name, entry in doc["stages"].items():
        body = entry.get("do", entry)
        if path in body["deps"]:
            out.add(name)
    return out


@pytest.mark.parametrize(
    ("module", "owner"),
    [
        ("use_core/data/shapes/scenes.py", "shapes"),
        ("use_core/curation/captioning.py", "caption"),
        ("use_core/curation/grounding.py", "ground"),
        ("use_core/pipeline/masks.py", "masks"),
        ("use_core/pipeline/curation_report.py", "nms"),
        ("use_core/checks/pairs_suite.py", "checks"),
        ("use_core/train/loop.py", "train"),
        ("use_core/infer/proposal_store.py", "proposals"),
        ("use_core/eval/metrics.py", "evaluate"),
        ("use_core/tracking/promotion.py", "register"),
    ],
)
def test_editing_a_module_reruns_its_stage_and_downstream_only(module: str, owner: str) -> None:
    """A module's edit invalidates the stages whose deps name it: its stage first, then only
    stages downstream of that one (what `dvc status` reports after the edit)."""
    hit = _stages_running(module)
    assert owner in hit
    assert hit <= {owner, *downstream(owner)}, f"{module} also reruns {hit - {owner}}"


def test_a_shared_block_reruns_every_stage_that_runs_it() -> None:
    """The SAM decoder runs in masks and in proposals (and evaluate, which reads proposals)."""
    assert {"masks", "proposals"} <= _stages_running("use_core/sam/decoder.py")
    assert "caption" not in _stages_running("use_core/sam/decoder.py")


def test_closure_follows_function_level_imports_and_parent_packages() -> None:
    closure = dvcfile.import_closure("use_core.pipeline.masks")
    assert "use_core.sam.masks" in closure  # imported inside masks_shard
    assert "use_core.sam" in closure and "use_core" in closure  # parents run first
    assert "use_core.pipeline.nms" not in closure  # the runner imports stages by name only


def _stage_process(name: str, cwd: Path, params: Path, dump: Path) -> None:
    """Run ``python -m use_core.pipeline <name>`` and record the use_core modules it loaded."""
    code = (
        "import atexit, json, runpy, sys\n"
        f"atexit.register(lambda: json.dump(sorted(m for m in sys.modules "
        f"if m == 'use_core' or m.startswith('use_core.')), open({str(dump)!r}, 'w')))\n"
        f"sys.argv = ['use_core.pipeline', {name!r}, '-p', {str(params)!r}]\n"
        "runpy.run_module('use_core.pipeline', run_name='__main__', alter_sys=True)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_a_stage_process_loads_only_modules_its_deps_name(
    tmp_path: Path, models_cache: Path, demo_models: dict, mobile_sam_checkpoint: Path
) -> None:
    """Run shapes → caption → ground → masks → nms → checks as DVC does and compare what each
    process imported with the stage's deps in dvc.yaml (the static closure must cover it)."""
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "data": {
                    "root": "data",
                    "shapes": {"train_images": 2, "val_images": 1, "image_size": 96},
                },
                "caption": {"enabled": False},
                "ground": {"max_boxes": 2},
                "models": {"cache_dir": str(models_cache)},
            }
        )
    )
    doc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    for name in ("shapes", "caption", "ground", "masks", "nms", "checks"):
        dump = tmp_path / f"{name}.json"
        _stage_process(name, tmp_path, params, dump)
        loaded = {dvcfile.module_file(m, REPO) for m in json.loads(dump.read_text())}
        declared = set(doc["stages"][name]["deps"])
        assert loaded <= declared, f"{name} ran modules dvc.yaml does not name: {loaded - declared}"
        assert f"use_core/pipeline/{name}.py" in loaded
        others = {f"use_core/pipeline/{s.name}.py" for s in STAGES if s.name != name}
        assert not loaded & others, f"{name} loaded other stages' code: {loaded & others}"
    assert (tmp_path / stage("nms").output("metrics")).exists()
    assert (tmp_path / stage("checks").output("report")).exists()
