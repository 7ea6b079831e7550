"""The `use` command line: one sub-command per pipeline stage plus the user-facing tools.

The stage commands come from the stage table (:mod:`use_core.pipeline.commands`); DVC and the
Prefect flows run the same stage functions. Every tool command only parses options and calls
one function of `use_core`. Heavy libraries are imported inside the commands so that
`use --help` stays fast.

Its length is the tool commands' options and help texts (segment, index, query, schedule,
serve); each command body is a few lines, so splitting it would only scatter the help.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from use_core.config import Params
from use_core.pipeline.commands import (
    ParamsOpt,
    SetOpt,
    add_stage_commands,
    console,
    get_params,
    overrides,
)
from use_core.pipeline.table import stage

app = typer.Typer(
    name="use",
    help="USE — Universal Segment Embeddings: curate segment-text pairs, train, evaluate, query.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
add_stage_commands(app)


@app.command("params")
def params_cmd(
    params: ParamsOpt = Path("params.yaml"),
    sets: SetOpt = None,
    preset: Annotated[
        str | None,
        typer.Option(
            "--preset",
            help="Switch a named set of values over the params (paper: every value the demo"
            " changes back to the USE paper's; listed in use_core/presets.py).",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Write the resolved params YAML here instead of printing it."),
    ] = None,
) -> None:
    """Validate params.yaml and print (or write) the full, resolved configuration as YAML."""
    from use_core.presets import PRESETS, apply_preset

    p = get_params(params, sets)
    if preset is not None:
        if preset not in PRESETS:
            raise _fail(f"unknown preset {preset!r}; known: {', '.join(sorted(PRESETS))}")
        p = apply_preset(p, preset)
    text = yaml.safe_dump(p.model_dump(mode="json"), sort_keys=False)
    if out is None:
        typer.echo(text)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(out)
    console.print(f"wrote {out}" + (f" (preset {preset})" if preset else ""), highlight=False)


@app.command("assets")
def assets_cmd(
    params: ParamsOpt = Path("params.yaml"),
    sets: SetOpt = None,
) -> None:
    """Fetch and verify the offline assets (MobileSAM, spaCy) and build the demo models."""
    from use_core.pretrained.assets import prepare_assets

    p = get_params(params, sets)
    prepare_assets(Path(p.models.cache_dir), seed=p.runtime.seed)


# ------------------------------------------------------------------ user-facing tools

TRAIN_DIR = Path(stage("train").output("model_dir"))
ModelDirOpt = Annotated[
    Path,
    typer.Option(
        "--model-dir",
        help="The train stage's folder (holding model/) or a model folder with model.json.",
    ),
]


def _fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``message`` in red on stderr and return the exit to raise (2: bad input)."""
    console.print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(code=code)


def parse_vocab(text: str) -> list[str]:
    """Comma-separated class names (or ``@file`` with one name a line) → the names, in order.

    Raises :class:`typer.BadParameter` for an empty vocabulary or a repeated name.
    """
    if text.startswith("@"):
        path = Path(text[1:])
        if not path.is_file():
            raise typer.BadParameter(f"vocabulary file {path} does not exist", param_hint="--vocab")
        raw = path.read_text().splitlines()
    else:
        raw = text.split(",")
    names = [n.strip() for n in raw if n.strip()]
    if not names:
        raise typer.BadParameter(
            "give at least one class name, e.g. --vocab 'sky,tree,house'", param_hint="--vocab"
        )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise typer.BadParameter(
            f"repeated class names: {', '.join(repeated)}", param_hint="--vocab"
        )
    return names


def _load_model(p: Params, model_dir: Path) -> Any:
    """The trained USE model from ``model_dir`` (train-stage folder or model folder)."""
    from use_core.model.checkpoint import load_use_model
    from use_core.pipeline.evaluate import load_trained_model
    from use_core.pretrained.errors import ModelUnavailableError

    try:
        with console.status(f"loading the USE model from {model_dir}"):
            if (model_dir / "model.json").exists():
                model = load_use_model(model_dir, params=p)
                model.eval()
                return model
            return load_trained_model(p, model_dir)
    except FileNotFoundError:
        raise _fail(
            f"no trained model in {model_dir}: run `use train` (or `dvc repro`) first, "
            "or point --model-dir at a train folder"
        ) from None
    except (ModelUnavailableError, ValueError) as exc:
        raise _fail(f"cannot load the model of {model_dir}: {exc}", code=1) from None


def _load_sam(p: Params) -> Any:
    from use_core.pretrained.errors import ModelUnavailableError
    from use_core.pretrained.registry import load_pretrained

    try:
        with console.status("loading SAM"):
            return load_pretrained("sam", p)
    except ModelUnavailableError as exc:
        raise _fail(f"SAM is not available: {exc}", code=1) from None


@app.command("segment")
def segment_cmd(
    image: Annotated[Path, typer.Argument(help="Image to segment (PNG, JPEG...).")],
    vocab: Annotated[
        str,
        typer.Option(
            "--vocab", "-v", help="Class names, comma-separated ('sky,tree,house') or @file."
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Overlay PNG; the JSON goes next to it.")
    ] = Path("segment.png"),
    model_dir: ModelDirOpt = TRAIN_DIR,
    points_per_side: Annotated[
        int | None,
        typer.Option(min=1, max=128, help="SAM point grid side (default: eval.points_per_side)."),
    ] = None,
    masks: Annotated[
        Path | None,
        typer.Option(help="Use these masks instead of SAM: COCO RLE JSON or a PNG label map."),
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
    sets: SetOpt = None,
) -> None:
    """Open-vocabulary segmentation of one image: coloured overlay with legend + JSON.

    The JSON (same name as the PNG, .json) lists every segment with its label, score (class
    probability), bbox [x, y, w, h] and COCO RLE.
    """
    from use_core.data.images import ImageLoadError, load_rgb
    from use_core.infer.segment import segment_image

    names = parse_vocab(vocab)
    p = get_params(params, sets)
    if not image.is_file():
        raise _fail(f"image {image} does not exist")
    if masks is not None and not masks.is_file():
        raise _fail(f"masks file {masks} does not exist")
    try:
        load_rgb(image, p.data.max_image_pixels)
    except ImageLoadError as exc:
        raise _fail(str(exc)) from None
    model = _load_model(p, model_dir)
    sam = None if masks is not None else _load_sam(p)
    out_json = out.with_suffix(".json")
    console.print(f"segmenting {image} into {len(names)} classes")
    try:
        doc = segment_image(
            model,
            sam,
            image,
            names,
            out,
            out_json,
            points_per_side=points_per_side or p.eval.points_per_side,
            class_templates=p.eval.class_templates,
            logit_scale=p.train.logit_scale,
            user_masks=masks,
            max_pixels=p.data.max_image_pixels,
            show_progress=True,
            mask_nms_iou=p.nms.iou_threshold,
        )
    except ValueError as exc:  # unusable user masks, a vocabulary the model refuses
        raise _fail(str(exc)) from None
    _print_segment_summary(doc)
    console.print(f"[green]wrote[/green] {out} and {out_json} ({doc['seconds']:.1f} s)")


def _print_segment_summary(doc: dict[str, Any]) -> None:
    from rich.table import Table

    area = float(doc["height"] * doc["width"])
    by_label: dict[str, list[dict[str, Any]]] = {}
    for seg in doc["segments"]:
        by_label.setdefault(seg["label"], []).append(seg)
    table = Table(title=f"{len(doc['segments'])} segments ({doc['proposals']} proposals)")
    table.add_column("label")
    table.add_column("segments", justify="right")
    table.add_column("best score", justify="right")
    table.add_column("area %", justify="right")
    for label, segs in sorted(by_label.items(), key=lambda kv: -sum(s["area"] for s in kv[1])):
        best = max(s["score"] for s in segs)
        share = 100.0 * sum(s["area"] for s in segs) / area
        table.add_row(label, str(len(segs)), f"{best:.3f}", f"{share:.1f}")
    console.print(table)


INDEX_PATH = Path("artifacts/index/segments.parquet")


@app.command("index")
def index_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Index file (Parquet).")] = INDEX_PATH,
    images: Annotated[
        Path | None,
        typer.Option(help="Index SAM proposals of every image under this folder."),
    ] = None,
    pairs: Annotated[
        Path | None,
        typer.Option(help="Index the segments of this pairs table (Parquet) instead."),
    ] = None,
    root: Annotated[
        Path | None,
        typer.Option(help="Folder the pairs' image paths are relative to (default: data.root)."),
    ] = None,
    model_dir: ModelDirOpt = TRAIN_DIR,
    points_per_side: Annotated[
        int | None,
        typer.Option(min=1, max=128, help="SAM point grid side (default: eval.points_per_side)."),
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
    sets: SetOpt = None,
) -> None:
    """Embed the segments of a collection into a searchable index for `use query`.

    Default: the curated pairs of the current plan (after `use nms`), images under data.root.
    """
    import pandas as pd

    from use_core.infer.query import build_index_from_images, build_index_from_pairs

    if images is not None and pairs is not None:
        raise typer.BadParameter("give --images or --pairs, not both", param_hint="--images")
    p = get_params(params, sets)
    if images is not None:
        if not images.is_dir():
            raise _fail(f"image folder {images} does not exist")
        model = _load_model(p, model_dir)
        report = build_index_from_images(
            model,
            _load_sam(p),
            images,
            out,
            points_per_side=points_per_side or p.eval.points_per_side,
            max_pixels=p.data.max_image_pixels,
            show_progress=True,
            mask_nms_iou=p.nms.iou_threshold,
        )
    else:
        if pairs is not None:
            if not pairs.is_file():
                raise _fail(f"pairs table {pairs} does not exist")
            frame = pd.read_parquet(pairs)
        else:
            from use_core.data.sources import SourceError
            from use_core.pipeline.shards import read_stage

            try:
                frame = read_stage("nms", p)
            except FileNotFoundError:  # a shard of the current plan was never curated
                frame = pd.DataFrame()
            except SourceError as exc:  # the configured image sources are not there
                raise _fail(f"{exc}; pass --images DIR or --pairs FILE") from None
        if not len(frame):
            raise _fail(
                "no segments to index: run the curation stages (`dvc repro checks`) first, "
                "or pass --images DIR / --pairs FILE"
            )
        model = _load_model(p, model_dir)
        try:
            report = build_index_from_pairs(
                model,
                frame,
                root if root is not None else Path(p.data.root),
                out,
                max_pixels=p.data.max_image_pixels,
                show_progress=True,
            )
        except ValueError as exc:
            raise _fail(f"{pairs or 'pairs'}: {exc}") from None
    for rel, reason in report.skipped:
        console.print(f"[yellow]skipped[/yellow] {rel}: {reason}", highlight=False)
    skipped = f" ({len(report.skipped)} images skipped)" if report.skipped else ""
    console.print(
        f"[green]indexed[/green] {report.segments} segments of {report.images} images "
        f"into {report.path}{skipped}"
    )


@app.command("query")
def query_cmd(
    text: Annotated[str, typer.Argument(help="What to look for, e.g. 'a red roof'.")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Hits to return.")] = 20,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Contact sheet PNG; the hits JSON goes next to it.")
    ] = Path("query_hits.png"),
    index: Annotated[Path, typer.Option(help="Index built by `use index`.")] = INDEX_PATH,
    root: Annotated[
        Path | None,
        typer.Option(help="Folder the index's image paths are relative to (default: stored)."),
    ] = None,
    model_dir: ModelDirOpt = TRAIN_DIR,
    params: ParamsOpt = Path("params.yaml"),
    sets: SetOpt = None,
) -> None:
    """Rank the indexed segments by similarity to TEXT: a table, a contact sheet and a JSON."""
    from rich.table import Table

    from use_core.data.images import ImageLoadError
    from use_core.infer.query import load_index, save_hits_sheet, search

    if not text.strip():
        raise typer.BadParameter("the query text is empty", param_hint="TEXT")
    p = get_params(params, sets)
    if not index.is_file():
        raise _fail(f"no index at {index}: build one with `use index` first")
    try:
        seg_index = load_index(index, root)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    if len(seg_index) == 0:
        raise _fail(f"the index {index} holds no segment")
    model = _load_model(p, model_dir)
    try:
        hits = search(seg_index, model, text, top_k=top_k)
    except ValueError as exc:  # e.g. an index built with another model
        raise _fail(str(exc)) from None
    table = Table(title=f"top {len(hits)} segments for {text!r}")
    for name, justify in (("rank", "right"), ("image", "left"), ("segment", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    table.add_column("bbox [x, y, w, h]")
    table.add_column("score", justify="right")
    for rank, hit in enumerate(hits.itertuples(index=False), start=1):
        box = ", ".join(f"{v:.0f}" for v in hit.bbox)
        table.add_row(str(rank), hit.image, str(hit.segment_id), f"[{box}]", f"{hit.score:.4f}")
    from rich.console import Console

    Console().print(table)
    try:
        save_hits_sheet(hits, out, seg_index.root, max_pixels=p.data.max_image_pixels)
    except ImageLoadError as exc:
        raise _fail(f"{exc} (pass --root if the images moved)", code=1) from None
    out_json = out.with_suffix(".json")
    out_json.write_text(
        json.dumps({"query": text, "index": str(index), "hits": hits.to_dict("records")}, indent=1)
    )
    console.print(f"[green]wrote[/green] {out} and {out_json}")


@app.command("describe-benchmark")
def describe_benchmark_cmd(
    name: Annotated[str, typer.Argument(help="Benchmark: ade150, ade847, pc59, pc459, ...")],
    root: Annotated[Path, typer.Option(help="Its folder, or a data root holding it.")],
    label_order: Annotated[
        str | None, typer.Option(help="PC-59 class order where ambiguous: ovseg | detail.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="Count labels over the first K images.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Which layout a benchmark folder has, its classes and label counts (before any run)."""
    from use_core.eval.datasets import BenchmarkLayoutError
    from use_core.eval.datasets.describe import describe_benchmark, description_table

    try:
        doc = describe_benchmark(name, root, label_order=label_order, limit=limit)
    except (BenchmarkLayoutError, KeyError, ValueError) as exc:
        raise _fail(" ".join(str(exc).strip("'\"").split("\n")[0].split())) from None
    if as_json:
        typer.echo(json.dumps(doc))
    else:
        from rich.console import Console

        Console().print(description_table(doc))


def _import_flows() -> Any:
    """``flows.deploy`` (the Prefect flows are installed with use_core)."""
    try:
        from flows import deploy
    except ModuleNotFoundError as exc:
        if exc.name not in ("flows", "flows.deploy"):
            raise
        raise _fail("the Prefect flows (flows/) are not installed here", code=1) from None
    return deploy


@app.command("dask-worker")
def dask_worker_cmd(
    address: Annotated[str, typer.Argument(help="the scheduler, e.g. tcp://10.0.0.5:8786")],
    params: ParamsOpt = Path("params.yaml"),
    nworkers: Annotated[int, typer.Option(help="worker processes on this machine")] = 1,
    memory_limit: Annotated[str, typer.Option(help="per worker process")] = "auto",
    dry_run: Annotated[bool, typer.Option(help="print the command and environment")] = False,
) -> None:
    """Join a Dask cluster as curation workers set up like the flow's own LocalCluster workers."""
    _import_flows()
    from flows.runners import worker_command, worker_environment

    p = get_params(params, None)
    env = worker_environment(p.runtime.retain_freed_memory)
    argv = worker_command(address, nworkers, memory_limit)
    if dry_run:
        typer.echo(" ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()))
        typer.echo(" ".join(argv))
        return
    os.execvpe(argv[0], argv, {**os.environ, **env})  # noqa: S606 - the dask CLI, by design


@app.command("schedule")
def schedule_cmd(
    cron: Annotated[
        str | None,
        typer.Option(help="Cron schedule (default: runtime.schedule_cron), e.g. '0 3 * * *'."),
    ] = None,
    name: Annotated[str, typer.Option(help="Deployment name.")] = "use-pipeline",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the deployment and exit without serving.")
    ] = False,
    params: ParamsOpt = Path("params.yaml"),
    sets: SetOpt = None,
) -> None:
    """Serve the whole pipeline flow on a cron schedule (blocks; needs a Prefect API).

    Runs are triggered by the schedule or by `prefect deployment run use-pipeline/<name>`.
    """
    p = get_params(params, sets)
    deploy = _import_flows()
    extra = overrides(sets)
    try:
        deployment = deploy.pipeline_deployment(
            str(params.resolve()), cron or p.runtime.schedule_cron, name, extra or None
        )
    except ValueError as exc:  # pydantic rejects a malformed cron
        raise _fail(f"invalid schedule {cron or p.runtime.schedule_cron!r}: {exc}") from None
    typer.echo(json.dumps(deploy.describe_deployment(deployment), indent=2))
    if dry_run:
        return
    console.print(f"serving [bold]{deployment.flow_name}/{deployment.name}[/bold] (Ctrl-C stops)")
    if cron is None and not extra:
        from flows.pipeline import serve_pipeline

        serve_pipeline(str(params.resolve()), name=name)
    else:
        deploy.serve_deployment(deployment)


@app.command("serve")
def serve_cmd(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 5001,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    alias: Annotated[
        str | None, typer.Option(help="Registry alias to serve (default: register.alias).")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the command and exit.")] = False,
    params: ParamsOpt = Path("params.yaml"),
    sets: SetOpt = None,
) -> None:
    """Serve the registered model (`models:/<name>@champion`) over HTTP with MLflow.

    POST /invocations with a ``dataframe_split`` of columns image (base64), vocab, masks.
    """
    import os
    import shutil
    import subprocess
    import sys

    p = get_params(params, sets)
    uri = f"models:/{p.register.model_name}@{alias or p.register.alias}"
    mlflow_bin = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    cmd = [mlflow_bin, "models", "serve", "-m", uri, "--env-manager", "local"]
    cmd += ["-h", host, "-p", str(port)]
    env = {
        **os.environ,
        # mlflow starts `uvicorn` by name: find it next to this interpreter even when the
        # virtual environment is not activated
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "MLFLOW_TRACKING_URI": p.runtime.tracking_uri,
        "USE_MODELS_CACHE": str(Path(p.models.cache_dir).resolve()),
    }
    console.print(f"MLFLOW_TRACKING_URI={p.runtime.tracking_uri} {' '.join(cmd)}", highlight=False)
    if dry_run:
        return
    raise typer.Exit(code=subprocess.call(cmd, env=env))


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
