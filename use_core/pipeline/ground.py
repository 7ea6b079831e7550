"""The `ground` stage (curation 2/4): referring expressions grounded with the whole caption."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from use_core.config import Params
from use_core.data.plan import Shard
from use_core.data.quarantine import QuarantineRecord
from use_core.pipeline.runner import StageIO
from use_core.pipeline.shards import (
    BOXES_SCHEMA,
    ShardOutput,
    component,
    load_image,
    quarantine_record,
    run_stage,
)


def ground_shard(captions: pd.DataFrame, params: Params, shard_index: int = 0) -> ShardOutput:
    """Referring expressions of every caption, grounded with the whole caption; regions as-is."""
    from use_core.curation.expressions import extract_expressions
    from use_core.curation.grounding import ground_captions

    root = Path(params.data.root)
    rows: list[dict[str, Any]] = []
    bad: list[QuarantineRecord] = []
    counters = {"caption_boxes": 0, "region_boxes": 0, "dropped_no_phrase": 0, "captions": 0}
    nlp = component("spacy", params)
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
                    quarantine_record(
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
        bundle = component("grounding", params)
        by_row = {i: load_image(root / captions.iloc[i].image_path, params) for i, *_ in queries}
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
                    quarantine_record(
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


def compute_shard(inp: pd.DataFrame, shard: Shard, params: Params, provenance: str) -> ShardOutput:
    """The shard runner's entry: the shard's captions → its boxes."""
    return ground_shard(inp, params, shard.index)


def run(params: Params, io: StageIO, show_progress: bool = True) -> dict[str, Any]:
    """Every shard of the stage (finished ones skipped); the report as a dict."""
    return run_stage("ground", params, show_progress=show_progress).to_dict()
