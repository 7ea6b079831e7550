"""A content-addressed cache of class-agnostic proposals, shared by every evaluation.

SAM grid proposals do not depend on the trained head, so they are computed once per image and
proposal setting (the DVC ``proposals`` stage) and read back by every ``evaluate`` run: changing
``train.lr`` re-evaluates without running SAM again, and ``shapes`` / ``shapes_parts`` (the same
val images) share them.

Layout: ``<dir>/<key[:2]>/<key>.npz`` holding ``masks`` (bit-packed with ``np.packbits``),
``shape`` (N, H, W), ``scores`` and ``stability``. ``key`` is the SHA-256 of the image file's
bytes and of the settings (:func:`proposal_key`), so an edited image or another SAM model never
reads a stale entry. Writes are atomic (temporary file, then ``os.replace``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from use_core.infer.proposals import Proposals, generate_proposals


def proposal_key(image_path: str | Path, settings: Mapping[str, Any]) -> str:
    """SHA-256 hex of the image file's bytes plus ``settings`` (JSON, sorted keys)."""
    digest = hashlib.sha256()
    with open(image_path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    digest.update(json.dumps(dict(settings), sort_keys=True, default=str).encode())
    return digest.hexdigest()


class ProposalStore:
    """Proposals by key under ``root`` (see the module docstring for the layout).

    ``writable=False`` makes :meth:`put` a no-op: the evaluate stage reads the ``proposals``
    stage's output (a DVC dependency) without changing it.
    """

    def __init__(self, root: str | Path, writable: bool = True) -> None:
        self.root = Path(root)
        self.writable = writable

    def path(self, key: str) -> Path:
        """File of ``key``."""
        return self.root / key[:2] / f"{key}.npz"

    def get(self, key: str) -> Proposals | None:
        """The stored proposals of ``key``, or ``None`` when absent or unreadable."""
        path = self.path(key)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                n, h, w = (int(v) for v in data["shape"])
                bits = np.unpackbits(data["masks"], count=n * h * w)
                masks = bits.reshape(n, h, w).astype(bool)
                scores = data["scores"].astype(np.float32)
                stability = data["stability"].astype(np.float32)
        except (OSError, ValueError, KeyError):
            return None  # a damaged entry is recomputed, never trusted
        points = np.full((n, 2), np.nan, dtype=np.float32)
        return Proposals(masks, scores, stability, points, source="sam", stats={"cached": 1})

    def put(self, key: str, proposals: Proposals) -> Path | None:
        """Store ``proposals`` under ``key`` atomically; returns the file (``None``: read-only)."""
        if not self.writable:
            return None
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        masks = np.asarray(proposals.masks, dtype=bool)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            np.savez_compressed(
                fh,
                masks=np.packbits(masks.reshape(-1)),
                shape=np.asarray(masks.shape, dtype=np.int64),
                scores=np.asarray(proposals.scores, dtype=np.float32),
                stability=np.asarray(proposals.stability, dtype=np.float32),
            )
        os.replace(tmp, path)
        return path

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob("*/*.npz")) if self.root.exists() else 0


class LazySam:
    """A SAM model loaded on first use: ``evaluate`` loads SAM (2.6 GB for ViT-H) only when a
    proposal is missing from the store. ``load`` returns the model; ``loaded`` says if it ran."""

    def __init__(self, load: Callable[[], Any]) -> None:
        self._load = load
        self._model: Any = None
        self.loaded = False

    def get(self) -> Any:
        """The model, loaded by the first call."""
        if not self.loaded:
            self._model = self._load()
            self.loaded = True
        return self._model


def sam_proposal_masks(
    sam: Any,
    image: np.ndarray,
    image_path: Path,
    points_per_side: int,
    nms_iou: float,
    store: ProposalStore | None = None,
    settings: Mapping[str, Any] | None = None,
    **proposal_kwargs: Any,
) -> tuple[np.ndarray, bool]:
    """SAM grid proposals of one image, read from / written to ``store`` when given.

    ``settings`` identify the SAM model and any setting not in the arguments (part of the key).
    ``sam`` is a model, a :class:`LazySam` (loaded only on a cache miss) or None (cache only).
    Returns ``(masks (N, H, W) bool, from_cache)``.
    """
    key = None
    if store is not None:
        key = proposal_key(
            image_path,
            {
                **(settings or {}),
                **proposal_kwargs,
                "points_per_side": points_per_side,
                "mask_nms_iou": nms_iou,
            },
        )
        cached = store.get(key)
        if cached is not None and cached.masks.shape[1:] == image.shape[:2]:
            return cached.masks, True
    if isinstance(sam, LazySam):
        sam = sam.get()
    if sam is None:
        raise ValueError("SAM proposals are not cached for this image and no SAM model was given")
    props = generate_proposals(sam, image, points_per_side, mask_nms_iou=nms_iou, **proposal_kwargs)
    if store is not None and key is not None:
        store.put(key, props)
    return props.masks, False
