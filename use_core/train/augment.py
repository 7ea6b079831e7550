"""Training augmentation (§4.2): random rescale by a factor in [0.5, 2], random square crop.

Image and masks move together. The crop is ``crop_size × crop_size``; an image smaller than the
crop after rescaling is placed at the top-left and zero-padded bottom/right (like SAM's padding).
Segments are never distorted: a segment keeping less than ``min_keep`` of its (rescaled) area
inside the crop, or nothing at all, is dropped and reported in ``kept``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_MIN_KEEP = 0.5


@dataclass
class AugmentedView:
    """One augmented view.

    Attributes:
      image: ``(3, crop, crop)`` float32 RGB in [0, 1] (CHW).
      masks: ``(K, crop, crop)`` bool, the kept segments only.
      kept: ``(K,)`` int64 indices of the kept segments in the input mask stack.
      scale: the rescale factor; ``offset``: ``(y, x)`` of the crop in the rescaled image.
    """

    image: torch.Tensor
    masks: torch.Tensor
    kept: np.ndarray
    scale: float
    offset: tuple[int, int]


def identity_view(image: np.ndarray, masks: np.ndarray) -> AugmentedView:
    """The un-augmented view (validation): ``(H, W, 3)`` uint8 + ``(S, H, W)`` bool as given."""
    img = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255.0
    non_empty = np.flatnonzero(masks.reshape(len(masks), -1).any(axis=1))
    return AugmentedView(img, torch.from_numpy(masks[non_empty]), non_empty, 1.0, (0, 0))


def random_scale_crop(
    image: np.ndarray,
    masks: np.ndarray,
    rng: np.random.Generator,
    crop_size: int,
    scale_min: float = 0.5,
    scale_max: float = 2.0,
    min_keep: float = DEFAULT_MIN_KEEP,
) -> AugmentedView:
    """Rescale by ``U(scale_min, scale_max)`` and take a random ``crop_size`` square.

    Arguments:
      image: ``(H, W, 3)`` uint8 RGB (HWC).
      masks: ``(S, H, W)`` bool, in the image's coordinates.
      rng: the generator that decides scale and offset (seed it per image and view).
      crop_size: output side in pixels.
      min_keep: fraction of a segment's rescaled area that must stay inside the crop.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if masks.ndim != 3 or masks.shape[1:] != image.shape[:2]:
        raise ValueError(f"masks must be (S, H, W) matching the image, got {masks.shape}")
    h, w = image.shape[:2]
    scale = float(rng.uniform(scale_min, scale_max))
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    oy = int(rng.integers(0, nh - crop_size + 1)) if nh > crop_size else 0
    ox = int(rng.integers(0, nw - crop_size + 1)) if nw > crop_size else 0

    img = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255.0
    img = F.interpolate(img, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    img = img[0, :, oy : oy + crop_size, ox : ox + crop_size].clamp(0.0, 1.0)
    m = torch.from_numpy(np.array(masks, dtype=np.uint8))[None]
    m = F.interpolate(m, size=(nh, nw), mode="nearest-exact")[0].bool()
    full_area = m.flatten(1).sum(dim=1)
    m = m[:, oy : oy + crop_size, ox : ox + crop_size]
    crop_area = m.flatten(1).sum(dim=1)
    keep = (crop_area > 0) & (crop_area >= min_keep * full_area)
    kept = keep.nonzero(as_tuple=True)[0]

    ch, cw = img.shape[-2:]
    pad = (0, crop_size - cw, 0, crop_size - ch)
    img = F.pad(img, pad)
    out_masks = F.pad(m[kept], pad)
    return AugmentedView(img, out_masks, kept.numpy().astype(np.int64), scale, (oy, ox))
