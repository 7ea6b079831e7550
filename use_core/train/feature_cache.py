"""On-disk cache of frozen backbone features for K fixed augmented views per image.

The backbones are frozen, so their outputs for a view never change: they are computed once,
stored in fp16 in sharded safetensors files, and training reads them back without running a
backbone. Views are fixed per (seed, image, view index), so the cache is deterministic.

Layout under ``root``::

    cache.json                  {"key", "format", "num_images", "views", "shard_images", ...}
    shard_00000.safetensors     images [0, shard_images) × all views

Tensor names in a shard: ``{image}/{view}/b{b}/l{i}`` (level ``i`` of backbone ``b``,
``(1, C, G, G)`` fp16, every cell already normalised over its channels — the parameter-free part
of the level's LayerNorm, see ``USEModel.frozen_features``), ``{image}/{view}/b{b}/cls``
(``(1, C)`` fp16), ``{image}/{view}/weights`` (``(K, G*G)`` float32), ``{image}/{view}/rows``
(``(K,)`` int64).

A shard file appears atomically (temporary name, then rename): an interrupted build resumes at
the first missing shard. A cache whose ``key`` (model spec, data fingerprint, augmentation
params, seed, views) or ``format`` (:data:`CACHE_FORMAT`, what the tensors mean) differs from
the requested one is deleted and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from use_core.model.features import FrozenFeatures
from use_core.model.use_model import USEModel
from use_core.train.dataset import SegmentTextDataset
from use_core.train.views import ViewFeatures, ViewMaker, compute_view_features

log = logging.getLogger(__name__)

CACHE_VERSION = 1
# What the stored level tensors are: 1 = raw backbone levels, 2 = levels normalised per cell.
# Kept out of the cache key (which also fingerprints training runs) so a format change rebuilds
# the cache without making existing run checkpoints "another run".
CACHE_FORMAT = 2
MANIFEST = "cache.json"


def cache_key(payload: dict[str, Any]) -> str:
    """Stable hash of a JSON-able description of what the cache holds."""
    text = json.dumps({"version": CACHE_VERSION, **payload}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def estimate_bytes(model: USEModel, num_images: int, views: int, num_segments: int) -> int:
    """Upper bound of the cache size: fp16 features + float32 weights of every segment."""
    cells = model.grid[0] * model.grid[1]
    channels = sum(sum(b.level_dims) for b in model.backbone_list)
    cls = sum(b.cls_dim for b in model.backbone_list)
    per_view = 2 * (channels * cells + cls)
    return views * (num_images * per_view + num_segments * (4 * cells + 8))


class FeatureCacheTooLarge(ValueError):
    """A feature cache that would exceed ``train.cache_max_gb`` or the free space of its disk."""


def check_cache_space(root: Path, estimate: int, max_bytes: int | None) -> None:
    """Refuse (:class:`FeatureCacheTooLarge`) a cache of ``estimate`` bytes at ``root`` larger
    than ``max_bytes`` or than the free space of ``root``'s disk (shards already written there
    count as space the cache has)."""
    written = sum(p.stat().st_size for p in root.glob("shard_*.safetensors"))
    free = shutil.disk_usage(root).free + written
    limit = "" if max_bytes is None else f", train.cache_max_gb {max_bytes / 1e9:.1f} GB"
    if (max_bytes is not None and estimate > max_bytes) or estimate > free:
        raise FeatureCacheTooLarge(
            f"the feature cache at {root} would take about {estimate / 1e9:.1f} GB (estimate) "
            f"and its disk has {free / 1e9:.1f} GB free{limit}: set train.feature_cache: false "
            "to recompute the frozen features every step, or raise train.cache_max_gb / point "
            "the cache at a larger disk"
        )


class FeatureCache:
    """Read access to a built cache: :meth:`get` ``(image index, view) → ViewFeatures``."""

    def __init__(
        self, root: Path, num_images: int, views: int, shard_images: int, levels: list[int]
    ) -> None:
        self.root = root
        self.num_images = num_images
        self.views = views
        self.shard_images = shard_images
        self.levels = levels  # number of levels of each backbone
        self._handles: dict[int, Any] = {}

    def shard_path(self, shard: int) -> Path:
        return self.root / f"shard_{shard:05d}.safetensors"

    def get(self, image: int, view: int) -> ViewFeatures:
        """Features of ``image``'s ``view``, as stored (fp16 features, float32 weights)."""
        if not 0 <= image < self.num_images or not 0 <= view < self.views:
            raise IndexError(f"no cached view {view} of image {image}")
        shard = image // self.shard_images
        if shard not in self._handles:
            self._handles[shard] = safe_open(str(self.shard_path(shard)), framework="pt")
        f = self._handles[shard]
        prefix = f"{image}/{view}"
        levels = [
            [f.get_tensor(f"{prefix}/b{b}/l{i}") for i in range(n)]
            for b, n in enumerate(self.levels)
        ]
        cls = [f.get_tensor(f"{prefix}/b{b}/cls") for b in range(len(self.levels))]
        return ViewFeatures(
            FrozenFeatures(levels=levels, cls=cls),
            f.get_tensor(f"{prefix}/weights"),
            f.get_tensor(f"{prefix}/rows").numpy(),
        )


def _write_shard(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _reset(root: Path) -> None:
    """Remove a stale cache's own files (never anything else in ``root``)."""
    for p in root.glob("shard_*.safetensors"):
        p.unlink()
    for p in root.glob(".shard_*"):
        p.unlink()
    (root / MANIFEST).unlink(missing_ok=True)


def build_feature_cache(
    root: str | Path,
    key: str,
    model: USEModel,
    dataset: SegmentTextDataset,
    views: int,
    make_view: ViewMaker,
    shard_images: int = 8,
    batch_views: int = 2,
    show_progress: bool = True,
    max_bytes: int | None = None,
) -> FeatureCache:
    """Open the cache at ``root`` if it holds ``key``, else (re)build it, resuming shard-wise.

    Arguments:
      key: from :func:`cache_key`; a different stored key wipes the cache.
      views: views per image; view ``v`` of image ``i`` is ``make_view(i, v)``.
      shard_images: images per shard file.
      batch_views: views per backbone forward pass (``train.cache_batch_views``). On a CPU
        this batch's activations are the train stage's memory peak.
      max_bytes: refuse to build a cache estimated larger (``train.cache_max_gb``); a cache is
        also refused when its estimate exceeds the free disk space (:func:`check_cache_space`).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    manifest_path = root / MANIFEST
    manifest: dict[str, Any] = {
        "key": key,
        "format": CACHE_FORMAT,
        "num_images": len(dataset),
        "views": views,
        "shard_images": shard_images,
        "levels": [len(b.level_dims) for b in model.backbone_list],
        "estimate_bytes": estimate_bytes(model, len(dataset), views, dataset.num_segments),
    }
    stored = json.loads(manifest_path.read_text()) if manifest_path.exists() else None
    if stored != manifest:
        if stored is not None:
            log.info("feature cache %s is stale (key, format or layout): rebuilding", root)
        _reset(root)
    cache = FeatureCache(root, len(dataset), views, shard_images, manifest["levels"])
    num_shards = -(-len(dataset) // shard_images)
    todo = [s for s in range(num_shards) if not cache.shard_path(s).exists()]
    if todo:
        check_cache_space(root, manifest["estimate_bytes"], max_bytes)
        msg = (
            f"feature cache: {len(dataset)} images x {views} views, estimated "
            f"{manifest['estimate_bytes'] / 2**20:.1f} MiB (fp16) -> {root}"
        )
        log.info(msg)
        if show_progress:
            print(msg, file=sys.stderr)
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    total = sum(min(shard_images, len(dataset) - s * shard_images) * views for s in todo)
    with tqdm(total=total, desc="feature cache", unit="view", disable=not show_progress) as bar:
        for shard in todo:
            start = shard * shard_images
            stop = min(start + shard_images, len(dataset))
            jobs = [(i, v) for i in range(start, stop) for v in range(views)]
            tensors: dict[str, torch.Tensor] = {}
            for k in range(0, len(jobs), batch_views):
                chunk = jobs[k : k + batch_views]
                items = [(i, make_view(i, v)) for i, v in chunk]
                for (i, v), feats in zip(
                    chunk, compute_view_features(model, dataset, items), strict=True
                ):
                    prefix = f"{i}/{v}"
                    for b, levels in enumerate(feats.frozen.levels):
                        for li, t in enumerate(levels):
                            tensors[f"{prefix}/b{b}/l{li}"] = t.half().contiguous()
                        tensors[f"{prefix}/b{b}/cls"] = feats.frozen.cls[b].half().contiguous()
                    tensors[f"{prefix}/weights"] = feats.weights.float().contiguous()
                    tensors[f"{prefix}/rows"] = torch.from_numpy(feats.rows.astype("int64"))
                bar.update(len(chunk))
            _write_shard(cache.shard_path(shard), tensors)
    return cache
