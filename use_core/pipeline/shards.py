"""The shard runner of the curation stages (caption → ground → masks → nms).

Each shard stage reads its upstream stage's shard, writes its own shard atomically under a key
that chains the upstream key with the stage's version and the params sections it hashes
(``key_params`` in :mod:`use_core.pipeline.table`), and records what it could not use in the
quarantine table. :func:`run_stage` runs every shard of a stage (skipping finished ones, under
the stage store's lock); :func:`process_shard` runs one (what the Prefect tasks map). The
stage's own work is ``compute_shard`` of its module ``use_core.pipeline.<stage>``, imported by
name so that a stage's import closure holds only its own code. Stage stores live under
``data.root/curation/<store>`` and the final pairs under ``data.root/pairs``.
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from use_core.config import Params
from use_core.data.pairs import PAIRS_SCHEMA, ShardStore, pairs_to_table
from use_core.data.plan import Plan, Shard, build_plan, stage_key
from use_core.data.quarantine import QuarantineRecord, QuarantineWriter
from use_core.pipeline.table import SHARD_STAGES
from use_core.pipeline.table import stage as stage_spec

STAGES = SHARD_STAGES

CAPTIONS_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("image_path", pa.string()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("captions", pa.list_(pa.string())),
        ("caption_sources", pa.list_(pa.string())),
        ("region_boxes", pa.list_(pa.list_(pa.float64()))),
        ("region_phrases", pa.list_(pa.string())),
        ("region_sources", pa.list_(pa.string())),
    ]
)
BOXES_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("image_path", pa.string()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("box_xyxy", pa.list_(pa.float64())),
        ("texts", pa.list_(pa.string())),
        ("sources", pa.list_(pa.string())),
        ("score", pa.float32()),
    ]
)


MASKS_SCHEMA = PAIRS_SCHEMA.append(pa.field("prompt_box", pa.list_(pa.float64())))


def _masks_table(df: pd.DataFrame) -> pa.Table:
    """Pairs columns (validated as such) plus the prompt box (xyxy) each mask came from."""
    pairs = pairs_to_table(df[list(PAIRS_SCHEMA.names)])
    boxes = pa.array([list(map(float, b)) for b in df["prompt_box"]], pa.list_(pa.float64()))
    return pairs.append_column(MASKS_SCHEMA.field("prompt_box"), boxes)


def _table(schema: pa.Schema) -> Callable[[pd.DataFrame], pa.Table]:
    def convert(df: pd.DataFrame) -> pa.Table:
        return pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)

    return convert


def curation_root(params: Params) -> Path:
    return Path(params.data.root) / "curation"


def pairs_root(params: Params) -> Path:
    return Path(params.data.root)


def store_for(stage: str, params: Params) -> ShardStore:
    """The shard store a stage writes (``nms`` writes the pairs table)."""
    if stage == "caption":
        return ShardStore(
            curation_root(params),
            "captions",
            CAPTIONS_SCHEMA,
            _table(CAPTIONS_SCHEMA),
            ("image_id",),
        )
    if stage == "ground":
        return ShardStore(curation_root(params), "boxes", BOXES_SCHEMA, _table(BOXES_SCHEMA), ())
    if stage == "masks":
        return ShardStore(curation_root(params), "masks", MASKS_SCHEMA, _masks_table)
    if stage == "nms":
        return ShardStore(pairs_root(params), "pairs", PAIRS_SCHEMA, pairs_to_table)
    raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")


def quarantine_for(stage: str, params: Params) -> QuarantineWriter:
    return QuarantineWriter(curation_root(params) / "quarantine", stage)


def stage_params(name: str, params: Params) -> dict[str, Any]:
    """The params a shard stage's output depends on (what its key hashes)."""
    return {
        section: getattr(params, section).model_dump(mode="json")
        for section in stage_spec(name).key_params
    }


def shard_stage_key(stage: str, shard: Shard, params: Params) -> str:
    """Chain the keys: plan shard → caption → ground → masks → nms."""
    key = shard.key
    for name in STAGES:
        key = stage_key(key, name, stage_spec(name).version, stage_params(name, params))
        if name == stage:
            return key
    raise ValueError(f"unknown stage {stage!r}")


# --------------------------------------------------------------------------------------------
# What the shard functions share: models on the configured device, images, quarantine records.


def component(role: str, params: Params) -> Any:
    """The pretrained component ``role`` on ``runtime.device`` (cached per process)."""
    from use_core.pretrained.registry import load_pretrained

    return load_pretrained(role, params)  # type: ignore[arg-type]


def load_image(path: Path, params: Params) -> np.ndarray:
    from use_core.data.images import load_rgb

    return load_rgb(path, params.data.max_image_pixels)


@dataclass
class ShardOutput:
    """What ``compute_shard`` returns: the stage's frame, quarantine records, counters."""

    frame: pd.DataFrame
    quarantine: list[QuarantineRecord] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)


def why(exc: Exception) -> str:
    """The reason of an image failure without its absolute path (the record has the path)."""
    return str(getattr(exc, "reason", None) or exc)


def quarantine_record(
    stage: str, image_id: str, path: str, reason: str, detail: str, fatal: bool = True
) -> QuarantineRecord:
    """A quarantine record of ``stage`` for one image (the source is the id's prefix)."""
    return QuarantineRecord(stage, image_id.split("/")[0], image_id, path, reason, detail, fatal)


# --------------------------------------------------------------------------------------------
# Running a stage over its shards.


@dataclass
class StageReport:
    stage: str
    shards: int
    computed: int
    skipped: int
    pruned: int
    seconds: float
    counters: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def process_shard(stage: str, shard: Shard, params: Params) -> tuple[bool, dict[str, int]]:
    """Compute one shard of ``stage`` unless it is already stored. Returns (computed, counters).

    The caller holds the store's lock (or owns the shard exclusively, as Prefect tasks do).
    """
    store = store_for(stage, params)
    key = shard_stage_key(stage, shard, params)
    if store.has(key):
        return False, {}
    provenance = f"{stage}@{stage_spec(stage).version}:{key}"
    compute = importlib.import_module(stage_spec(stage).module).compute_shard
    previous = STAGES.index(stage) - 1
    if previous < 0:
        out = compute(shard, shard, params, provenance)
    else:
        upstream = STAGES[previous]
        up_store = store_for(upstream, params)
        up_key = shard_stage_key(upstream, shard, params)
        if not up_store.has(up_key):
            raise RuntimeError(
                f"stage {stage!r} needs shard {shard.index} of {upstream!r}, which is missing: "
                f"run `use {upstream}` first"
            )
        out = compute(up_store.read(up_key), shard, params, provenance)
    # quarantine first: a shard that exists always has its quarantine recorded
    quarantine_for(stage, params).write(key, out.quarantine)
    store.write(key, out.frame)
    return True, out.counters


def run_stage(
    stage: str,
    params: Params,
    plan: Plan | None = None,
    show_progress: bool = True,
    wait_for_lock: bool = False,
) -> StageReport:
    """Run every shard of ``stage`` (finished shards are skipped) and prune stale shards."""
    from tqdm.auto import tqdm

    start = time.perf_counter()
    plan = plan or build_plan(params)
    store = store_for(stage, params)
    counters: dict[str, int] = {}
    computed = skipped = 0
    with store.lock(wait=wait_for_lock):
        if stage == "caption":
            quarantine_for("sources", params).write("plan", plan.quarantine)
        bar = tqdm(plan.shards, desc=f"{stage}", unit="shard", disable=not show_progress)
        for shard in bar:
            done, c = process_shard(stage, shard, params)
            computed += int(done)
            skipped += int(not done)
            for k, v in c.items():
                counters[k] = counters.get(k, 0) + v
        pruned = prune_stage(stage, params, plan)
    return StageReport(
        stage, len(plan.shards), computed, skipped, pruned, time.perf_counter() - start, counters
    )


def prune_stage(stage: str, params: Params, plan: Plan) -> int:
    """Delete shards (and their quarantine files) that the current plan no longer produces."""
    wanted = {shard_stage_key(stage, s, params) for s in plan.shards}
    store = store_for(stage, params)
    qstore = quarantine_for(stage, params).store
    removed = 0
    for key in store.keys():
        if key not in wanted:
            (store.dir / f"{key}.parquet").unlink(missing_ok=True)
            removed += 1
    for key in qstore.keys():
        if key not in wanted:
            (qstore.dir / f"{key}.parquet").unlink(missing_ok=True)
    return removed


def read_stage(stage: str, params: Params, plan: Plan | None = None) -> pd.DataFrame:
    """The stage's output for the current plan (only the shards the plan names)."""
    plan = plan or build_plan(params)
    store = store_for(stage, params)
    frames = [store.read(shard_stage_key(stage, s, params)) for s in plan.shards]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=store.schema.names)
    return pd.concat(frames, ignore_index=True)


def write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=_json_default) + "\n")
    tmp.replace(path)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def shard_indices(plan: Plan) -> Sequence[int]:
    return [s.index for s in plan.shards]
