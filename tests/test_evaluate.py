"""The evaluation stage on a tiny shapes corpus with a tiny USE model (oracle proposals)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from use_core.config import EvalConfig
from use_core.data.metrics_json import write_metrics_json
from use_core.data.shapes.scenes import generate_shapes
from use_core.eval.evaluate import evaluate_benchmark
from use_core.model import USEModel, USEModelConfig, create_use_model


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shapes_eval")
    generate_shapes(out, train_images=4, val_images=3, image_size=224, seed=0, show_progress=False)
    return out


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


def _cfg(**kw: object) -> EvalConfig:
    return EvalConfig(proposals="oracle", class_templates=["a photo of a {}."], **kw)


def test_semantic_oracle_writes_every_report(corpus: Path, model: USEModel, tmp_path: Path) -> None:
    out = tmp_path / "shapes"
    metrics = evaluate_benchmark(
        "shapes", corpus, model, None, _cfg(num_overlays=2), 0.7, out, show_progress=False
    )
    for name in ("metrics.json", "per_class_iou.csv", "per_class_iou.png", "confusion_matrix.png"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "overlays").iterdir()) == [
        "val_00000.png",
        "val_00001.png",
    ]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["images"] == 3 and saved["proposals"] == "oracle" and saved["segments"] > 3
    assert 0.0 <= saved["mIoU"] <= 100.0 and 0.0 <= saved["aAcc"] <= 100.0
    assert saved["pixels"] == 3 * 224 * 224  # every shapes pixel is labelled
    assert saved["seconds"] >= 0
    table = pd.read_csv(out / "per_class_iou.csv")
    assert list(table.columns) == ["class", "iou"]
    classes = json.loads((corpus / "classes.json").read_text())["semantic"]
    assert table["class"].tolist() == classes
    ious = [v for v in saved["IoU"] if v is not None]  # NaN (unseen classes) became null
    assert len(ious) < len(classes) and all(0.0 <= v <= 100.0 for v in ious)
    assert metrics["mIoU"] == pytest.approx(saved["mIoU"])


def test_part_oracle_gives_map(corpus: Path, model: USEModel, tmp_path: Path) -> None:
    out = tmp_path / "parts"
    metrics = evaluate_benchmark(
        "shapes_parts", corpus, model, None, _cfg(max_images=2), 0.7, out, show_progress=False
    )
    assert metrics["images"] == 2 and metrics["task"] == "part"
    assert math.isnan(metrics["mAP"]) or 0.0 <= metrics["mAP"] <= 100.0
    saved = json.loads((out / "metrics.json").read_text())
    assert set(saved) >= {"mAP", "mAP50", "mAP75", "AP", "images", "seconds", "predictions"}
    assert (out / "per_class_ap.csv").is_file() and (out / "per_class_ap.png").is_file()


def test_sam_mode_needs_sam(corpus: Path, model: USEModel, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="SAM"):
        evaluate_benchmark("shapes", corpus, model, None, EvalConfig(), 0.7, tmp_path)


def test_metrics_json_nan_is_null(tmp_path: Path) -> None:
    path = write_metrics_json(
        {"mIoU": float("nan"), "IoU": [1.0, float("nan")], "n": np.int64(3)}, tmp_path / "m.json"
    )
    assert json.loads(path.read_text()) == {"IoU": [1.0, None], "mIoU": None, "n": 3}


@pytest.mark.slow
def test_sam_proposals_mode_runs(
    corpus: Path, model: USEModel, tmp_path: Path, mobile_sam_checkpoint: Path
) -> None:
    from use_core.config import ModelSpec
    from use_core.pretrained.registry import load_spec

    spec = ModelSpec(kind="mobile_sam", name="vit_t", pretrained=str(mobile_sam_checkpoint))
    sam = load_spec("sam", spec, "cpu")
    cfg = EvalConfig(proposals="sam", points_per_side=6, max_images=1, num_overlays=1)
    metrics = evaluate_benchmark(
        "shapes", corpus, model, sam, cfg, 0.7, tmp_path, show_progress=False
    )
    assert metrics["proposals"] == "sam" and metrics["images"] == 1 and metrics["segments"] > 0
    assert 0.0 <= metrics["mIoU"] <= 100.0


@pytest.mark.slow
def test_proposal_store_is_shared_and_gives_the_same_metrics(
    corpus: Path, model: USEModel, tmp_path: Path, mobile_sam_checkpoint: Path
) -> None:
    from use_core.config import ModelSpec
    from use_core.infer.proposal_store import LazySam, ProposalStore
    from use_core.pretrained.registry import load_spec

    spec = ModelSpec(kind="mobile_sam", name="vit_t", pretrained=str(mobile_sam_checkpoint))
    sam = load_spec("sam", spec, "cpu")
    cfg = EvalConfig(proposals="sam", points_per_side=6, max_images=2, num_overlays=0)
    store = ProposalStore(tmp_path / "store")
    settings = {"sam": spec.model_dump(mode="json")}
    direct = evaluate_benchmark(
        "shapes", corpus, model, sam, cfg, 0.7, tmp_path / "a", show_progress=False
    )
    first = evaluate_benchmark(
        "shapes",
        corpus,
        model,
        sam,
        cfg,
        0.7,
        tmp_path / "b",
        show_progress=False,
        proposal_store=store,
        proposal_settings=settings,
    )
    assert first["cached_proposals"] == 0 and len(store) == 2
    # a second benchmark on the same images reads them back without SAM
    parts = evaluate_benchmark(
        "shapes_parts",
        corpus,
        model,
        None,
        cfg,
        0.7,
        tmp_path / "c",
        show_progress=False,
        proposal_store=ProposalStore(tmp_path / "store", writable=False),
        proposal_settings=settings,
    )
    assert parts["cached_proposals"] == 2
    again = evaluate_benchmark(
        "shapes",
        corpus,
        model,
        None,
        cfg,
        0.7,
        tmp_path / "d",
        show_progress=False,
        proposal_store=store,
        proposal_settings=settings,
    )
    assert again["cached_proposals"] == 2 and again["segments"] == direct["segments"]

    def no_sam() -> None:
        raise AssertionError("SAM loaded although every proposal is cached")

    lazy = LazySam(no_sam)
    cached_only = evaluate_benchmark(
        "shapes",
        corpus,
        model,
        lazy,
        cfg,
        0.7,
        tmp_path / "g",
        show_progress=False,
        proposal_store=store,
        proposal_settings=settings,
    )
    assert not lazy.loaded and cached_only["mIoU"] == pytest.approx(direct["mIoU"])
    assert again["mIoU"] == pytest.approx(direct["mIoU"]) == pytest.approx(first["mIoU"])
    # another setting is another key: nothing stale is read, and a read-only store stays as is
    with pytest.raises(ValueError, match="not cached"):
        evaluate_benchmark(
            "shapes",
            corpus,
            model,
            None,
            cfg,
            0.6,
            tmp_path / "e",
            show_progress=False,
            proposal_store=ProposalStore(tmp_path / "store", writable=False),
            proposal_settings=settings,
        )
    assert len(store) == 2
    # a damaged entry is recomputed, never trusted
    victim = next((tmp_path / "store").glob("*/*.npz"))
    victim.write_bytes(b"not an npz")
    lazy = LazySam(lambda: sam)
    healed = evaluate_benchmark(
        "shapes",
        corpus,
        model,
        lazy,
        cfg,
        0.7,
        tmp_path / "f",
        show_progress=False,
        proposal_store=store,
        proposal_settings=settings,
    )
    assert healed["cached_proposals"] == 1 and healed["mIoU"] == pytest.approx(direct["mIoU"])
    assert lazy.loaded  # the damaged entry needed SAM
