"""The pairs store: segment-text pairs as sharded Parquet (the curation → training contract).

One row per segment kept after mask NMS. Columns (see :data:`PAIRS_SCHEMA`):

=================  =================  ========================================================
column             type               meaning
=================  =================  ========================================================
image_id           string             namespaced id, ``"{source}/{original id}"``
image_path         string             image file, relative to the data root, posix
height, width      int32              image size in pixels (displayed orientation)
segment_id         int32              index of the segment within its image (0..n-1)
rle                string             COCO compressed counts; the mask size is [height, width]
bbox               list<float64>[4]   tight box ``[x, y, w, h]`` in pixels (x right, y down)
area               int64              mask pixel count
texts              list<string>       the texts describing the segment (merged by NMS)
sources            list<string>       parallel to ``texts``: where each text came from,
                                      e.g. ``"shapes_vg/region"``, ``"captioner/expression"``
stability_score    float32            SAM stability score in [0, 1]
pred_iou           float32            SAM predicted IoU in [0, 1]
provenance         string             stage versions + params hash that produced the row
=================  =================  ========================================================

Shards are written atomically (temporary file in the same directory, fsync, ``os.replace``,
fsync of the directory), so a shard file either exists complete or not at all: an interrupted
run leaves at most a stale ``*.tmp`` file, removed when the store lock is next taken. A run
holds the store's exclusive lock (:meth:`ShardStore.lock`) so two runs never write one store.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

PAIRS_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("image_path", pa.string(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("segment_id", pa.int32(), nullable=False),
        pa.field("rle", pa.string(), nullable=False),
        pa.field("bbox", pa.list_(pa.float64()), nullable=False),
        pa.field("area", pa.int64(), nullable=False),
        pa.field("texts", pa.list_(pa.string()), nullable=False),
        pa.field("sources", pa.list_(pa.string()), nullable=False),
        pa.field("stability_score", pa.float32(), nullable=False),
        pa.field("pred_iou", pa.float32(), nullable=False),
        pa.field("provenance", pa.string(), nullable=False),
    ]
)
PAIRS_COLUMNS = tuple(PAIRS_SCHEMA.names)
_LIST_COLUMNS = ("bbox", "texts", "sources")
_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")
_TMP_MARK = ".tmp-"


class PairsSchemaError(ValueError):
    """A pairs frame that does not have the structure of :data:`PAIRS_SCHEMA`."""


class CorruptShardError(RuntimeError):
    """A shard file that exists but is not readable (the message names the file)."""


class StoreLockedError(RuntimeError):
    """The store is locked by another run (the message names the holder's pid)."""


def empty_pairs_frame() -> pd.DataFrame:
    """A pairs frame with the right columns and no rows."""
    return _from_arrow(PAIRS_SCHEMA.empty_table())


def validate_pairs_frame(df: pd.DataFrame) -> None:
    """Structural check: exact columns, types convertible to the schema, no nulls, list shapes.

    Raises :class:`PairsSchemaError` naming the column (and row) at fault. Semantic checks
    (RLE decodes, boxes inside the image, overlaps...) belong to the great-expectations gate in
    :mod:`use_core.checks.pairs_suite`.
    """
    missing = [c for c in PAIRS_COLUMNS if c not in df.columns]
    extra = [c for c in df.columns if c not in PAIRS_COLUMNS]
    if missing or extra:
        raise PairsSchemaError(f"pairs frame columns: missing {missing}, unexpected {extra}")
    for name in _LIST_COLUMNS:
        for row, value in enumerate(df[name]):
            if not isinstance(value, list | tuple | np.ndarray):
                raise PairsSchemaError(
                    f"pairs column {name!r} does not fit the schema: row {row} is "
                    f"{type(value).__name__}, not a list"
                )
    for name in PAIRS_COLUMNS:
        col = df[name]
        if col.isna().any():
            row = int(np.flatnonzero(col.isna().to_numpy())[0])
            raise PairsSchemaError(f"pairs column {name!r} has a null at row {row}")
        try:
            pa.array(col.tolist(), type=PAIRS_SCHEMA.field(name).type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as exc:
            raise PairsSchemaError(
                f"pairs column {name!r} does not fit the schema: {exc}"
            ) from None
    for row, (bbox, texts, sources) in enumerate(
        zip(df["bbox"], df["texts"], df["sources"], strict=True)
    ):
        if len(bbox) != 4:
            raise PairsSchemaError(
                f"row {row}: bbox must have 4 numbers (x, y, w, h), got {list(bbox)}"
            )
        if len(texts) != len(sources):
            raise PairsSchemaError(
                f"row {row}: texts ({len(texts)}) and sources ({len(sources)}) "
                "must be parallel lists"
            )


def pairs_to_table(df: pd.DataFrame) -> pa.Table:
    """Validate and convert a pairs frame to an Arrow table with :data:`PAIRS_SCHEMA`."""
    validate_pairs_frame(df)
    arrays = [pa.array(df[n].tolist(), type=PAIRS_SCHEMA.field(n).type) for n in PAIRS_COLUMNS]
    return pa.Table.from_arrays(arrays, schema=PAIRS_SCHEMA)


def _from_arrow(table: pa.Table) -> pd.DataFrame:
    """Arrow → pandas with list columns as Python lists (not numpy object arrays)."""
    df = table.to_pandas()
    for name in _LIST_COLUMNS:
        if name in df.columns:
            df[name] = [list(v) for v in df[name]]
    return df


def atomic_write_parquet(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` atomically: temp file in the same directory, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{_TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with tmp.open("wb") as fh:
            pq.write_table(table, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class ShardStore:
    """Per-stage directory of Parquet shards named by content key: ``root/stage/{key}.parquet``.

    Arguments:
      root: store root directory (created on demand).
      stage: stage name, a sub-directory of ``root``.
      schema: Arrow schema of the rows; :data:`PAIRS_SCHEMA` by default.
      to_table: frame → table conversion (with validation); :func:`pairs_to_table` by default.
      sort_by: columns :meth:`read_all` sorts by; ``("image_id", "segment_id")`` by default.
    """

    def __init__(
        self,
        root: Path,
        stage: str,
        schema: pa.Schema = PAIRS_SCHEMA,
        to_table: Callable[[pd.DataFrame], pa.Table] = pairs_to_table,
        sort_by: tuple[str, ...] = ("image_id", "segment_id"),
    ) -> None:
        if not _KEY_RE.match(stage):
            raise ValueError(f"stage name {stage!r} must match {_KEY_RE.pattern}")
        self.dir = Path(root) / stage
        self.stage = stage
        self.schema = schema
        self._to_table = to_table
        self._sort_by = sort_by
        self._lock_fh: IO[str] | None = None

    def _path(self, key: str) -> Path:
        if not _KEY_RE.match(key):
            raise ValueError(f"shard key {key!r} must match {_KEY_RE.pattern}")
        return self.dir / f"{key}.parquet"

    def has(self, key: str) -> bool:
        """True when the shard ``key`` was written completely."""
        return self._path(key).is_file()

    def keys(self) -> list[str]:
        """Keys of the complete shards, sorted."""
        if not self.dir.is_dir():
            return []
        return sorted(p.stem for p in self.dir.glob("*.parquet") if not p.name.startswith("."))

    def write(self, key: str, df: pd.DataFrame) -> Path:
        """Validate ``df`` and write it as shard ``key`` atomically (replacing any previous one)."""
        path = self._path(key)
        atomic_write_parquet(self._to_table(df), path)
        return path

    def _read_table(self, key: str) -> pa.Table:
        path = self._path(key)
        try:
            return pq.read_table(path, schema=self.schema)
        except FileNotFoundError:
            raise
        except (OSError, pa.ArrowException, ValueError) as exc:
            raise CorruptShardError(
                f"shard {path} cannot be read ({type(exc).__name__}: {exc}); delete it and "
                f"re-run the {self.stage!r} stage to recompute it"
            ) from exc

    def read(self, key: str) -> pd.DataFrame:
        """One shard as a frame (list columns as Python lists).

        Raises :class:`CorruptShardError` naming the file when it is not readable Parquet of
        this store's schema.
        """
        return _from_arrow(self._read_table(key))

    def read_all(self) -> pd.DataFrame:
        """All complete shards concatenated, sorted by ``sort_by``, index reset."""
        tables = [self._read_table(k) for k in self.keys()]
        table = pa.concat_tables(tables) if tables else self.schema.empty_table()
        df = _from_arrow(table)
        if len(df) and self._sort_by:
            df = df.sort_values(list(self._sort_by), kind="stable")
        return df.reset_index(drop=True)

    def stale_tmp_files(self) -> list[Path]:
        """Temporary files left by interrupted writes."""
        if not self.dir.is_dir():
            return []
        return sorted(
            p for p in self.dir.iterdir() if p.name.startswith(".") and _TMP_MARK in p.name
        )

    def remove_stale_tmp(self) -> int:
        """Delete leftover temporary files; call only while holding the lock. Returns the count."""
        stale = self.stale_tmp_files()
        for p in stale:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        return len(stale)

    @contextlib.contextmanager
    def lock(self, wait: bool = False, timeout: float | None = None) -> Iterator[ShardStore]:
        """Hold the store's exclusive lock (``fcntl.flock`` on ``.lock``) for a run.

        Arguments:
          wait: False (default) fails fast with :class:`StoreLockedError` naming the holder pid;
            True waits for the holder to finish (at most ``timeout`` seconds when given).
        On entry, stale temporary files of interrupted writes are removed.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        lock_path = self.dir / ".lock"
        fh = lock_path.open("a+")
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    if not wait or (deadline is not None and time.monotonic() >= deadline):
                        fh.seek(0)
                        holder = fh.read().strip() or "unknown"
                        waited = "" if not wait else f" after waiting {timeout} s"
                        raise StoreLockedError(
                            f"store {self.dir} is locked by another run (pid {holder}){waited}; "
                            "wait for it to finish or stop it"
                        ) from None
                    time.sleep(0.1)
            fh.seek(0)
            fh.truncate()
            fh.write(str(os.getpid()))
            fh.flush()
            self._lock_fh = fh
            self.remove_stale_tmp()
            yield self
        finally:
            if self._lock_fh is fh:
                fh.seek(0)
                fh.truncate()
                fh.flush()
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
                self._lock_fh = None
            fh.close()


def pairs_statistics(df: pd.DataFrame, pairs_before_nms: int | None = None) -> dict[str, Any]:
    """Dataset statistics in the spirit of the paper's Table 1.

    Returns a JSON-ready dict: ``images``; ``segments`` (after NMS, = rows); ``pairs`` (text-segment
    pairs before NMS when ``pairs_before_nms`` is given, else the number of texts after NMS;
    ``pairs_counted`` says which); ``texts``; ``unique_expressions`` (distinct texts after
    case-folding and whitespace collapsing); ``texts_per_segment_mean``; ``per_source`` (texts
    per source tag).
    """
    texts = [t for row in df["texts"] for t in row] if len(df) else []
    sources = [s for row in df["sources"] for s in row] if len(df) else []
    n_seg = len(df)
    return {
        "images": int(df["image_id"].nunique()) if n_seg else 0,
        "segments": n_seg,
        "pairs": int(pairs_before_nms) if pairs_before_nms is not None else len(texts),
        "pairs_counted": "before_nms" if pairs_before_nms is not None else "texts_after_nms",
        "texts": len(texts),
        "unique_expressions": len({" ".join(t.split()).casefold() for t in texts}),
        "texts_per_segment_mean": float(len(texts) / n_seg) if n_seg else 0.0,
        "per_source": dict(sorted(Counter(sources).items())),
    }
