"""Training data over the pairs table: images, their segments' masks, and the segments' texts.

The pairs table has one row per segment (see ``use_core.data.pairs``); training works per image
(a batch is a set of images with all their segments), so rows are grouped by ``image_id`` in
first-appearance order. Rows with no text cannot be trained on and are rejected up front with
their ids (filter them during curation).
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from use_core.data.images import load_rgb
from use_core.ops.rle import decode_rles, rle_from_string

REQUIRED_COLUMNS = ("image_id", "image_path", "height", "width", "segment_id", "rle", "texts")
DEFAULT_MAX_PIXELS = 40_000_000


@dataclass(frozen=True)
class ImageEntry:
    """One image of the table: its id, path (relative to the data root), size, and row positions."""

    image_id: str
    image_path: str
    height: int
    width: int
    rows: np.ndarray  # (S,) int64 positions into the pairs frame


class SegmentTextDataset:
    """Images of a pairs table with their segments.

    Arguments:
      pairs: the pairs frame (extra columns allowed, e.g. ``class_name`` for validation).
      data_root: folder that ``image_path`` is relative to.
      max_image_pixels: decompression-bomb limit passed to the image loader.
    """

    def __init__(
        self,
        pairs: pd.DataFrame,
        data_root: str | Path,
        max_image_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        missing = [c for c in REQUIRED_COLUMNS if c not in pairs.columns]
        if missing:
            raise ValueError(f"pairs frame lacks columns {missing}")
        if len(pairs) == 0:
            raise ValueError("pairs frame is empty: nothing to train or validate on")
        self.pairs = pairs.reset_index(drop=True)
        self.texts: list[list[str]] = [[str(t) for t in ts] for ts in self.pairs["texts"]]
        empty = [
            f"{self.pairs.at[i, 'image_id']}#{self.pairs.at[i, 'segment_id']}"
            for i, ts in enumerate(self.texts)
            if not ts
        ]
        if empty:
            raise ValueError(f"{len(empty)} segments have no text, e.g. {empty[:5]}")
        self.data_root = Path(data_root)
        self.max_image_pixels = max_image_pixels
        groups = self.pairs.groupby("image_id", sort=False).indices
        self.images: list[ImageEntry] = []
        for image_id, rows in groups.items():
            first = int(rows[0])
            self.images.append(
                ImageEntry(
                    image_id=str(image_id),
                    image_path=str(self.pairs.at[first, "image_path"]),
                    height=int(self.pairs.at[first, "height"]),
                    width=int(self.pairs.at[first, "width"]),
                    rows=np.asarray(rows, dtype=np.int64),
                )
            )

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_segments(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``index`` as ``(H, W, 3)`` uint8 RGB and its masks ``(S, H, W)`` bool.

        Mask ``k`` belongs to row ``self.images[index].rows[k]``. Raises ``ValueError`` naming
        the image when its file size differs from the table's ``height``/``width``, and the
        loader's ``ImageLoadError`` for a missing or corrupt file.
        """
        entry = self.images[index]
        image = load_rgb(self.data_root / entry.image_path, self.max_image_pixels)
        if image.shape[:2] != (entry.height, entry.width):
            raise ValueError(
                f"image {entry.image_id} ({entry.image_path}) is {image.shape[1]}x{image.shape[0]},"
                f" the pairs table says {entry.width}x{entry.height}"
            )
        rles = [
            rle_from_string(str(self.pairs.at[int(r), "rle"]), entry.height, entry.width)
            for r in entry.rows
        ]
        masks = decode_rles(rles, (entry.height, entry.width))
        return image, masks

    def fingerprint(self) -> str:
        """Content hash of what training reads: image ids, paths, sizes, masks and texts."""
        h = hashlib.sha256()
        cols = ["image_id", "image_path", "height", "width", "segment_id", "rle"]
        for values in self.pairs[cols].itertuples(index=False):
            h.update(repr(tuple(values)).encode())
        for ts in self.texts:
            h.update(repr(ts).encode())
        return h.hexdigest()[:16]


def image_seed(image_id: str) -> int:
    """A stable 32-bit number for an image id (for per-image RNG streams)."""
    return zlib.crc32(image_id.encode("utf-8"))


def rng_for(*keys: int | str) -> np.random.Generator:
    """A generator determined by ``keys`` (ints, or strings hashed with :func:`image_seed`)."""
    entropy: Sequence[int] = [k if isinstance(k, int) else image_seed(k) for k in keys]
    return np.random.default_rng(np.random.SeedSequence([abs(int(e)) for e in entropy]))
