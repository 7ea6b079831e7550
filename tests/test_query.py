"""Segment index and text search: constructed embeddings, then end to end with a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from use_core.infer.embed import embed_masks
from use_core.infer.query import (
    INDEX_SCHEMA,
    _write_index,
    build_index_from_pairs,
    load_index,
    save_hits_sheet,
    search,
)
from use_core.model import USEModel, USEModelConfig, create_use_model
from use_core.ops.rle import decode_rle, encode_mask


@pytest.fixture(scope="module")
def model() -> USEModel:
    import open_clip

    torch.manual_seed(0)
    clip = open_clip.CLIP(
        embed_dim=32,
        vision_cfg={"image_size": 64, "layers": 2, "width": 32, "head_width": 16, "patch_size": 16},
        text_cfg={"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    )
    return create_use_model(
        USEModelConfig(backbones=["clip"], feature_dim=16, grid_size=8), {"clip": clip}, seed=0
    )


def test_search_ranks_the_matching_segment_first(model: USEModel, tmp_path: Path) -> None:
    texts = ["a red roof", "a blue door", "green grass", "a yellow star"]
    emb = model.encode_text(texts).numpy()
    mask = np.zeros((20, 30), dtype=bool)
    mask[2:8, 5:15] = True
    rle = encode_mask(mask)
    rows = [
        {
            "image_path": f"img{k}.png",
            "segment_id": 0,
            "height": 20,
            "width": 30,
            "bbox": [5.0, 2.0, 10.0, 6.0],
            "rle": rle["counts"],
            "embedding": emb[k].tolist(),
        }
        for k in range(len(texts))
    ]
    report = _write_index(rows, tmp_path / "index.parquet", tmp_path, 32, [])
    assert report.segments == 4 and report.images == 4
    assert pq.read_schema(tmp_path / "index.parquet").field("embedding").type == (
        INDEX_SCHEMA.field("embedding").type
    )
    index = load_index(tmp_path / "index.parquet")
    for k, text in enumerate(texts):
        hits = search(index, model, text, top_k=3)
        assert list(hits.columns) == ["image", "segment_id", "bbox", "score", "rle"]
        assert hits["image"].iloc[0] == f"img{k}.png"
        assert hits["score"].iloc[0] == pytest.approx(1.0, abs=1e-5)
        assert hits["score"].is_monotonic_decreasing and len(hits) == 3
    assert np.array_equal(decode_rle(hits["rle"].iloc[0]), mask)
    with pytest.raises(ValueError, match="empty"):
        search(index, model, "  ")


def test_index_from_pairs_end_to_end(model: USEModel, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    rows = []
    masks = {}
    for i in range(2):
        image = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(image).save(tmp_path / "images" / f"{i}.png")
        for k in range(2):
            m = np.zeros((40, 48), dtype=bool)
            m[5 + 10 * k : 20 + 10 * k, 4 + 8 * i : 30] = True
            masks[(i, k)] = m
            rows.append(
                {"image_path": f"images/{i}.png", "height": 40, "width": 48}
                | {"rle": encode_mask(m)["counts"]}
            )
    rows.append({"image_path": "images/missing.png", "height": 40, "width": 48, "rle": "PPY1"})
    report = build_index_from_pairs(model, pd.DataFrame(rows), tmp_path, tmp_path / "ix.parquet")
    assert report.segments == 4 and report.images == 2
    assert [p for p, _ in report.skipped] == ["images/missing.png"]
    assert json.loads((tmp_path / "ix.skipped.json").read_text())[0]["reason"]
    index = load_index(tmp_path / "ix.parquet")
    # Stored embeddings are the model's embeddings of those masks.
    image0 = np.asarray(Image.open(tmp_path / "images" / "0.png"))
    expected = embed_masks(model, image0, np.stack([masks[(0, 0)], masks[(0, 1)]])).numpy()
    assert np.allclose(index.embeddings[:2], expected, atol=1e-5)
    hits = search(index, model, "a striped box", top_k=10)
    assert len(hits) == 4 and hits["score"].is_monotonic_decreasing
    query = model.encode_text(["a striped box"])[0].numpy()
    assert hits["score"].iloc[0] == pytest.approx(float((index.embeddings @ query).max()), abs=1e-5)
    sheet = save_hits_sheet(hits, tmp_path / "sheet.png", index.root, blank_background=True)
    with Image.open(sheet) as im:
        assert im.size[0] > 0 and im.size[1] > 0
