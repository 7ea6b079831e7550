"""The stage table: every stage of the pipeline as data, in ``dvc.yaml``'s order.

It is the single source the pipeline is assembled from: the ``use`` stage sub-commands and
``python -m use_core.pipeline`` (:mod:`use_core.pipeline.__main__`), the Prefect pipeline flow
(:mod:`flows.pipeline` runs every stage of :data:`STAGES` in order) and ``dvc.yaml`` itself,
which :func:`use_core.pipeline.dvcfile.render_dvc_yaml` writes from this table and the stages'
import closures (a test fails when the committed file differs).

A stage is one module ``use_core.pipeline.<name>`` with a ``run(params, io, **options)``
function. Its inputs are other stages' outputs (so the upstream stages follow from the paths),
its outputs are named paths the runner hands to ``run`` (no module repeats them as constants).
Paths may hold ``${item}``: such a stage runs once per value of the params list ``foreach``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

OutKind = Literal["out", "metric", "plot"]


@dataclass(frozen=True)
class Output:
    """One output of a stage: a folder or file, by role.

    ``kind`` is ``out`` (a DVC-tracked output), ``metric`` (a small JSON for `dvc metrics`) or
    ``plot`` (a CSV for `dvc plots`). ``persist`` keeps a resumable output across re-runs
    (stage stores key their shards by content); ``cache`` false leaves it in git's hands.
    """

    key: str
    path: str
    kind: OutKind = "out"
    persist: bool = False
    cache: bool = True


@dataclass(frozen=True)
class StageSpec:
    """A pipeline stage as data.

    ``inputs`` are paths other stages write (or prefixes of them); ``params`` the dotted
    params.yaml keys the stage reads (what DVC watches); ``key_params`` the params sections a
    shard stage's store key hashes; ``version`` is bumped when the stage's output format
    changes; ``foreach`` names a params list (one stage instance per item, paths with
    ``${item}``); ``shards`` marks a curation stage run shard by shard
    (:mod:`use_core.pipeline.shards`), ``tracked`` one that logs an MLflow run.
    """

    name: str
    summary: str
    inputs: tuple[str, ...]
    outputs: tuple[Output, ...]
    params: tuple[str, ...]
    version: str = "1"
    key_params: tuple[str, ...] = ()
    foreach: str | None = None
    comment: str = ""
    shards: bool = False
    tracked: bool = False

    @property
    def module(self) -> str:
        """The module holding the stage's ``run`` (and ``compute_shard`` for shard stages)."""
        return f"use_core.pipeline.{self.name}"

    def output(self, key: str, item: str | None = None) -> str:
        """The path of output ``key`` (``${item}`` filled in for a foreach stage)."""
        for out in self.outputs:
            if out.key == key:
                return _fill(out.path, item)
        raise KeyError(f"stage {self.name!r} has no output {key!r}")

    def input(self, key: str, item: str | None = None) -> str:
        """The input path that ends with ``key`` (e.g. ``train`` for ``artifacts/train``)."""
        for path in self.inputs:
            if path.rstrip("/").split("/")[-1] == key:
                return _fill(path, item)
        raise KeyError(f"stage {self.name!r} has no input {key!r}")


def _fill(path: str, item: str | None) -> str:
    if "${item}" in path:
        if item is None:
            raise ValueError(f"{path} needs a foreach item")
        return path.replace("${item}", item)
    return path


STAGES: tuple[StageSpec, ...] = (
    StageSpec(
        "shapes",
        "Generate the seeded shapes demo corpus (images, captions, VG regions, COCO masks).",
        inputs=(),
        outputs=(Output("corpus", "data/shapes"),),
        params=("data.shapes",),
    ),
    StageSpec(
        "caption",
        "Curation 1/4: ground-truth captions plus the MLLM's (paper prompt), per image shard.",
        inputs=("data/shapes",),
        outputs=(
            Output("store", "data/curation/captions", persist=True),
            Output("quarantine", "data/curation/quarantine/caption", persist=True),
            Output("sources_quarantine", "data/curation/quarantine/sources", persist=True),
        ),
        params=(
            "data.root",
            "data.sources",
            "data.shard_size",
            "data.max_image_pixels",
            "caption",
            "models",
            "runtime.device",
            "runtime.half_precision_on_gpu",
        ),
        key_params=("caption", "models"),
        shards=True,
    ),
    StageSpec(
        "ground",
        "Curation 2/4: referring expressions (spaCy) grounded with the whole caption; VG regions.",
        inputs=("data/curation/captions",),
        outputs=(
            Output("store", "data/curation/boxes", persist=True),
            Output("quarantine", "data/curation/quarantine/ground", persist=True),
        ),
        params=("ground", "models", "runtime.device", "runtime.half_precision_on_gpu"),
        key_params=("ground", "models"),
        shards=True,
    ),
    StageSpec(
        "masks",
        "Curation 3/4: SAM masks from the boxes (one image embedding per image, batched prompts).",
        inputs=("data/curation/boxes",),
        outputs=(
            Output("store", "data/curation/masks", persist=True),
            Output("quarantine", "data/curation/quarantine/masks", persist=True),
        ),
        params=("masks", "models", "runtime.device", "runtime.half_precision_on_gpu"),
        key_params=("masks", "models"),
        shards=True,
    ),
    StageSpec(
        "nms",
        "Curation 4/4: mask NMS merging texts → the segment-text pairs table, plus statistics.",
        inputs=("data/curation/masks",),
        outputs=(
            Output("store", "data/pairs", persist=True),
            Output("quarantine", "data/curation/quarantine/nms", persist=True),
            Output("metrics", "metrics/curation.json", kind="metric", cache=False),
        ),
        params=("nms",),
        key_params=("nms",),
        shards=True,
    ),
    StageSpec(
        "checks",
        "Data-quality gate (great-expectations) on the pairs table; fails when the gate fails.",
        inputs=("data/pairs",),
        outputs=(Output("report", "reports/checks.json", cache=False),),
        params=("checks", "nms.iou_threshold"),
    ),
    StageSpec(
        "train",
        "Train the USE head on the curated pairs (resumes an interrupted run; new params restart).",
        inputs=("data/pairs", "reports/checks.json"),
        outputs=(
            Output("model_dir", "artifacts/train", persist=True),
            Output("metrics", "metrics/train.json", kind="metric", cache=False),
            Output("epochs", "plots/train_epochs.csv", kind="metric", cache=False),
        ),
        params=(
            "train",
            "eval.class_templates",
            "models",
            "runtime.device",
            "runtime.half_precision_on_gpu",
        ),
        tracked=True,
    ),
    StageSpec(
        "proposals",
        "SAM proposals, once, for the val images of every configured benchmark (cached).",
        inputs=("data/shapes",),
        outputs=(
            Output("store", "artifacts/proposals", persist=True),
            Output("metrics", "metrics/proposals.json", kind="metric", cache=False),
        ),
        params=(
            "eval.benchmarks",
            "eval.points_per_side",
            "eval.proposals",
            "eval.max_images",
            "nms.iou_threshold",
            "models",
            "runtime.device",
            "runtime.half_precision_on_gpu",
        ),
        comment=(
            "SAM grid proposals of every benchmark's images, once: they do not depend on the "
            "trained head, so `dvc exp run -S train.lr=...` re-evaluates without running SAM "
            "again. The store is content-addressed: an entry is reused only for the same image "
            "and settings."
        ),
    ),
    StageSpec(
        "evaluate",
        "Zero-shot semantic / part segmentation of the trained model on one benchmark.",
        inputs=("artifacts/train", "artifacts/proposals"),
        outputs=(
            Output("reports", "reports/eval/${item}", cache=False),
            Output("per_class", "plots/eval_${item}_per_class.csv", cache=False),
            Output("metrics", "metrics/eval/${item}.json", kind="metric", cache=False),
        ),
        params=(
            "eval",
            "nms.iou_threshold",
            "train.logit_scale",
            "models",
            "runtime.device",
            "runtime.half_precision_on_gpu",
        ),
        foreach="eval.benchmarks",
        tracked=True,
    ),
    StageSpec(
        "register",
        "Register the trained model in MLflow; move the champion alias only if strictly better.",
        inputs=("artifacts/train", "metrics/train.json", "metrics/eval"),
        outputs=(Output("metrics", "metrics/register.json", kind="metric", cache=False),),
        params=("register",),
    ),
)

BY_NAME: dict[str, StageSpec] = {s.name: s for s in STAGES}
SHARD_STAGES: tuple[str, ...] = tuple(s.name for s in STAGES if s.shards)


def stage(name: str) -> StageSpec:
    """The spec of stage ``name``; a clear error naming the stages otherwise."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown stage {name!r}; stages: {', '.join(BY_NAME)}") from None


def _produces(spec: StageSpec, path: str) -> bool:
    outs = [o.path.split("${item}")[0].rstrip("/") for o in spec.outputs]
    return any(o == path or o.startswith(path + "/") or path.startswith(o + "/") for o in outs)


def upstream(name: str) -> tuple[str, ...]:
    """The stages whose outputs stage ``name`` reads, in table order."""
    spec = stage(name)
    return tuple(
        other.name
        for other in STAGES
        if other.name != name and any(_produces(other, p) for p in spec.inputs)
    )


def downstream(name: str) -> tuple[str, ...]:
    """Every stage that depends on ``name``, directly or not, in table order."""
    found: set[str] = set()
    frontier = {name}
    while frontier:
        frontier = {s.name for s in STAGES if set(upstream(s.name)) & frontier} - found
        found |= frontier
    return tuple(s.name for s in STAGES if s.name in found)
