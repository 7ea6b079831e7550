"""The benchmark suite at tiny sizes: each benchmark's two compared paths agree, through the
product code (so a broken product path fails here, not only in ``make bench``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import p1_segment_embedding as p1
from benchmarks import p2_box_masks as p2
from benchmarks import p3_mask_nms as p3
from benchmarks import p7_proposals as p7
from benchmarks.common import interleaved, run_child
from use_core.ops.nms import mask_nms


@pytest.fixture()
def sam(mobile_sam_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> object:
    monkeypatch.setenv("USE_MOBILE_SAM", str(mobile_sam_checkpoint))
    return p2.load_mobile_sam()


def test_p3_reference_loop_keeps_the_same_groups_as_mask_nms() -> None:
    masks, scores = p3.synthetic_masks(150, 96, seed=3)
    ref = p3.reference_nms(masks, scores, p3.IOU)
    fast = mask_nms(masks, scores, p3.IOU)
    assert ref == fast
    assert 1 < len(fast) < len(masks)  # the corpus has real duplicates to suppress


def test_p1_baseline_and_use_embed_every_segment() -> None:
    image, _ = p1.voc_image()
    masks = p1.segment_masks(12, image.shape[:2])
    assert masks.any(axis=(1, 2)).all()
    bundle = p1.tiny_clip_bundle()
    model = p1.clip_use_model(bundle, grid_size=8)
    base = p1.baseline_embed(bundle.model, image, masks, 64)
    use = p1.use_embed(model, image, masks)
    for emb in (base, use):
        assert emb.shape[0] == len(masks)
        assert torch.isfinite(emb).all()
        assert torch.allclose(emb.norm(dim=-1), torch.ones(len(masks)), atol=1e-4)
    # different segments of one image get different USE embeddings
    assert (use @ use.T).fill_diagonal_(0).max() < 0.99999


def test_p1_crops_fill_the_background_with_the_mean_colour() -> None:
    image = np.zeros((40, 40, 3), dtype=np.uint8)
    image[:20] = 200
    mask = np.zeros((1, 40, 40), dtype=bool)
    mask[0, 5:15, 5:35] = True  # inside the bright half
    mask[0, 30, 5] = True  # stretches the box into the dark half
    crop = p1.masked_crops(image, mask, 16)
    assert crop.shape == (1, 3, 16, 16)
    mean = image.mean() / 255.0
    assert abs(float(crop[0, 0, -1, -1]) - mean) < 0.02  # outside the mask: the mean colour
    assert abs(float(crop[0, 0, 2, 8]) - 200 / 255.0) < 0.02


@pytest.mark.slow
def test_p2_product_masks_choose_what_stock_predict_torch_chooses(sam: object) -> None:
    image, _ = p2.test_image(448)
    boxes = p2.make_boxes(4, 448)
    product = p2.product_masks(
        sam,
        image,
        boxes,
        pred_iou_threshold=0.0,
        stability_threshold=0.0,
        whole_image_ratio=1.0,
        min_region_area=0,
    )
    stock = p2.stock_best_masks(sam, image, boxes)
    assert product.box_index.tolist() == list(range(len(boxes)))
    assert product.candidate.tolist() == stock["candidate"].tolist()
    np.testing.assert_array_equal(product.masks, stock["masks"])
    np.testing.assert_allclose(product.stability, stock["stability"], atol=1e-5)


@pytest.mark.slow
def test_p7_project_recall_is_at_least_the_stock_generators(sam: object) -> None:
    image, gt = p7.voc_photo()
    stock = p7.stock_proposals(sam, image, 3)
    project = p7.project_proposals(sam, image, 3)
    assert project.shape[1:] == stock.shape[1:] == image.shape[:2]
    assert len(project) > 0
    assert p7.proposal_recall(project, gt) >= p7.proposal_recall(stock, gt)


@pytest.mark.slow
def test_p4_cached_and_recomputed_training_run_the_same_steps() -> None:
    from benchmarks import p4_feature_cache as p4

    out = p4.run(quick=True)
    steps = out["step_s"]
    assert len(steps["cached"]) == len(steps["recompute"]) == out["steps"] == 4
    assert all(np.isfinite(v) for v in out["final_loss"].values())
    assert out["ratio"] > 0


def test_interleaved_alternates_the_paths_and_keeps_the_last_results() -> None:
    calls: list[str] = []

    def path(name: str, value: int) -> int:
        calls.append(name)
        return value

    times, last = interleaved(
        {"a": lambda: path("a", 1), "b": lambda: path("b", 2)},
        repeats=2,
        warmup=1,
    )
    assert calls == ["a", "b"] * 3
    assert len(times["a"]) == len(times["b"]) == 2 and last == {"a": 1, "b": 2}

    calls.clear()  # warm_each: an untimed run of the same path right before each timed one
    times, _ = interleaved(
        {"a": lambda: path("a", 1), "b": lambda: path("b", 2)},
        repeats=2,
        warmup=0,
        warm_each=True,
    )
    assert calls == ["a", "a", "b", "b"] * 2
    assert len(times["a"]) == len(times["b"]) == 2


def test_run_child_reports_the_childs_peak_memory(tmp_path: Path) -> None:
    code = "x = bytearray(300 * 2**20); x[::4096] = b'1' * len(x[::4096])"
    out = run_child([sys.executable, "-c", code], cwd=tmp_path)
    assert out["returncode"] == 0
    assert out["peak_rss_mib"] >= 280
    failing = run_child([sys.executable, "-c", "raise SystemExit(3)"], cwd=tmp_path)
    assert failing["returncode"] == 3


def test_run_child_peak_leaves_out_this_processs_size(tmp_path: Path) -> None:
    """A child forked straight from a big process would report at least the parent's RSS."""
    ballast = bytearray(600 * 2**20)
    ballast[::4096] = b"1" * len(ballast[::4096])  # touch it: this process is now > 600 MiB
    out = run_child([sys.executable, "-c", "pass"], cwd=tmp_path)
    assert out["returncode"] == 0
    assert 1 < out["peak_rss_mib"] < 200, out["peak_rss_mib"]
    del ballast


def test_run_all_writes_results_with_the_machine(tmp_path: Path) -> None:
    from benchmarks.run_all import main

    out = tmp_path / "results.json"
    assert main(["--quick", "--only", "P3", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["machine"]["cpu_count"] >= 1 and doc["machine"]["torch_threads"] >= 1
    (res,) = doc["results"]
    assert res["id"] == "P3" and res["same_groups"] is True
    assert {"what", "ratio", "target", "met"} <= set(res)
    with pytest.raises(SystemExit):
        main(["--only", "P9", "--out", str(out)])


@pytest.mark.slow
def test_p5_growth_runs_the_flow_at_each_size_with_both_worker_counts(
    demo_models: dict[str, Path], mobile_sam_checkpoint: Path
) -> None:
    from benchmarks import p5_dask_curation as p5

    out = p5.growth((1, 2), shard_size=1)
    assert set(out["runs"]) == {f"{n}_images_{w}_workers" for n in (1, 2) for w in (1, 2)}
    assert out["same_pairs"] is True  # 1 and 2 workers curate the same pairs at each size
    for w in (1, 2):  # more images give more segments; the per-image arithmetic holds
        one, two = out["runs"][f"1_images_{w}_workers"], out["runs"][f"2_images_{w}_workers"]
        assert 0 < one["segments"] < two["segments"]
        assert two["seconds"] == pytest.approx(2 * two["seconds_per_image"], rel=0.01)
    assert set(out["seconds_per_extra_image"]) == {"1->2"}
    assert set(out["two_over_one_worker_ratio"]) == {"1", "2"}
