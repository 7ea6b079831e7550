"""COCO run-length encoding of masks: typed wrappers over ``pycocotools.mask``.

Convention of the whole project:

* in memory a mask is a ``bool`` array of shape ``(H, W)`` (row-major, ``True`` = inside);
* at rest a mask is a COCO RLE dict ``{"size": [H, W], "counts": str}`` whose ``counts`` is the
  *compressed* COCO string (column-major runs, as pycocotools writes it), decoded as utf-8.

Every function here validates its input and raises :class:`ValueError` with a readable message
for a malformed RLE instead of handing garbage to the C library: pycocotools decodes counts whose
runs fall short of ``H * W`` into uninitialised memory, and its ``iou`` can loop forever on them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

import numpy as np
from pycocotools import mask as mask_utils


class RLE(TypedDict):
    """A COCO RLE at rest: ``size`` is ``[H, W]``, ``counts`` the compressed counts string."""

    size: list[int]
    counts: str


def encode_mask(mask: np.ndarray) -> RLE:
    """Encode one mask.

    Arguments:
      mask: ``(H, W)`` array, bool (or 0/1 integers).
    Returns:
      ``{"size": [H, W], "counts": str}`` with compressed COCO counts.
    """
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"encode_mask expects an (H, W) mask, got shape {arr.shape}")
    return encode_masks(arr[None])[0]


def encode_masks(masks: np.ndarray) -> list[RLE]:
    """Encode a stack of masks of shape ``(N, H, W)`` (bool) into ``N`` RLE dicts."""
    arr = np.asarray(masks)
    if arr.ndim != 3:
        raise ValueError(f"encode_masks expects an (N, H, W) stack, got shape {arr.shape}")
    if arr.dtype != np.bool_ and not np.isin(arr, (0, 1)).all():
        raise ValueError("masks must be boolean (or contain only 0 and 1)")
    n, h, w = arr.shape
    if n == 0:
        return []
    # pycocotools wants (H, W, N) uint8 in Fortran order.
    fortran = np.asfortranarray(arr.astype(np.uint8).transpose(1, 2, 0))
    encoded = mask_utils.encode(fortran)
    return [RLE(size=[h, w], counts=rle_to_string(r["counts"])) for r in encoded]


def rle_to_string(counts: bytes | str) -> str:
    """Compressed counts as stored (utf-8 ``str``); accepts the ``bytes`` pycocotools returns."""
    return counts.decode("utf-8") if isinstance(counts, bytes) else str(counts)


def rle_from_string(counts: str, height: int, width: int) -> RLE:
    """Build an RLE dict from a stored counts string and the mask size ``(height, width)``."""
    return validate_rle({"size": [height, width], "counts": counts})


def validate_rle(rle: Mapping[str, Any], expected_hw: tuple[int, int] | None = None) -> RLE:
    """Check an RLE dict and return it normalised (``counts`` as ``str``).

    Raises :class:`ValueError` naming the problem: missing keys, a ``size`` that is not two
    non-negative integers, uncompressed (list) or non-ASCII counts, an empty counts string for a
    non-empty mask, a size different from ``expected_hw``, or runs (see :func:`run_lengths`) that
    are negative or do not add up to exactly ``H * W``.
    """
    if not isinstance(rle, Mapping) or "size" not in rle or "counts" not in rle:
        raise ValueError(f"malformed RLE: expected a mapping with 'size' and 'counts', got {rle!r}")
    size = rle["size"]
    if (
        not isinstance(size, Sequence | np.ndarray)
        or len(size) != 2
        or not all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in size)
        or min(int(v) for v in size) < 0
    ):
        raise ValueError(f"malformed RLE: 'size' must be [H, W] non-negative ints, got {size!r}")
    h, w = int(size[0]), int(size[1])
    counts = rle["counts"]
    if not isinstance(counts, str | bytes):
        raise ValueError(
            "malformed RLE: 'counts' must be a compressed COCO string, got "
            f"{type(counts).__name__} (uncompressed RLE is not stored in this project)"
        )
    try:
        text = rle_to_string(counts)
        text.encode("ascii")
    except UnicodeError:
        raise ValueError("malformed RLE: 'counts' is not an ASCII COCO string") from None
    if not text and h * w > 0:
        raise ValueError(f"malformed RLE: empty 'counts' for a {h}x{w} mask")
    if expected_hw is not None and (h, w) != tuple(expected_hw):
        raise ValueError(
            f"RLE size {[h, w]} does not match the expected image size {list(expected_hw)}"
        )
    runs = run_lengths(text)
    if any(r < 0 for r in runs):
        raise ValueError("malformed RLE counts: negative run length")
    if sum(runs) != h * w:
        raise ValueError(
            f"malformed RLE counts: runs cover {sum(runs)} pixels, a {h}x{w} mask has {h * w}"
        )
    return RLE(size=[h, w], counts=text)


def run_lengths(counts: str) -> list[int]:
    """The run lengths (column-major, starting with a run of 0s) of compressed COCO counts.

    pycocotools only checks that runs do not *exceed* ``H * W``: too short runs decode into
    uninitialised memory and can make ``iou`` loop forever, so :func:`validate_rle` checks the
    total here first. Format: each number is a little-endian sequence of 5-bit groups in chars
    offset by 48 (0x20 = more groups follow, 0x10 in the last group = negative); from the third
    number on, each stores the difference to the number two places before it.
    """
    runs: list[int] = []
    pos = 0
    n = len(counts)
    while pos < n:
        value, shift, more = 0, 0, True
        while more:
            if pos >= n:
                raise ValueError("malformed RLE counts: string ends inside a number")
            c = ord(counts[pos]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"malformed RLE counts: invalid character {counts[pos]!r}")
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            pos += 1
            shift += 5
            if not more and c & 0x10:
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def _to_coco(rle: RLE) -> dict[str, Any]:
    return {"size": list(rle["size"]), "counts": rle["counts"].encode("ascii")}


def decode_rle(rle: Mapping[str, Any], expected_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Decode one RLE into a ``bool`` mask of shape ``(H, W)``.

    Raises :class:`ValueError` if the RLE is malformed (see :func:`validate_rle`), if its runs do
    not add up to ``H * W``, or if its size differs from ``expected_hw`` (``(H, W)``).
    """
    checked = validate_rle(rle, expected_hw)
    h, w = checked["size"]
    if h * w == 0:
        return np.zeros((h, w), dtype=bool)
    decoded = mask_utils.decode(_to_coco(checked))
    return decoded.astype(bool)


def decode_rles(
    rles: Sequence[Mapping[str, Any]], expected_hw: tuple[int, int] | None = None
) -> np.ndarray:
    """Decode ``N`` RLEs of one size into a ``bool`` stack of shape ``(N, H, W)``.

    With ``N == 0`` the result has shape ``(0, H, W)`` when ``expected_hw`` is given, else
    ``(0, 0, 0)``.
    """
    if not rles:
        h, w = expected_hw if expected_hw is not None else (0, 0)
        return np.zeros((0, h, w), dtype=bool)
    first = validate_rle(rles[0], expected_hw)
    hw = (first["size"][0], first["size"][1])
    return np.stack([decode_rle(r, hw) for r in rles])


def rle_area(rle: Mapping[str, Any]) -> int:
    """Number of foreground pixels of an RLE mask."""
    checked = validate_rle(rle)
    return int(mask_utils.area(_to_coco(checked)))


def rle_bbox_xywh(rle: Mapping[str, Any]) -> list[float]:
    """Tight bounding box ``[x, y, w, h]`` in pixels (x right, y down); zeros for an empty mask."""
    checked = validate_rle(rle)
    return [float(v) for v in mask_utils.toBbox(_to_coco(checked))]


def rle_iou_matrix(rles: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Pairwise mask IoU of ``N`` RLEs of one size: ``float64`` array of shape ``(N, N)``."""
    checked = [validate_rle(r) for r in rles]
    n = len(checked)
    if n == 0:
        return np.zeros((0, 0), dtype=np.float64)
    sizes = {tuple(r["size"]) for r in checked}
    if len(sizes) != 1:
        raise ValueError(f"rle_iou_matrix needs masks of one size, got sizes {sorted(sizes)}")
    coco = [_to_coco(r) for r in checked]
    return np.asarray(mask_utils.iou(coco, coco, [0] * n), dtype=np.float64).reshape(n, n)
