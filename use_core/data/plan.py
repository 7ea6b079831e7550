"""The curation plan: every source's records merged per image and cut into keyed shards.

Several sources may describe the same image (COCO captions and Visual Genome regions of one
photo): the paper consolidates them into one collection of segments per image, so records are
merged by ``image_path`` here, before any stage runs. Each shard's key hashes its images (ids,
paths, sizes, texts, boxes); stage keys chain from it (see :func:`stage_key`), so a changed input
or param recomputes exactly the shards and stages that depend on it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from use_core.config import Params
from use_core.data.quarantine import QuarantineRecord, quarantine_records_from
from use_core.data.sources import iter_source, shard_key, shard_records


@dataclass
class ImageItem:
    """One image with every ground-truth text the sources give for it.

    ``captions``: ``(text, source tag)``; ``regions``: ``(box_xywh, phrase, source tag)`` with
    ``box_xywh`` in pixels of the displayed (EXIF-rotated) image.
    """

    image_id: str
    image_path: str
    height: int
    width: int
    captions: list[tuple[str, str]] = field(default_factory=list)
    regions: list[tuple[tuple[float, float, float, float], str, str]] = field(default_factory=list)


@dataclass
class Shard:
    """A fixed group of images: the unit of resume and of parallel work."""

    index: int
    key: str
    items: list[ImageItem]


@dataclass
class Plan:
    shards: list[Shard]
    quarantine: list[QuarantineRecord]

    @property
    def images(self) -> int:
        return sum(len(s.items) for s in self.shards)


def build_plan(params: Params) -> Plan:
    """Read every configured source, quarantine unusable records, merge per image, shard."""
    root = Path(params.data.root)
    merged: dict[str, ImageItem] = {}
    quarantine: list[QuarantineRecord] = []
    records = []
    for src in params.data.sources:
        for rec in iter_source(src, root, max_pixels=params.data.max_image_pixels):
            quarantine.extend(quarantine_records_from(rec, "sources"))
            if not rec.usable or rec.height is None or rec.width is None:
                continue
            records.append(rec)
            item = merged.get(rec.image_path)
            if item is None:
                item = merged[rec.image_path] = ImageItem(
                    rec.image_path, rec.image_path, rec.height, rec.width
                )
            item.captions.extend((c, f"{rec.source}/gt_caption") for c in rec.captions)
            item.regions.extend(
                (tuple(r.box_xywh), r.phrase, f"{rec.source}/region")  # type: ignore[misc]
                for r in rec.regions
            )
    by_path = {r.image_path: r for r in records}
    shards = []
    for i, group in enumerate(shard_records(list(by_path.values()), params.data.shard_size)):
        items = [merged[r.image_path] for r in group]
        # the key covers every source's texts of these images, not only the first record's
        payload = {"items": [_item_payload(it) for it in items]}
        key = shard_key(group, payload, "plan-1")
        shards.append(Shard(i, key, items))
    return Plan(shards, quarantine)


def _item_payload(item: ImageItem) -> dict[str, Any]:
    return {"captions": item.captions, "regions": [list(r) for r in item.regions]}


def stage_key(upstream_key: str, stage: str, version: str, stage_params: Any) -> str:
    """Key of a stage's shard: hash of the upstream shard key, the stage version and params."""
    blob = json.dumps(
        {"up": upstream_key, "stage": stage, "version": version, "params": stage_params},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]
