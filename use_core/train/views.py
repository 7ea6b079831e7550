"""Views: an (augmented) image through the frozen backbones, with its segments' pool weights.

A :class:`ViewFeatures` is everything a training step needs from one image view and nothing
that needs a backbone again: the frozen features on the common grid, the pooling weights of the
segments that survived the augmentation, and which pairs-table rows those segments are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from use_core.model.features import FrozenFeatures
from use_core.model.use_model import USEModel
from use_core.train.augment import AugmentedView, identity_view, random_scale_crop
from use_core.train.dataset import SegmentTextDataset, rng_for

ViewMaker = Callable[[int, int], AugmentedView]


@dataclass
class ViewFeatures:
    """One image view ready for the trainable part.

    Attributes:
      frozen: features of one image (batch of 1), float32 or fp16.
      weights: ``(K, G*G)`` float32 pooling weights (rows sum to 1) of the kept segments.
      rows: ``(K,)`` int64 positions of those segments in the pairs frame.
    """

    frozen: FrozenFeatures
    weights: torch.Tensor
    rows: np.ndarray


def augmented_view_maker(
    dataset: SegmentTextDataset,
    seed: int,
    crop_size: int,
    scale_min: float,
    scale_max: float,
    stream: int,
) -> ViewMaker:
    """``(image index, view key) → AugmentedView``, random but fixed by (seed, stream, image, key).

    ``stream`` separates uses (0: cached views, key = view index; 1: uncached, key = epoch).
    """

    def make(index: int, key: int) -> AugmentedView:
        image, masks = dataset.load(index)
        rng = rng_for(seed, stream, dataset.images[index].image_id, key)
        view = random_scale_crop(image, masks, rng, crop_size, scale_min, scale_max)
        return view

    return make


def identity_view_maker(dataset: SegmentTextDataset) -> ViewMaker:
    """``(image index, _) → `` the image as it is (validation)."""

    def make(index: int, _key: int) -> AugmentedView:
        return identity_view(*dataset.load(index))

    return make


def compute_view_features(
    model: USEModel,
    dataset: SegmentTextDataset,
    items: Sequence[tuple[int, AugmentedView]],
) -> list[ViewFeatures]:
    """Run the frozen backbones on views (batched when they share a size); one result per item."""
    out: list[ViewFeatures | None] = [None] * len(items)
    by_size: dict[tuple[int, ...], list[int]] = {}
    for k, (_, view) in enumerate(items):
        by_size.setdefault(tuple(view.image.shape), []).append(k)
    for ks in by_size.values():
        images = torch.stack([items[k][1].image for k in ks])
        frozen = model.frozen_features(images)
        for j, k in enumerate(ks):
            index, view = items[k]
            weights = model.segment_weights(view.masks.to(model.device)).cpu()
            rows = dataset.images[index].rows[view.kept]
            out[k] = ViewFeatures(frozen.select(j).to("cpu"), weights, rows)
    return [v for v in out if v is not None]
