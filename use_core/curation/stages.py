"""The curation stages of Figure 2 as shard functions: caption → ground → masks → nms.

Each stage reads its upstream stage's shard, writes its own shard atomically under a key that
chains the upstream key with the stage's version and params, and records what it could not use
in the quarantine table. :func:`run_stage` runs every shard of a stage (skipping finished ones,
under the stage store's lock) — it is what `use caption|ground|masks|nms`, the DVC stages and the
Prefect tasks call. Stage stores live under ``data.root/curation/<stage>`` and the final pairs
under ``data.root/pairs``.
"""

from __future__ import annotations

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

STAGES = ("caption", "ground", "masks", "nms")
VERSIONS = {"caption": "1", "ground": "1", "masks": "1", "nms": "1"}
UPSTREAM = {"ground": "caption", "masks": "ground", "nms": "masks"}

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


def stage_params(stage: str, params: Params) -> dict[str, Any]:
    """The params a stage's output depends on (what its key hashes)."""
    models = params.models.model_dump(mode="json")
    if stage == "caption":
        return {"caption": params.caption.model_dump(mode="json"), "models": models}
    if stage == "ground":
        return {"ground": params.ground.model_dump(mode="json"), "models": models}
    if stage == "masks":
        return {"masks": params.masks.model_dump(mode="json"), "models": models}
    if stage == "nms":
        return {"nms": params.nms.model_dump(mode="json")}
    raise ValueError(f"unknown stage {stage!r}")


def shard_stage_key(stage: str, shard: Shard, params: Params) -> str:
    """Chain the keys: plan shard → caption → ground → masks → nms."""
    key = shard.key
    for name in STAGES:
        key = stage_key(key, name, VERSIONS[name], stage_params(name, params))
        if name == stage:
            return key
    raise ValueError(f"unknown stage {stage!r}")


def _load_image(path: Path, params: Params) -> np.ndarray:
    from use_core.data.images import load_rgb

    return load_rgb(path, params.data.max_image_pixels)


# --------------------------------------------------------------------------------------------
# Shard functions: upstream frame (or plan shard) → this stage's frame + quarantine records.


@dataclass
class ShardOutput:
    frame: pd.DataFrame
    quarantine: list[QuarantineRecord] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)


def caption_shard(shard: Shard, params: Params) -> ShardOutput:
    """Ground-truth captions plus (when enabled) the captioner's, each tagged with its source."""
    root = Path(params.data.root)
    rows: list[dict[str, Any]] = []
    bad: list[QuarantineRecord] = []
    images: list[np.ndarray] = []
    for item in shard.items:
        try:
            image = _load_image(root / item.image_path, params)
        except Exception as exc:  # noqa: BLE001 - any unreadable image is quarantined
            bad.append(_q("caption", item.image_id, item.image_path, "bad_image", _why(exc)))
            continue
        images.append(image)
        rows.append(
            {
                "image_id": item.image_id,
                "image_path": item.image_path,
                "height": int(image.shape[0]),
                "width": int(image.shape[1]),
                "captions": [c for c, _ in item.captions],
                "caption_sources": [s for _, s in item.captions],
                "region_boxes": [list(map(float, b)) for b, _, _ in item.regions],
                "region_phrases": [p for _, p, _ in item.regions],
                "region_sources": [s for _, _, s in item.regions],
            }
        )
    generated = 0
    if params.caption.enabled and images:
        from use_core.curation.captioning import caption_images
        from use_core.pretrained.registry import load_pretrained

        bundle = load_pretrained("captioner", params)
        texts = caption_images(
            images,
            bundle.model,
            bundle.processor,
            params.caption.prompt,
            temperature=params.caption.temperature,
            top_p=params.caption.top_p,
            top_k=params.caption.top_k,
            max_new_tokens=params.caption.max_new_tokens,
            batch_size=params.caption.batch_size,
            seed=params.runtime.seed + shard.index,
        )
        for row, text in zip(rows, texts, strict=True):
            if text.strip():
                row["captions"].append(text.strip())
                row["caption_sources"].append("captioner")
                generated += 1
            else:
                bad.append(
                    _q(
                        "caption",
                        row["image_id"],
                        row["image_path"],
                        "empty_caption",
                        "the captioner returned an empty caption",
                        fatal=False,
                    )
                )
    frame = pd.DataFrame(rows, columns=CAPTIONS_SCHEMA.names)
    return ShardOutput(frame, bad, {"images": len(rows), "generated_captions": generated})


def ground_shard(captions: pd.DataFrame, params: Params, shard_index: int = 0) -> ShardOutput:
    """Referring expressions of every caption, grounded with the whole caption; regions as-is."""
    from use_core.curation.expressions import extract_expressions
    from use_core.curation.grounding import ground_captions

    root = Path(params.data.root)
    rows: list[dict[str, Any]] = []
    bad: list[QuarantineRecord] = []
    counters = {"caption_boxes": 0, "region_boxes": 0, "dropped_no_phrase": 0, "captions": 0}
    from use_core.pretrained.registry import load_pretrained

    nlp = load_pretrained("spacy", params)
    queries: list[tuple[int, str, str, list[Any]]] = []  # (row index, caption, source, exprs)
    for i, row in enumerate(captions.itertuples(index=False)):
        base = {
            "image_id": row.image_id,
            "image_path": row.image_path,
            "height": row.height,
            "width": row.width,
        }
        for box, phrase, source in zip(
            row.region_boxes, row.region_phrases, row.region_sources, strict=True
        ):
            x, y, w, h = box
            rows.append(
                {
                    **base,
                    "box_xyxy": [x, y, x + w, y + h],
                    "texts": [phrase],
                    "sources": [source],
                    "score": 1.0,
                }
            )
            counters["region_boxes"] += 1
        for caption, source in zip(row.captions, row.caption_sources, strict=True):
            exprs = extract_expressions(caption, nlp)
            if not exprs:
                bad.append(
                    _q(
                        "ground",
                        row.image_id,
                        row.image_path,
                        "no_expressions",
                        f"no noun phrase in caption ({source}): {caption[:80]!r}",
                        fatal=False,
                    )
                )
                continue
            queries.append((i, caption, source, exprs))
    if queries:
        bundle = load_pretrained("grounding", params)
        by_row = {i: _load_image(root / captions.iloc[i].image_path, params) for i, *_ in queries}
        results = ground_captions(
            [by_row[i] for i, *_ in queries],
            [c for _, c, _, _ in queries],
            [e for *_, e in queries],
            bundle.model,
            bundle.processor,
            box_threshold=params.ground.box_threshold,
            nms_threshold=params.ground.nms_threshold,
            max_text_tokens=params.ground.max_text_tokens,
            batch_size=params.ground.batch_size,
        )
        for (i, _caption, source, _), result in zip(queries, results, strict=True):
            row = captions.iloc[i]
            counters["captions"] += 1
            counters["dropped_no_phrase"] += result.dropped_no_phrase
            if result.error:
                bad.append(
                    _q(
                        "ground",
                        row.image_id,
                        row.image_path,
                        "caption_not_grounded",
                        f"{source}: {result.error}",
                        fatal=False,
                    )
                )
            kept = sorted(result.boxes, key=lambda b: -b.score)[: params.ground.max_boxes]
            for gb in kept:
                texts, sources = [gb.phrase], [f"{source}/phrase"]
                if gb.expression != gb.phrase:
                    texts.append(gb.expression)
                    sources.append(f"{source}/expression")
                rows.append(
                    {
                        "image_id": row.image_id,
                        "image_path": row.image_path,
                        "height": int(row.height),
                        "width": int(row.width),
                        "box_xyxy": [float(v) for v in gb.box_xyxy],
                        "texts": texts,
                        "sources": sources,
                        "score": float(gb.score),
                    }
                )
                counters["caption_boxes"] += 1
    frame = pd.DataFrame(rows, columns=BOXES_SCHEMA.names)
    return ShardOutput(frame, bad, counters)


def masks_shard(boxes: pd.DataFrame, params: Params, provenance: str = "") -> ShardOutput:
    """SAM masks for every box of an image through ONE image embedding (batched prompts)."""
    from use_core.ops.rle import encode_mask
    from use_core.sam.masks import masks_from_boxes

    root = Path(params.data.root)
    cfg = params.masks
    rows: list[dict[str, Any]] = []
    bad: list[QuarantineRecord] = []
    counters = {"boxes": len(boxes), "masks": 0, "rejected": 0, "whole_image": 0}
    sam = None
    for image_id, group in boxes.groupby("image_id", sort=True):
        first = group.iloc[0]
        try:
            image = _load_image(root / first.image_path, params)
        except Exception as exc:  # noqa: BLE001
            bad.append(_q("masks", str(image_id), first.image_path, "bad_image", _why(exc)))
            continue
        h, w = image.shape[:2]
        if (h, w) != (first.height, first.width):
            bad.append(
                _q(
                    "masks",
                    str(image_id),
                    first.image_path,
                    "size_changed",
                    f"image is {w}x{h}, the caption stage saw {first.width}x{first.height}",
                )
            )
            continue
        box_array = np.array([list(b) for b in group["box_xyxy"]], dtype=np.float64).reshape(-1, 4)
        needs_sam = _needs_sam(box_array, h, w, cfg.whole_image_ratio)
        if needs_sam and sam is None:
            from use_core.pretrained.registry import load_pretrained

            sam = load_pretrained("sam", params)
        result = masks_from_boxes(
            sam if needs_sam else None,
            image,
            box_array,
            pred_iou_threshold=cfg.pred_iou_threshold,
            stability_threshold=cfg.stability_threshold,
            whole_image_ratio=cfg.whole_image_ratio,
            min_region_area=cfg.min_region_area,
            box_chunk=cfg.box_chunk,
        )
        for box_idx, reason in result.rejected:
            src = group.iloc[box_idx]
            bad.append(
                _q(
                    "masks",
                    str(image_id),
                    first.image_path,
                    _reason_code(reason),
                    f"box {list(np.round(box_array[box_idx], 1))} ({src.texts[0]!r}): {reason}",
                    fatal=False,
                )
            )
        counters["rejected"] += len(result.rejected)
        counters["whole_image"] += int(result.whole_image.sum())
        for k in range(len(result.box_index)):  # segment_id = k: masks in input-box order
            src = group.iloc[int(result.box_index[k])]
            mask = result.masks[k]
            rle = encode_mask(mask)
            ys, xs = np.nonzero(mask)
            rows.append(
                {
                    "image_id": str(image_id),
                    "image_path": first.image_path,
                    "height": h,
                    "width": w,
                    "segment_id": k,
                    "rle": rle["counts"],
                    "bbox": [
                        float(xs.min()),
                        float(ys.min()),
                        float(xs.max() - xs.min() + 1),
                        float(ys.max() - ys.min() + 1),
                    ],
                    "area": int(mask.sum()),
                    "texts": list(src.texts),
                    "sources": list(src.sources),
                    "stability_score": float(result.stability[k]),
                    # SAM's IoU head is a regression and can exceed 1 slightly
                    "pred_iou": float(np.clip(result.pred_iou[k], 0.0, 1.0)),
                    "provenance": provenance,
                    "prompt_box": [float(v) for v in box_array[int(result.box_index[k])]],
                }
            )
        counters["masks"] += len(result.box_index)
    frame = pd.DataFrame(rows, columns=MASKS_SCHEMA.names)
    return ShardOutput(frame, bad, counters)


_REASON_CODES = (
    ("non-finite", "bad_box"),
    ("degenerate", "bad_box"),
    ("outside", "bad_box"),
    ("predicted IoU", "low_pred_iou"),
    ("stability", "low_stability"),
    ("empty mask", "empty_mask"),
)


def _reason_code(reason: str) -> str:
    """A short quarantine code for a masks-stage rejection (the prose goes to ``detail``)."""
    return next((code for key, code in _REASON_CODES if key in reason), "rejected")


def _needs_sam(boxes: np.ndarray, h: int, w: int, ratio: float) -> bool:
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    return bool(np.any(~np.isfinite(area) | (area <= ratio * h * w)))


def nms_shard(masks: pd.DataFrame, params: Params, provenance: str = "") -> ShardOutput:
    """Mask NMS per image (greedy by stability score), merging every text into the kept mask."""
    from use_core.ops.nms import mask_nms, merge_texts
    from use_core.ops.rle import decode_rles, rle_from_string

    rows: list[dict[str, Any]] = []
    bad: list[QuarantineRecord] = []
    for image_id, group in masks.groupby("image_id", sort=True):
        group = group.sort_values("segment_id", kind="stable")
        h, w = int(group.iloc[0].height), int(group.iloc[0].width)
        rles, keep = [], []
        for pos, (seg, counts, texts) in enumerate(
            zip(group["segment_id"], group["rle"], group["texts"], strict=True)
        ):
            try:  # a row whose mask does not decode to the image size is set aside, not fatal
                rles.append(rle_from_string(counts, h, w))
                keep.append(pos)
            except ValueError as exc:
                bad.append(
                    _q(
                        "nms",
                        str(image_id),
                        group.iloc[0].image_path,
                        "bad_rle",
                        f"segment_id {int(seg)} ({list(texts)[:1]!r}): {exc}",
                        fatal=False,
                    )
                )
        if not keep:
            continue
        group = group.iloc[keep]
        arr = decode_rles(rles, (h, w))
        scores = group["stability_score"].to_numpy(dtype=np.float64)
        groups = mask_nms(arr, scores, params.nms.iou_threshold)
        merged = merge_texts(groups, list(group["texts"]), list(group["sources"]))
        for new_id, (members, (texts, sources)) in enumerate(zip(groups, merged, strict=True)):
            kept = group.iloc[members[0]]
            rows.append(
                {
                    **{c: kept[c] for c in ("image_id", "image_path", "height", "width", "rle")},
                    "segment_id": new_id,
                    "bbox": list(kept.bbox),
                    "area": int(kept.area),
                    "texts": texts,
                    "sources": sources,
                    "stability_score": float(kept.stability_score),
                    "pred_iou": float(kept.pred_iou),
                    "provenance": provenance,
                }
            )
    frame = pd.DataFrame(rows, columns=PAIRS_SCHEMA.names)
    pairs_before = int(sum(len(t) for t in masks["texts"])) if len(masks) else 0
    return ShardOutput(
        frame,
        bad,
        {"pairs_before_nms": pairs_before, "segments_before_nms": len(masks), "bad_rle": len(bad)},
    )


def _why(exc: Exception) -> str:
    """The reason of an image failure without its absolute path (the record has the path)."""
    return str(getattr(exc, "reason", None) or exc)


def _q(
    stage: str, image_id: str, path: str, reason: str, detail: str, fatal: bool = True
) -> QuarantineRecord:
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
    provenance = f"{stage}@{VERSIONS[stage]}:{key}"
    if stage == "caption":
        out = caption_shard(shard, params)
    else:
        upstream = UPSTREAM[stage]
        up_store = store_for(upstream, params)
        up_key = shard_stage_key(upstream, shard, params)
        if not up_store.has(up_key):
            raise RuntimeError(
                f"stage {stage!r} needs shard {shard.index} of {upstream!r}, which is missing: "
                f"run `use {upstream}` first"
            )
        frame = up_store.read(up_key)
        if stage == "ground":
            out = ground_shard(frame, params, shard.index)
        elif stage == "masks":
            out = masks_shard(frame, params, provenance)
        else:
            out = nms_shard(frame, params, provenance)
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
