"""The `caption` stage (curation 1/4): ground-truth captions plus the MLLM's, per image shard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from use_core.config import Params
from use_core.data.plan import Shard
from use_core.data.quarantine import QuarantineRecord
from use_core.pipeline.runner import StageIO
from use_core.pipeline.shards import (
    CAPTIONS_SCHEMA,
    ShardOutput,
    component,
    load_image,
    quarantine_record,
    run_stage,
    why,
)


def caption_shard(shard: Shard, params: Params) -> ShardOutput:
    """Ground-truth captions plus (when enabled) the captioner's, each tagged with its source."""
    root = Path(params.data.root)
    rows: list[dict[str, Any]] = []
    bad: list[QuarantineRecord] = []
    images: list[np.ndarray] = []
    for item in shard.items:
        try:
            image = load_image(root / item.image_path, params)
        except Exception as exc:  # noqa: BLE001 - any unreadable image is quarantined
            bad.append(
                quarantine_record("caption", item.image_id, item.image_path, "bad_image", why(exc))
            )
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

        bundle = component("captioner", params)
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
                    quarantine_record(
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


def compute_shard(inp: Shard, shard: Shard, params: Params, provenance: str) -> ShardOutput:
    """The shard runner's entry: the plan shard → its captions."""
    return caption_shard(shard, params)


def run(params: Params, io: StageIO, show_progress: bool = True) -> dict[str, Any]:
    """Every shard of the stage (finished ones skipped); the report as a dict."""
    return run_stage("caption", params, show_progress=show_progress).to_dict()
