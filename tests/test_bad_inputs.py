"""Every bad input ends in the quarantine table or a clear error; the run goes on; nothing lost.

The corpus and its expectations live in :mod:`badinputs` (also used for the
report of issue 8); the curation stages run on it with the real demo models and MobileSAM.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from badinputs import exif_expected_mask, write_bad_inputs_corpus

from use_core.config import Params
from use_core.data.pairs import PAIRS_COLUMNS, CorruptShardError, ShardStore
from use_core.ops.rle import encode_mask
from use_core.pipeline.nms import nms_shard


@pytest.fixture(scope="module")
def report(
    tmp_path_factory: pytest.TempPathFactory,
    models_cache: Path,
    demo_models: dict,
    mobile_sam_checkpoint: Path,
) -> dict[str, Any]:
    from badinputs import run_bad_inputs

    root = tmp_path_factory.mktemp("bad") / "data"
    result = run_bad_inputs(root, models_cache)
    print(json.dumps({k: result[k] for k in ("tried", "handled", "lost")}))
    return result


@pytest.mark.slow
def test_every_bad_input_is_handled_and_none_lost(report: dict[str, Any]) -> None:
    unhandled = [(i["name"], i["how"]) for i in report["items"] if not i["handled"]]
    assert unhandled == []
    assert report["lost"] == 0 and report["handled"] == report["tried"] >= 30
    assert report["errors"] == []  # no stage crashed: the run went on
    kinds = {i["kind"] for i in report["items"]}
    assert kinds == {"image", "caption", "box", "pairs_row", "shard_file"}


@pytest.mark.slow
def test_reasons_are_specific(report: dict[str, Any]) -> None:
    how = {i["name"]: i["how"] for i in report["items"]}
    assert "decompression-bomb" in how["bomb.png"]
    assert "exceeds the decompression-bomb limit max_pixels=40000000" in how["too_large.png"]
    assert "empty file (0 bytes)" in how["zero_bytes.png"]
    assert "truncated" in how["truncated.jpg"] and "truncated" in how["truncated.png"]
    assert "leaves the images root" in how["path_traversal"]
    assert "non-finite" in how["box_nan"] and "outside the image" in how["box_outside"]
    assert how["pairs_row_bad_rle"].startswith("quarantined nms/bad_rle: segment_id")
    assert (
        "does not match" in how["pairs_row_wrong_size"]
        or "runs cover" in how["pairs_row_wrong_size"]
    )
    assert ".parquet cannot be read" in how["shard_file_truncated"]
    counts = report["quarantine"]["by_stage_reason"]
    assert counts["nms/bad_rle"] == 2 and counts["sources/bad_box"] == 5


@pytest.mark.slow
def test_awkward_but_valid_images_reach_the_pairs(report: dict[str, Any]) -> None:
    processed = {i["name"]: i["how"] for i in report["items"] if i["expect"] == "process"}
    for name in ("cmyk.jpg", "grey16.png", "palette.png", "rgba.png", "exif_rotated.jpg"):
        assert processed[name].startswith("processed: ") and not processed[name].startswith(
            "processed: 0 "
        ), name
    # the EXIF photo's box is in displayed pixels: SAM's mask lands on the rotated square
    assert report["exif_mask_iou"] is not None and report["exif_mask_iou"] >= 0.8


def test_corpus_manifest_is_complete(tmp_path: Path) -> None:
    manifest = write_bad_inputs_corpus(tmp_path)
    names = {i.name for i in manifest.items}
    for required in (
        "truncated.jpg", "corrupt.jpg", "truncated.png", "corrupt.png", "zero_bytes.png",
        "cmyk.jpg", "grey16.png", "palette.png", "rgba.png", "exif_rotated.jpg", "one_pixel.png",
        "bomb.png", "caption_empty", "caption_whitespace", "caption_french", "caption_10000_chars",
        "box_zero_width", "box_negative", "box_outside", "box_nan", "pairs_row_bad_rle",
        "pairs_row_wrong_size",
    ):  # fmt: skip
        assert required in names
    assert (tmp_path / "bad/images/zero_bytes.png").stat().st_size == 0
    long = next(i for i in manifest.items if i.name == "caption_10000_chars")
    assert long.text is not None and len(long.text) == 10_000
    assert exif_expected_mask().shape == (128, 96)


def _masks_frame(rles: list[str], h: int = 8, w: int = 10) -> pd.DataFrame:
    rows = []
    for k, rle in enumerate(rles):
        rows.append(
            {
                "image_id": "s/0", "image_path": "img/0.png", "height": h, "width": w,
                "segment_id": k, "rle": rle, "bbox": [0.0, 0.0, 1.0, 1.0], "area": 1,
                "texts": [f"thing {k}"], "sources": ["s/region"], "stability_score": 0.9 - k / 10,
                "pred_iou": 0.9, "provenance": "t", "prompt_box": [0.0, 0.0, 1.0, 1.0],
            }
        )  # fmt: skip
    return pd.DataFrame(rows)


def test_nms_quarantines_rows_whose_rle_does_not_decode() -> None:
    good = np.zeros((8, 10), bool)
    good[1:4, 1:5] = True
    other = np.zeros((8, 10), bool)
    other[5:8, 6:9] = True
    rles = [
        encode_mask(good)["counts"],
        "not-an-rle!!",
        encode_mask(np.ones((5, 5), bool))["counts"],  # a 5x5 mask in a 8x10 image
        encode_mask(other)["counts"],
    ]
    out = nms_shard(_masks_frame(rles), Params())
    assert list(out.frame["texts"]) == [["thing 0"], ["thing 3"]]
    assert list(out.frame.columns) == list(PAIRS_COLUMNS)
    assert [(q.stage, q.reason, q.fatal) for q in out.quarantine] == [("nms", "bad_rle", False)] * 2
    assert out.quarantine[0].detail.startswith("segment_id 1 (['thing 1']): malformed RLE")
    assert "runs cover 25 pixels, a 8x10 mask has 80" in out.quarantine[1].detail
    assert out.counters["bad_rle"] == 2


def test_unreadable_shard_is_a_clear_error_naming_the_file(tmp_path: Path) -> None:
    store = ShardStore(tmp_path, "pairs")
    store.dir.mkdir(parents=True)
    (store.dir / "abc.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(
        CorruptShardError, match=r"abc\.parquet cannot be read .*re-run the 'pairs'"
    ):
        store.read("abc")
    with pytest.raises(CorruptShardError):
        store.read_all()
    with pytest.raises(FileNotFoundError):
        store.read("missing")
