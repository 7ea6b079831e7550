"""``dvc.yaml`` written from the stage table, each stage's ``deps`` its exact import closure.

A stage process runs ``python -m use_core.pipeline <stage>``: the entry module and what it
imports, then the stage module ``use_core.pipeline.<stage>`` and what that imports. The closure
is taken statically with grimp over every ``import`` in the source (function-level ones
included, so a branch the demo never takes is still covered), plus each module's parent
packages (Python runs their ``__init__`` first) and the package data a module reads
(:data:`PACKAGE_DATA`). Editing any module a stage runs therefore makes ``dvc status`` report
that stage and the stages downstream of it, and no other.

``python -m use_core.pipeline.dvcfile`` rewrites ``dvc.yaml``; ``--check`` exits 1 when the
committed file differs (the test suite runs the same comparison).
"""

from __future__ import annotations

import sys
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from use_core.pipeline.table import STAGES, Output, StageSpec

PACKAGE = "use_core"
ENTRY = "use_core.pipeline.__main__"

# Files a module reads at run time besides Python code (class lists...).
PACKAGE_DATA: dict[str, tuple[str, ...]] = {
    "use_core.eval.datasets": ("use_core/resources",),
}

HEADER = """\
# USE pipeline on the demo profile, written by `python -m use_core.pipeline.dvcfile` from the
# stage table (use_core/pipeline/table.py): do not edit by hand. Each stage runs one stage
# function; its code deps are exactly the modules it imports, its params exactly the keys it
# reads, so a change reruns what depends on it and nothing else.
"""

PLOTS: list[dict[str, Any]] = [
    {
        "plots/train_epochs.csv": {
            "x": "epoch",
            "y": [
                "train/loss",
                "val/loss",
                "val/zero_shot_top1",
                "val/zero_shot_colour",
                "val/zero_shot_shape",
            ],
            "title": "Training (epoch 0 = untrained head)",
        }
    },
    {
        "shapes per-class IoU": {
            "template": "bar_horizontal",
            "x": "value",
            "y": {"plots/eval_shapes_per_class.csv": "class"},
            "title": "Shapes val per-class IoU, % (SAM proposals)",
        }
    },
    {
        "shapes parts per-class AP": {
            "template": "bar_horizontal",
            "x": "value",
            "y": {"plots/eval_shapes_parts_per_class.csv": "class"},
            "title": "Shapes val per-part mask AP (SAM proposals)",
        }
    },
]


@cache
def _graph() -> Any:
    import grimp

    return grimp.build_graph(PACKAGE, include_external_packages=False, cache_dir=None)


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_closure(*modules: str) -> set[str]:
    """Every ``use_core`` module that importing ``modules`` can run (themselves included)."""
    graph = _graph()
    found: set[str] = set()
    todo = list(modules)
    while todo:
        module = todo.pop()
        if module in found:
            continue
        found.add(module)
        todo.extend(graph.find_upstream_modules(module) - found)
        todo.extend(p for p in _parents(module) if p not in found)
    return found


def module_file(module: str, root: Path = Path(".")) -> str:
    """The source file of ``module`` relative to the project (``__init__.py`` of a package)."""
    path = Path(*module.split("."))
    if (root / path).is_dir():
        return str(path / "__init__.py")
    return str(path.with_suffix(".py"))


def stage_code_deps(spec: StageSpec, root: Path = Path(".")) -> list[str]:
    """The project files stage ``spec`` runs: its import closure, sorted, plus package data."""
    modules = import_closure(ENTRY, spec.module)
    files = {module_file(m, root) for m in modules}
    for module in modules:
        files.update(PACKAGE_DATA.get(module, ()))
    return sorted(files)


def _out_entry(out: Output) -> Any:
    flags = {}
    if out.persist:
        flags["persist"] = True
    if not out.cache:
        flags["cache"] = False
    return {out.path: flags} if flags else out.path


def stage_entry(spec: StageSpec, root: Path = Path(".")) -> dict[str, Any]:
    """The ``dvc.yaml`` entry of one stage."""
    cmd = f"python -m use_core.pipeline {spec.name}"
    if spec.foreach:
        cmd += " --benchmark ${item}"
    body: dict[str, Any] = {
        "desc": f"{spec.summary} {spec.comment}".strip(),
        "cmd": cmd,
        "deps": [*spec.inputs, *stage_code_deps(spec, root)],
        "params": list(spec.params),
    }
    outs = [_out_entry(o) for o in spec.outputs if o.kind == "out"]
    metrics = [_out_entry(o) for o in spec.outputs if o.kind == "metric"]
    plots = [_out_entry(o) for o in spec.outputs if o.kind == "plot"]
    for key, entries in (("outs", outs), ("metrics", metrics), ("plots", plots)):
        if entries:
            body[key] = entries
    if spec.foreach:
        return {"foreach": "${" + spec.foreach + "}", "do": body}
    return body


def render_dvc_yaml(root: Path = Path(".")) -> str:
    """The full text of ``dvc.yaml`` for the current table and code."""
    doc = {"plots": PLOTS, "stages": {s.name: stage_entry(s, root) for s in STAGES}}
    return HEADER + yaml.safe_dump(doc, sort_keys=False, width=100, allow_unicode=True)


def main(argv: list[str] | None = None) -> int:
    """Write ``dvc.yaml`` (or, with ``--check``, exit 1 when it is out of date)."""
    args = sys.argv[1:] if argv is None else argv
    path = Path("dvc.yaml")
    text = render_dvc_yaml()
    if "--check" in args:
        if path.read_text() != text:
            print("dvc.yaml differs from the stage table: run python -m use_core.pipeline.dvcfile")
            return 1
        return 0
    path.write_text(text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
