"""Command-line commands of the stages, made from the stage table.

``use <stage>`` (:mod:`use_core.cli`) and ``python -m use_core.pipeline <stage>`` (what
``dvc.yaml`` runs: that entry loads none of the user tools' code) both register these
commands: one per :data:`~use_core.pipeline.table.STAGES` entry, reading ``--params`` and
``--set``, ``--benchmark`` for a foreach stage and ``--track/--no-track`` where the stage logs
to MLflow. A stage that fails its gate (:class:`~use_core.pipeline.runner.StageFailed`) exits
with code 1 and its report; a params error exits with code 2.
"""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console

from use_core.config import ConfigError, Params, load_params
from use_core.pipeline.table import STAGES, StageSpec

console = Console(stderr=True)

ParamsOpt = Annotated[
    Path, typer.Option("--params", "-p", help="params.yaml to read (every knob of the pipeline).")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-S", help="Override a param, e.g. -S train.lr=0.01 (repeatable)."),
]
TrackOpt = Annotated[bool, typer.Option(help="Log the run to MLflow.")]


def overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``key=value`` strings (values parsed as YAML) → a dotted-key dict."""
    out: dict[str, Any] = {}
    for item in pairs or []:
        if "=" not in item:
            raise typer.BadParameter(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def get_params(path: Path, sets: list[str] | None = None) -> Params:
    """Load and validate params (a config error becomes a clean CLI error); apply ``runtime``."""
    try:
        params = load_params(path, overrides(sets))
    except ConfigError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(code=2) from None
    from use_core.malloc import apply_runtime

    apply_runtime(params.runtime)  # before any model runs: freed activations are reused
    return params


def with_benchmark_root(p: Params, name: str, root: str | None, label_order: str | None) -> Params:
    """``p`` with the ``eval.benchmarks`` entry ``name`` given its own ``root`` / ``label_order``
    (the entry is added when missing; nothing changes when both are None)."""
    if root is None and label_order is None:
        return p
    old = p.eval.benchmark_entry(name)
    entry = {
        "name": name,
        "root": root if root is not None else old.root,
        "label_order": label_order if label_order is not None else old.label_order,
    }
    kept = [e for e in p.eval.benchmarks if (e if isinstance(e, str) else e.name) != name]
    try:
        p.eval.benchmarks = [*kept, entry]  # type: ignore[list-item]  # validated on assignment
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(code=2) from None
    return p


def _execute(
    spec: StageSpec,
    params: Path,
    sets: list[str] | None,
    root: str | None = None,
    label_order: str | None = None,
    **options: Any,
) -> None:
    from use_core.pipeline.runner import StageFailed, run

    p = get_params(params, sets)
    if options.get("item") is not None:
        p = with_benchmark_root(p, options["item"], root, label_order)
    try:
        result = run(spec.name, p, **options)
    except StageFailed as exc:
        typer.echo(str(exc))
        console.print(f"[red]{spec.name} failed: nothing downstream runs[/red]")
        raise typer.Exit(code=1) from None
    typer.echo(json.dumps(result, indent=2, sort_keys=True, default=str))


def stage_command(spec: StageSpec) -> Callable[..., None]:
    """The typer command of ``spec`` (its options follow from the spec)."""
    if spec.foreach:

        def foreach_command(
            benchmark: Annotated[
                str, typer.Option(help=f"The {spec.foreach} entry to run (shapes, ade150...).")
            ],
            params: ParamsOpt = Path("params.yaml"),
            sets: SetOpt = None,
            track: TrackOpt = True,
            root: Annotated[
                str | None,
                typer.Option(help="The benchmark's folder (or a data root above it)."),
            ] = None,
            label_order: Annotated[
                str | None, typer.Option(help="PC-59 class order where ambiguous: ovseg | detail.")
            ] = None,
        ) -> None:
            _execute(spec, params, sets, root, label_order, item=benchmark, track=track)

        command: Callable[..., None] = foreach_command
    elif spec.tracked:

        def tracked_command(
            params: ParamsOpt = Path("params.yaml"), sets: SetOpt = None, track: TrackOpt = True
        ) -> None:
            _execute(spec, params, sets, track=track)

        command = tracked_command
    else:

        def plain_command(params: ParamsOpt = Path("params.yaml"), sets: SetOpt = None) -> None:
            _execute(spec, params, sets)

        command = plain_command
    command.__doc__ = spec.summary
    return command


def add_stage_commands(app: typer.Typer) -> None:
    """Register one command per stage of the table on ``app``, in pipeline order."""
    for spec in STAGES:
        app.command(spec.name, rich_help_panel="Pipeline stages")(stage_command(spec))
