"""The `use` command line: one sub-command per pipeline stage plus the user-facing tools.

Every command only parses options and calls one function of `use_core`; DVC stages and Prefect
flows call the same functions. Heavy libraries are imported inside the commands so that
`use --help` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console

from use_core.config import ConfigError, Params, load_params

app = typer.Typer(
    name="use",
    help="USE — Universal Segment Embeddings: curate segment-text pairs, train, evaluate, query.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

ParamsOpt = Annotated[
    Path, typer.Option("--params", "-p", help="params.yaml to read (every knob of the pipeline).")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-S", help="Override a param, e.g. -S train.lr=0.01 (repeatable)."),
]


def _overrides(pairs: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in pairs or []:
        if "=" not in item:
            raise typer.BadParameter(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def get_params(path: Path, sets: list[str] | None = None) -> Params:
    """Load and validate params, turning a config error into a clean CLI error."""
    try:
        return load_params(path, _overrides(sets))
    except ConfigError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(code=2) from None


@app.command("params")
def params_cmd(
    params: ParamsOpt = Path("params.yaml"),
    sets: SetOpt = None,
) -> None:
    """Validate params.yaml and print the full, resolved configuration as YAML."""
    p = get_params(params, sets)
    typer.echo(yaml.safe_dump(p.model_dump(mode="json"), sort_keys=False))


@app.command("assets")
def assets_cmd(
    params: ParamsOpt = Path("params.yaml"),
    sets: SetOpt = None,
) -> None:
    """Fetch and verify the offline assets (MobileSAM, spaCy) and build the demo models."""
    from use_core.models.assets import prepare_assets

    p = get_params(params, sets)
    prepare_assets(Path(p.models.cache_dir), seed=p.runtime.seed)


@app.command("shapes")
def shapes_cmd(
    out: Annotated[Path, typer.Option(help="Output folder of the corpus.")] = Path("data/shapes"),
    params: ParamsOpt = Path("params.yaml"),
    sets: SetOpt = None,
) -> None:
    """Generate the seeded "shapes" demo corpus (images, captions, VG regions, COCO masks)."""
    from use_core.data.shapes import generate_shapes

    cfg = get_params(params, sets).data.shapes
    stats = generate_shapes(out, **cfg.model_dump())
    typer.echo(json.dumps(stats, indent=2, sort_keys=True))


def _run_curation_stage(stage: str, params: Path, sets: list[str] | None) -> None:
    from use_core.curation.stages import run_stage

    p = get_params(params, sets)
    report = run_stage(stage, p)
    console.print(
        f"[green]{stage}[/green]: {report.shards} shards ({report.computed} computed, "
        f"{report.skipped} already done, {report.pruned} stale removed) in {report.seconds:.1f} s"
    )
    if report.counters:
        console.print(json.dumps(report.counters, sort_keys=True))


@app.command("caption")
def caption_cmd(params: ParamsOpt = Path("params.yaml"), sets: SetOpt = None) -> None:
    """Curation 1/4: ground-truth captions plus the MLLM's (paper prompt), per image shard."""
    _run_curation_stage("caption", params, sets)


@app.command("ground")
def ground_cmd(params: ParamsOpt = Path("params.yaml"), sets: SetOpt = None) -> None:
    """Curation 2/4: referring expressions (spaCy) grounded with the whole caption; VG regions."""
    _run_curation_stage("ground", params, sets)


@app.command("masks")
def masks_cmd(params: ParamsOpt = Path("params.yaml"), sets: SetOpt = None) -> None:
    """Curation 3/4: SAM masks from the boxes (one image embedding per image, batched prompts)."""
    _run_curation_stage("masks", params, sets)


@app.command("nms")
def nms_cmd(
    params: ParamsOpt = Path("params.yaml"),
    sets: SetOpt = None,
    metrics: Annotated[Path, typer.Option(help="Curation statistics (JSON).")] = Path(
        "metrics/curation.json"
    ),
) -> None:
    """Curation 4/4: mask NMS merging texts → the segment-text pairs table, plus statistics."""
    from use_core.curation.report import curation_report

    _run_curation_stage("nms", params, sets)
    stats = curation_report(get_params(params, sets), metrics)
    console.print(
        f"pairs: {stats['segments']} segments, {stats['texts']} texts, "
        f"{stats['unique_expressions']} unique expressions; quarantined "
        f"{stats['quarantine']['total']}"
    )


@app.command("checks")
def checks_cmd(params: ParamsOpt = Path("params.yaml"), sets: SetOpt = None) -> None:
    """Data-quality gate (great-expectations) on the pairs table; exits 1 when it fails."""
    from use_core.checks.stage import ChecksFailed, run_checks_stage

    try:
        result = run_checks_stage(get_params(params, sets))
    except ChecksFailed as exc:
        typer.echo(str(exc))
        console.print("[red]pairs checks failed: nothing downstream runs[/red]")
        raise typer.Exit(code=1) from None
    console.print(
        f"[green]pairs checks passed[/green] on {result['rows']} rows; {result['report']}"
    )


@app.command("train")
def train_cmd(
    params: ParamsOpt = Path("params.yaml"),
    sets: SetOpt = None,
    track: Annotated[bool, typer.Option(help="Log the run and the model to MLflow.")] = True,
) -> None:
    """Train the USE head on the curated pairs (resumes from the last epoch checkpoint)."""
    from use_core.train.stage import run_train_stage

    metrics = run_train_stage(get_params(params, sets), track=track)
    typer.echo(json.dumps(metrics, indent=2, sort_keys=True))


@app.command("evaluate")
def evaluate_cmd(
    benchmark: Annotated[
        str, typer.Option(help="Benchmark name (shapes, shapes_parts, ade150...).")
    ],
    params: ParamsOpt = Path("params.yaml"),
    sets: SetOpt = None,
    track: Annotated[bool, typer.Option(help="Log the evaluation to MLflow.")] = True,
) -> None:
    """Zero-shot semantic / part segmentation of the trained model on one benchmark."""
    from use_core.eval.stage import run_eval_stage

    metrics = run_eval_stage(get_params(params, sets), benchmark, track=track)
    typer.echo(json.dumps(metrics, indent=2, sort_keys=True))


@app.command("register")
def register_cmd(params: ParamsOpt = Path("params.yaml"), sets: SetOpt = None) -> None:
    """Register the trained model in MLflow; move the champion alias only if strictly better."""
    from use_core.tracking.register import run_register_stage

    result = run_register_stage(get_params(params, sets))
    colour = "green" if result["promoted"] else "yellow"
    console.print(f"[{colour}]{result['name']} v{result['version']}[/{colour}]: {result['reason']}")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
