"""The quarantine table: every record a stage could not (fully) use, with the reason.

Stored as Parquet shards under ``root/{stage}/{shard key}.parquet``, written atomically like the
pairs store, so a re-run of a shard replaces its quarantine file instead of appending twice.
:func:`read_quarantine` concatenates all of them; :func:`summarize` counts by stage and reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from use_core.data.pairs import ShardStore
from use_core.data.sources import SourceRecord

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("stage", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("image_path", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
        pa.field("fatal", pa.bool_(), nullable=False),
    ]
)
QUARANTINE_COLUMNS = tuple(QUARANTINE_SCHEMA.names)


@dataclass(frozen=True)
class QuarantineRecord:
    """One quarantined item. ``reason`` is a short code (e.g. ``bad_box``), ``detail`` prose.

    ``fatal`` is True when the whole image was set aside, False when only a part of it (a box,
    a caption) was dropped and the image went on.
    """

    stage: str
    source: str
    image_id: str
    image_path: str
    reason: str
    detail: str
    fatal: bool = True


def quarantine_records_from(record: SourceRecord, stage: str) -> list[QuarantineRecord]:
    """One :class:`QuarantineRecord` per problem of a source record (empty when it has none)."""
    return [
        QuarantineRecord(
            stage, record.source, record.image_id, record.image_path, p.reason, p.detail, p.fatal
        )
        for p in record.problems
    ]


def _to_table(df: pd.DataFrame) -> pa.Table:
    missing = [c for c in QUARANTINE_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"quarantine frame is missing columns {missing}")
    arrays = [
        pa.array(df[c].tolist(), type=QUARANTINE_SCHEMA.field(c).type) for c in QUARANTINE_COLUMNS
    ]
    return pa.Table.from_arrays(arrays, schema=QUARANTINE_SCHEMA)


def _frame(records: Iterable[QuarantineRecord]) -> pd.DataFrame:
    rows = [asdict(r) for r in records]
    return pd.DataFrame(rows, columns=list(QUARANTINE_COLUMNS))


class QuarantineWriter:
    """Writes a stage's quarantined records, one Parquet file per shard key.

    Write a file for every shard, even an empty one, so that "shard done" and "its quarantine
    recorded" are the same fact.
    """

    def __init__(self, root: Path, stage: str) -> None:
        self.stage = stage
        self.store = ShardStore(
            Path(root),
            stage,
            schema=QUARANTINE_SCHEMA,
            to_table=_to_table,
            sort_by=("image_id", "reason", "detail"),
        )

    def write(self, key: str, records: Iterable[QuarantineRecord]) -> Path:
        """Atomically (re)write the quarantine file of shard ``key``."""
        df = _frame(records)
        wrong = sorted(set(df["stage"]) - {self.stage})
        if wrong:
            raise ValueError(f"records of stage(s) {wrong} given to the {self.stage!r} writer")
        return self.store.write(key, df)


def read_quarantine(root: Path) -> pd.DataFrame:
    """All quarantine files of all stages under ``root``, sorted by stage, image_id, reason."""
    root = Path(root)
    stages = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    frames = [QuarantineWriter(root, s).store.read_all() for s in stages]
    frames = [f for f in frames if len(f)]
    if not frames:
        return _frame([])
    df = pd.concat(frames, ignore_index=True)
    return df.sort_values(["stage", "image_id", "reason", "detail"], kind="stable").reset_index(
        drop=True
    )


def summarize(quarantine: pd.DataFrame | Iterable[QuarantineRecord]) -> dict[str, Any]:
    """Counts for a report.

    Keys: ``total`` (rows), ``images_set_aside`` (distinct image ids with a fatal problem),
    ``by_stage``, ``by_reason`` and ``by_stage_reason`` (keys ``"stage/reason"``), sorted by key.
    """
    df = quarantine if isinstance(quarantine, pd.DataFrame) else _frame(quarantine)
    fatal = df[df["fatal"].astype(bool)] if len(df) else df
    return {
        "total": len(df),
        "images_set_aside": int(fatal["image_id"].nunique()) if len(fatal) else 0,
        "by_stage": dict(sorted(Counter(df["stage"]).items())),
        "by_reason": dict(sorted(Counter(df["reason"]).items())),
        "by_stage_reason": dict(
            sorted(
                Counter(f"{s}/{r}" for s, r in zip(df["stage"], df["reason"], strict=True)).items()
            )
        ),
    }
