"""Pairs store: schema, atomic shards, deterministic reads, the run lock, statistics, quarantine."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from use_core.data.pairs import (
    PAIRS_COLUMNS,
    PAIRS_SCHEMA,
    PairsSchemaError,
    ShardStore,
    StoreLockedError,
    empty_pairs_frame,
    pairs_statistics,
    validate_pairs_frame,
)
from use_core.data.quarantine import QuarantineRecord, QuarantineWriter, read_quarantine, summarize
from use_core.ops.rle import decode_rle, encode_mask, rle_area, rle_bbox_xywh

REPO = Path(__file__).resolve().parents[1]


def make_pairs(image_ids: list[str], per_image: int = 2, h: int = 24, w: int = 32) -> pd.DataFrame:
    """A valid pairs frame: per image, disjoint horizontal bands as masks."""
    rows = []
    for image_id in image_ids:
        for k in range(per_image):
            mask = np.zeros((h, w), dtype=bool)
            mask[4 * k + 1 : 4 * k + 4, 2 : 10 + k] = True
            rle = encode_mask(mask)
            rows.append(
                {
                    "image_id": image_id,
                    "image_path": f"images/{image_id.split('/')[-1]}.png",
                    "height": h,
                    "width": w,
                    "segment_id": k,
                    "rle": rle["counts"],
                    "bbox": rle_bbox_xywh(rle),
                    "area": rle_area(rle),
                    "texts": [f"band {k}", "a red band"],
                    "sources": ["shapes_vg/region", "shapes_coco/gt_caption/phrase"],
                    "stability_score": 0.9,
                    "pred_iou": 0.8,
                    "provenance": "masks@1:abc123",
                }
            )
    return pd.DataFrame(rows, columns=list(PAIRS_COLUMNS))


def test_schema_is_the_documented_contract() -> None:
    assert PAIRS_COLUMNS == (
        "image_id", "image_path", "height", "width", "segment_id", "rle", "bbox", "area",
        "texts", "sources", "stability_score", "pred_iou", "provenance",
    )  # fmt: skip
    assert str(PAIRS_SCHEMA.field("height").type) == "int32"
    assert str(PAIRS_SCHEMA.field("bbox").type) == "list<item: double>"
    assert list(empty_pairs_frame().columns) == list(PAIRS_COLUMNS)


def test_write_read_round_trip_sorted(tmp_path: Path) -> None:
    store = ShardStore(tmp_path, "pairs")
    assert not store.has("k1") and store.keys() == [] and len(store.read_all()) == 0
    later = make_pairs(["s/b", "s/c"])
    earlier = make_pairs(["s/a"])
    store.write("k1", later.iloc[::-1])  # unsorted within a shard too
    store.write("k2", earlier)
    assert store.has("k1") and store.has("k2") and store.keys() == ["k1", "k2"]
    table = pq.read_table(tmp_path / "pairs" / "k1.parquet")
    assert table.schema.equals(PAIRS_SCHEMA, check_metadata=False)
    df = store.read_all()
    assert list(zip(df["image_id"], df["segment_id"], strict=True)) == [
        ("s/a", 0), ("s/a", 1), ("s/b", 0), ("s/b", 1), ("s/c", 0), ("s/c", 1),
    ]  # fmt: skip
    assert df.index.tolist() == list(range(6))
    assert isinstance(df["texts"][0], list) and df["texts"][0] == ["band 0", "a red band"]
    assert isinstance(df["bbox"][0], list) and len(df["bbox"][0]) == 4
    mask = decode_rle({"size": [int(df["height"][0]), int(df["width"][0])], "counts": df["rle"][0]})
    assert int(mask.sum()) == int(df["area"][0])
    store.write("k1", make_pairs(["s/b"]))  # rewriting a key replaces it
    assert len(store.read_all()) == 4


def test_interrupted_write_leaves_no_shard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ShardStore(tmp_path, "pairs")
    df = make_pairs(["s/a"])

    def crash(src: object, dst: object) -> None:
        raise KeyboardInterrupt("killed between write and rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        store.write("k", df)
    monkeypatch.undo()
    assert not store.has("k") and store.keys() == []
    assert store.stale_tmp_files() == []  # the writer cleaned its own temp file

    # a hard kill cannot clean up: simulate a temp file written but never renamed
    tmp = store.dir / f".k.parquet.tmp-{os.getpid()}-deadbeef"
    tmp.write_bytes(b"PAR1 half a shard")
    assert not store.has("k") and store.keys() == [] and len(store.read_all()) == 0
    assert store.stale_tmp_files() == [tmp]
    with store.lock():
        assert not tmp.exists()  # taking the lock removes leftovers
    store.write("k", df)
    assert store.has("k")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.drop(columns=["rle"]), r"missing \['rle'\]"),
        (lambda d: d.assign(extra=1), r"unexpected \['extra'\]"),
        (lambda d: d.assign(pred_iou=[None, 0.5]), "'pred_iou' has a null at row 0"),
        (lambda d: d.assign(height=[2**40, 24]), "'height' does not fit"),
        (lambda d: d.assign(texts=["not a list", "x"]), "'texts' does not fit"),
        (lambda d: d.assign(bbox=[[1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0]]), "bbox must have 4"),
        (lambda d: d.assign(sources=[["a"], ["a", "b"]]), "parallel lists"),
    ],
)
def test_structural_validation(
    mutate: Callable[[pd.DataFrame], pd.DataFrame], message: str, tmp_path: Path
) -> None:
    bad = mutate(make_pairs(["s/a"]))
    with pytest.raises(PairsSchemaError, match=message):
        validate_pairs_frame(bad)
    with pytest.raises(PairsSchemaError):
        ShardStore(tmp_path, "pairs").write("k", bad)
    assert not ShardStore(tmp_path, "pairs").has("k")


def test_keys_and_stage_names_are_safe(tmp_path: Path) -> None:
    store = ShardStore(tmp_path, "pairs")
    with pytest.raises(ValueError, match="shard key"):
        store.write("../escape", make_pairs(["s/a"]))
    with pytest.raises(ValueError, match="stage name"):
        ShardStore(tmp_path, "../up")


_HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from use_core.data.pairs import ShardStore
    store = ShardStore(Path(sys.argv[1]), "pairs")
    with store.lock():
        print("locked", flush=True)
        sys.stdin.readline()  # hold until the parent says so
        time.sleep(float(sys.argv[2]))
    """
)


def _hold_lock(root: Path, linger: float = 0.0) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(root), str(linger)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def _release(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()


def test_lock_conflict_fails_fast_naming_the_holder(tmp_path: Path) -> None:
    proc = _hold_lock(tmp_path)
    try:
        store = ShardStore(tmp_path, "pairs")
        with pytest.raises(StoreLockedError, match=rf"locked by another run \(pid {proc.pid}\)"):
            with store.lock():
                pass
        with pytest.raises(StoreLockedError, match=r"after waiting 0.3 s"):
            with store.lock(wait=True, timeout=0.3):
                pass
    finally:
        _release(proc)
        proc.wait(timeout=30)
    with ShardStore(tmp_path, "pairs").lock():  # free again once the holder exits
        assert (tmp_path / "pairs" / ".lock").read_text() == str(os.getpid())
    assert (tmp_path / "pairs" / ".lock").read_text() == ""


def test_lock_wait_gets_it_when_the_holder_finishes(tmp_path: Path) -> None:
    proc = _hold_lock(tmp_path, linger=0.5)
    try:
        _release(proc)  # the holder keeps the lock 0.5 s more, then exits
        start = time.monotonic()
        with ShardStore(tmp_path, "pairs").lock(wait=True, timeout=20):
            waited = time.monotonic() - start
            assert proc.wait(timeout=30) == 0  # the holder released it and is done
    finally:
        proc.wait(timeout=30)
    assert waited >= 0.3


def test_pairs_statistics() -> None:
    df = make_pairs(["s/a", "s/b"])
    df.at[0, "texts"] = ["Band 0", "a  red band", "x"]
    df.at[0, "sources"] = ["shapes_vg/region", "captioner/expression", "captioner/expression"]
    stats = pairs_statistics(df)
    assert stats["images"] == 2 and stats["segments"] == 4
    assert (
        stats["texts"] == 9 and stats["pairs"] == 9 and stats["pairs_counted"] == "texts_after_nms"
    )
    assert stats["unique_expressions"] == 4  # band 0, band 1, a red band, x (case/space folded)
    assert stats["texts_per_segment_mean"] == pytest.approx(9 / 4)
    assert stats["per_source"] == {
        "captioner/expression": 2,
        "shapes_coco/gt_caption/phrase": 3,
        "shapes_vg/region": 4,
    }
    assert pairs_statistics(df, pairs_before_nms=20)["pairs"] == 20
    assert pairs_statistics(empty_pairs_frame())["segments"] == 0


def test_quarantine_writer_is_idempotent_per_shard(tmp_path: Path) -> None:
    writer = QuarantineWriter(tmp_path, "masks")
    recs = [
        QuarantineRecord("masks", "src", "src/2", "img/2.png", "bad_image", "truncated file"),
        QuarantineRecord(
            "masks", "src", "src/1", "img/1.png", "no_segments", "no mask kept", False
        ),
    ]
    writer.write("s0", recs)
    writer.write("s0", recs)  # a re-run replaces, never duplicates
    writer.write("s1", [])  # an empty shard is recorded too
    QuarantineWriter(tmp_path, "sources").write(
        "s0",
        [QuarantineRecord("sources", "src", "src/3", "img/3.png", "missing_file", "not found")],
    )
    table = read_quarantine(tmp_path)
    assert table["image_id"].tolist() == ["src/1", "src/2", "src/3"]
    assert summarize(table) == {
        "total": 3,
        "images_set_aside": 2,
        "by_stage": {"masks": 2, "sources": 1},
        "by_reason": {"bad_image": 1, "missing_file": 1, "no_segments": 1},
        "by_stage_reason": {
            "masks/bad_image": 1,
            "masks/no_segments": 1,
            "sources/missing_file": 1,
        },
    }
    with pytest.raises(ValueError, match="stage"):
        writer.write("s2", [QuarantineRecord("other", "s", "i", "p", "r", "d")])
    assert len(read_quarantine(tmp_path / "nothing")) == 0
