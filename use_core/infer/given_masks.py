"""Proposals that are given rather than generated: a user's masks and ground-truth regions.

:func:`load_user_masks` reads masks from any segmenter (COCO RLE JSON or a PNG/TIFF label map)
as :class:`~use_core.infer.proposals.Proposals`; :func:`label_map_regions` splits a semantic
label map into connected regions, the oracle proposals of evaluation. Masks are ``(N, H, W)``
bool; ``hw`` is ``(H, W)``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from use_core.infer.proposals import Proposals, proposals_from_masks
from use_core.ops.rle import decode_rle


def load_user_masks(path: str | Path, hw: tuple[int, int], background: int | None = 0) -> Proposals:
    """Masks from any segmenter, as :class:`Proposals` (``source="user"``, scores 1.0).

    Accepted files:

    * ``.json``: a list of COCO RLE dicts (``{"size": [H, W], "counts": ...}``), or of dicts with
      such an RLE under ``"segmentation"`` (COCO results), or a COCO document with an
      ``"annotations"`` list of those. Compressed (str) and uncompressed (list) counts work.
    * an image (``.png``, ``.tif``...): a single-channel integer label map; every distinct value
      except ``background`` (``None``: no background value) is one segment.

    Every mask must be ``hw`` = ``(H, W)`` (ValueError otherwise). Empty masks are not kept; they
    are listed in ``rejected`` with their index and reason.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"user masks file not found: {path}")
    h, w = hw
    if path.suffix.lower() == ".json":
        masks = _masks_from_json(path, (h, w))
    else:
        masks = _masks_from_label_map(path, (h, w), background)
    rejected = [(i, "empty mask") for i, m in enumerate(masks) if not m.any()]
    kept = [m for m in masks if m.any()]
    stack = np.stack(kept) if kept else np.zeros((0, h, w), dtype=bool)
    return proposals_from_masks(stack, "user", rejected)


def _masks_from_json(path: Path, hw: tuple[int, int]) -> list[np.ndarray]:
    try:
        doc = json.loads(path.read_text("utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(doc, dict) and isinstance(doc.get("annotations"), list):
        doc = doc["annotations"]
    if not isinstance(doc, list):
        raise ValueError(f"{path}: expected a list of RLE dicts (or COCO annotations)")
    masks = []
    for i, item in enumerate(doc):
        rle = item.get("segmentation", item) if isinstance(item, dict) else item
        if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
            raise ValueError(f"{path}: entry {i} is not an RLE dict with 'size' and 'counts'")
        if list(rle["size"]) != [hw[0], hw[1]]:
            raise ValueError(f"{path}: entry {i} has size {rle['size']}, the image is {list(hw)}")
        try:
            if isinstance(rle["counts"], list):  # uncompressed COCO RLE
                masks.append(mask_utils.decode(mask_utils.frPyObjects(rle, *hw)).astype(bool))
            else:
                masks.append(decode_rle(rle, hw))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}: entry {i}: {exc}") from None
    return masks


def _masks_from_label_map(path: Path, hw: tuple[int, int], background: int | None) -> list:
    try:
        with Image.open(path) as im:
            labels = np.asarray(im)
    except OSError as exc:
        raise ValueError(f"{path}: not a readable label-map image ({exc})") from None
    if labels.ndim != 2 or labels.dtype.kind not in "iub":
        raise ValueError(f"{path}: expected a single-channel integer label map, got {labels.shape}")
    if labels.shape != tuple(hw):
        raise ValueError(f"{path}: label map is {labels.shape}, the image is {tuple(hw)}")
    values = [v for v in np.unique(labels).tolist() if v != background]
    return [labels == v for v in values]


def label_map_regions(
    label_map: np.ndarray, ignore_index: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Connected regions of each class of an ``(H, W)`` integer label map (8-connectivity).

    The oracle proposals of a semantic benchmark without instance masks. Pixels equal to
    ``ignore_index`` belong to no region. Returns ``(masks (N, H, W) bool, classes (N,) int64)``,
    ordered by class then by scan order.
    """
    from scipy import ndimage

    labels = np.asarray(label_map)
    if labels.ndim != 2:
        raise ValueError(f"label_map must be (H, W), got shape {labels.shape}")
    masks: list[np.ndarray] = []
    classes: list[int] = []
    for value in np.unique(labels).tolist():
        if ignore_index is not None and value == ignore_index:
            continue
        regions, n = ndimage.label(labels == value, structure=np.ones((3, 3), dtype=bool))
        for r in range(1, n + 1):
            masks.append(regions == r)
            classes.append(int(value))
    if not masks:
        return np.zeros((0, *labels.shape), dtype=bool), np.zeros(0, dtype=np.int64)
    return np.stack(masks), np.asarray(classes, dtype=np.int64)
