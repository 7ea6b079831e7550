"""Text → segment search over an indexed image collection.

An index is a Parquet file, one row per segment (:data:`INDEX_SCHEMA`)::

    image_path  string            image file, relative to the index root (posix)
    segment_id  int32             index of the segment within its image
    height      int32             image size in pixels
    width       int32
    bbox        list<float64>[4]  tight box [x, y, w, h] in pixels (x right, y down)
    rle         string            COCO compressed counts; the mask size is [height, width]
    embedding   list<float32>[E]  USE segment embedding, unit norm

The Parquet schema metadata holds ``root`` (where image paths are relative to, informative) and
``embed_dim``. Segments come either from a pairs table (the curated segments of the corpus) or
from SAM proposals over an image folder. :func:`search` ranks segments by cosine similarity
between the text embedding (the model's training templates) and the segment embeddings: exact
inner product with a FAISS ``IndexFlatIP``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from use_core.data.images import ImageLoadError, load_rgb
from use_core.infer.predict import Prediction, predict_segments
from use_core.ops.rle import decode_rle, encode_masks, rle_bbox_xywh, rle_from_string
from use_core.viz import contact_sheet

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
INDEX_SCHEMA = pa.schema(
    [
        pa.field("image_path", pa.string(), nullable=False),
        pa.field("segment_id", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("bbox", pa.list_(pa.float64()), nullable=False),
        pa.field("rle", pa.string(), nullable=False),
        pa.field("embedding", pa.list_(pa.float32()), nullable=False),
    ]
)


@dataclass
class SegmentIndex:
    """A loaded index: ``frame`` (the table without embeddings), ``embeddings`` ``(N, E)``
    float32 unit-norm, ``root`` (folder image paths are relative to)."""

    frame: pd.DataFrame
    embeddings: np.ndarray
    root: Path
    _faiss: Any = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])


@dataclass
class IndexReport:
    """What :func:`build_index_from_pairs` / :func:`build_index_from_images` wrote."""

    path: Path
    images: int
    segments: int
    skipped: list[tuple[str, str]]  # (image_path, reason) of images left out


# ------------------------------------------------------------------ building


def _rows_for_image(pred: Prediction, rel_path: str) -> list[dict[str, Any]]:
    h, w = pred.masks.shape[1:]
    rows = []
    for k, rle in enumerate(encode_masks(pred.masks)):
        rows.append(
            {
                "image_path": rel_path,
                "segment_id": k,
                "height": h,
                "width": w,
                "bbox": rle_bbox_xywh(rle),
                "rle": rle["counts"],
                "embedding": pred.embeddings[k].tolist(),
            }
        )
    return rows


def _write_index(
    rows: list[dict[str, Any]], out_path: Path, root: Path, embed_dim: int, skipped: list
) -> IndexReport:
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    arrays = [
        pa.array([r[n] for r in rows], type=INDEX_SCHEMA.field(n).type) for n in INDEX_SCHEMA.names
    ]
    meta = {"root": str(root), "embed_dim": str(embed_dim)}
    table = pa.Table.from_arrays(arrays, schema=INDEX_SCHEMA.with_metadata(meta))
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", dir=out_path.parent)
    os.close(fd)
    pq.write_table(table, tmp)
    os.replace(tmp, out_path)
    if skipped:
        sidecar = out_path.with_suffix(".skipped.json")
        sidecar.write_text(json.dumps([{"image_path": p, "reason": r} for p, r in skipped]))
    images = len({r["image_path"] for r in rows})
    return IndexReport(out_path, images, len(rows), list(skipped))


def build_index_from_pairs(
    model: Any,
    pairs: pd.DataFrame | str | Path,
    data_root: str | Path,
    out_path: str | Path,
    max_pixels: int = 40_000_000,
    show_progress: bool = False,
) -> IndexReport:
    """Index the segments of a pairs table (Parquet path or frame; ``image_path`` relative to
    ``data_root``, ``rle`` counts of a ``height × width`` mask). One encoder pass per image.

    Images that cannot be read, or whose size differs from the table's, are skipped and listed
    in the report (and in ``<out>.skipped.json``).
    """
    frame = pd.read_parquet(pairs) if isinstance(pairs, str | Path) else pairs
    for col in ("image_path", "rle", "height", "width"):
        if col not in frame.columns:
            raise ValueError(f"pairs table has no {col!r} column")
    root = Path(data_root)
    rows: list[dict[str, Any]] = []
    skipped: list[tuple[str, str]] = []
    groups = list(frame.groupby("image_path", sort=True))
    for rel, group in tqdm(groups, desc="index", unit="img", disable=not show_progress):
        try:
            image = load_rgb(root / rel, max_pixels)
        except ImageLoadError as exc:
            skipped.append((str(rel), str(exc)))
            continue
        h, w = int(group["height"].iloc[0]), int(group["width"].iloc[0])
        if image.shape[:2] != (h, w):
            skipped.append((str(rel), f"image is {image.shape[:2]}, the table says {(h, w)}"))
            continue
        masks = np.stack([decode_rle(rle_from_string(c, h, w)) for c in group["rle"]])
        rows.extend(_rows_for_image(predict_segments(model, image, masks, None, None), str(rel)))
    return _write_index(rows, Path(out_path), root, int(model.embed_dim), skipped)


def iter_images(folder: str | Path) -> Iterator[Path]:
    """Image files under ``folder`` (recursive, sorted; by suffix)."""
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            yield path


def build_index_from_images(
    model: Any,
    sam: Any,
    image_dir: str | Path,
    out_path: str | Path,
    points_per_side: int = 16,
    max_pixels: int = 40_000_000,
    show_progress: bool = False,
    **proposal_kwargs: Any,
) -> IndexReport:
    """Index SAM grid proposals (:func:`use_core.infer.proposals.generate_proposals`, extra
    keyword arguments passed on) of every image under ``image_dir``, embedded by
    :func:`use_core.infer.predict.predict_segments`.

    Unreadable images and images without proposals are listed in the report.
    """
    root = Path(image_dir)
    paths: Iterable[Path] = list(iter_images(root))
    rows: list[dict[str, Any]] = []
    skipped: list[tuple[str, str]] = []
    for path in tqdm(paths, desc="index", unit="img", disable=not show_progress):
        rel = path.relative_to(root).as_posix()
        try:
            image = load_rgb(path, max_pixels)
        except ImageLoadError as exc:
            skipped.append((rel, str(exc)))
            continue
        pred = predict_segments(
            model, image, None, sam, None, points_per_side=points_per_side, **proposal_kwargs
        )
        if len(pred) == 0:
            skipped.append((rel, "SAM gave no proposal that passed the filters"))
            continue
        rows.extend(_rows_for_image(pred, rel))
    return _write_index(rows, Path(out_path), root, int(model.embed_dim), skipped)


# ------------------------------------------------------------------ searching


def load_index(path: str | Path, root: str | Path | None = None) -> SegmentIndex:
    """Read an index file; ``root`` overrides the stored image root."""
    table = pq.read_table(path)
    missing = [n for n in INDEX_SCHEMA.names if n not in table.column_names]
    if missing:
        raise ValueError(f"{path}: not a segment index (missing columns {missing})")
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    emb_col = table.column("embedding").combine_chunks()
    n = len(emb_col)
    flat = emb_col.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    embeddings = flat.reshape(n, -1) if n else np.zeros((0, int(meta.get("embed_dim", 0))))
    frame = table.drop_columns(["embedding"]).to_pandas()
    frame["bbox"] = [list(b) for b in frame["bbox"]]
    base = Path(root) if root is not None else Path(meta.get("root", "."))
    return SegmentIndex(frame=frame, embeddings=embeddings.astype(np.float32), root=base)


def _top_k(index: SegmentIndex, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows) of the ``k`` best segments for a unit-norm ``(E,)`` query."""
    import faiss

    if index._faiss is None:
        index._faiss = faiss.IndexFlatIP(index.embeddings.shape[1])
        index._faiss.add(np.ascontiguousarray(index.embeddings))
    k = min(k, int(index.embeddings.shape[0]))
    if k <= 0:
        return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
    scores, rows = index._faiss.search(query[None].astype(np.float32), k)
    return scores[0], rows[0]


def search(
    index: SegmentIndex, model: Any, text: str, top_k: int = 10, templates: Any = None
) -> pd.DataFrame:
    """The ``top_k`` segments most similar to ``text``, best first.

    Returns a DataFrame with columns ``image`` (path relative to ``index.root``), ``segment_id``,
    ``bbox`` ([x, y, w, h] pixels), ``score`` (cosine similarity), ``rle`` (RLE dict).
    """
    if not text.strip():
        raise ValueError("the query text is empty")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if len(index) == 0:
        return pd.DataFrame(columns=["image", "segment_id", "bbox", "score", "rle"])
    query = model.encode_text([text], templates=templates)[0].detach().cpu().numpy()
    if query.shape[0] != index.embeddings.shape[1]:
        raise ValueError(
            f"the model embeds to {query.shape[0]} dims, "
            f"the index holds {index.embeddings.shape[1]}"
        )
    scores, rows = _top_k(index, query.astype(np.float32), min(top_k, len(index)))
    hits = index.frame.iloc[rows]
    return pd.DataFrame(
        {
            "image": hits["image_path"].tolist(),
            "segment_id": hits["segment_id"].astype(int).tolist(),
            "bbox": hits["bbox"].tolist(),
            "score": [float(s) for s in scores],
            "rle": [
                {"size": [int(h), int(w)], "counts": c}
                for h, w, c in zip(hits["height"], hits["width"], hits["rle"], strict=True)
            ],
        }
    )


def save_hits_sheet(
    hits: pd.DataFrame,
    path: str | Path,
    root: str | Path,
    margin: float = 0.15,
    blank_background: bool = False,
    max_pixels: int = 40_000_000,
) -> Path:
    """Contact sheet of the hits: each crop is the segment's bbox grown by ``margin`` (fraction
    of its size) on every side; with ``blank_background`` pixels outside the mask are white.
    Captions give rank, score and image name."""
    if hits.empty:
        raise ValueError("no hits to draw")
    crops, captions = [], []
    cache: dict[str, np.ndarray] = {}
    for rank, hit in enumerate(hits.itertuples(index=False), start=1):
        if hit.image not in cache:
            cache[hit.image] = load_rgb(Path(root) / hit.image, max_pixels)
        image = cache[hit.image]
        h, w = image.shape[:2]
        x, y, bw, bh = hit.bbox
        mx, my = margin * bw, margin * bh
        x0, y0 = max(0, int(np.floor(x - mx))), max(0, int(np.floor(y - my)))
        x1, y1 = min(w, int(np.ceil(x + bw + mx))), min(h, int(np.ceil(y + bh + my)))
        crop = image[y0:y1, x0:x1].copy()
        if blank_background:
            mask = decode_rle(hit.rle, (h, w))[y0:y1, x0:x1]
            crop[~mask] = 255
        crops.append(crop)
        captions.append(f"{rank}. {hit.score:.3f} {Path(hit.image).name}")
    return contact_sheet(crops, captions, path)
