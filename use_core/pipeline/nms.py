"""The `nms` stage (curation 4/4): mask NMS merging texts → the pairs table, plus statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from use_core.config import Params
from use_core.data.pairs import PAIRS_SCHEMA
from use_core.data.plan import Shard
from use_core.data.quarantine import QuarantineRecord
from use_core.pipeline.runner import StageIO
from use_core.pipeline.shards import ShardOutput, quarantine_record, run_stage


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
                    quarantine_record(
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


def compute_shard(inp: pd.DataFrame, shard: Shard, params: Params, provenance: str) -> ShardOutput:
    """The shard runner's entry: the shard's masks → its pairs."""
    return nms_shard(inp, params, provenance)


def run(params: Params, io: StageIO, show_progress: bool = True) -> dict[str, Any]:
    """Every shard, then the curation statistics (``metrics`` output: Table-1 counts...)."""
    report = run_stage("nms", params, show_progress=show_progress).to_dict()
    report["stats"] = write_statistics(params, io.output("metrics"))
    return report


def write_statistics(params: Params, path: Path | None = None) -> dict[str, Any]:
    """Pairs, per-source, quarantine and mask-quality statistics of the current plan, written
    to ``path`` (default: the stage's ``metrics`` output)."""
    from use_core.pipeline.curation_report import curation_report
    from use_core.pipeline.table import stage

    return curation_report(params, path or Path(stage("nms").output("metrics")))
