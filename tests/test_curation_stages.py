"""The curation stages end to end on a tiny shapes corpus (real spaCy, real MobileSAM)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from use_core.config import Params, parse_params
from use_core.data.plan import build_plan
from use_core.data.shapes.scenes import generate_shapes
from use_core.pipeline.curation_report import curation_report
from use_core.pipeline.shards import STAGES, read_stage, run_stage, shard_stage_key, store_for


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, models_cache: Path) -> Params:
    root = tmp_path_factory.mktemp("cur") / "data"
    generate_shapes(
        root / "shapes", train_images=3, val_images=1, image_size=224, show_progress=False
    )
    # one unreadable image listed in a third source: it must be quarantined, not crash the run
    (root / "extra").mkdir()
    (root / "extra" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    return parse_params(
        {
            "data": {
                "root": str(root),
                "shard_size": 2,
                "sources": [
                    *[s.model_dump() for s in Params().data.sources],
                    {"name": "extra", "kind": "image_folder", "images": "extra"},
                ],
            },
            "ground": {"max_boxes": 2},
            "models": {"cache_dir": str(models_cache)},
        }
    )


@pytest.mark.slow
def test_stages_build_pairs_and_resume(
    project: Params, demo_models: dict, mobile_sam_checkpoint: Path, tmp_path: Path
) -> None:
    reports = {stage: run_stage(stage, project, show_progress=False) for stage in STAGES}
    assert reports["caption"].computed == 2 and reports["caption"].counters["images"] == 3
    assert reports["ground"].counters["region_boxes"] > 0
    pairs = read_stage("nms", project)
    assert len(pairs) > 0 and set(pairs["image_id"]) == {
        f"shapes/train/images/train_{i:05d}.png" for i in range(3)
    }
    sources = {s for row in pairs["sources"] for s in row}
    assert {"shapes_vg/region", "captioner/phrase"} <= sources
    assert any(s.startswith("shapes_coco/gt_caption/") for s in sources)

    stats = curation_report(project, tmp_path / "curation.json")
    # real MobileSAM on the shapes' region boxes recovers the ground-truth masks
    assert stats["masks_vs_gt_matched"] >= 10
    assert stats["masks_vs_gt_mean_iou"] >= 0.85
    assert (
        stats["quarantine"]["by_stage_reason"].get("sources/bad_image", 0)
        + stats["quarantine"]["by_stage_reason"].get("caption/bad_image", 0)
        == 1
    )
    mask_codes = {"bad_box", "low_pred_iou", "low_stability", "empty_mask", "bad_image"}
    masks_reasons = {
        k.split("/", 1)[1] for k in stats["quarantine"]["by_stage_reason"] if k.startswith("masks/")
    }
    assert masks_reasons <= mask_codes, masks_reasons  # codes, not prose with numbers
    assert stats["segments"] == len(pairs) and stats["segments_before_nms"] >= len(pairs)
    json.loads((tmp_path / "curation.json").read_text())

    # a re-run computes nothing; a changed NMS threshold recomputes only the nms shards
    again = [run_stage(stage, project, show_progress=False) for stage in STAGES]
    assert all(r.computed == 0 for r in again)
    plan = build_plan(project)
    before = {st: [shard_stage_key(st, s, project) for s in plan.shards] for st in STAGES}
    project.nms.iou_threshold = 0.5
    after = {st: [shard_stage_key(st, s, project) for s in plan.shards] for st in STAGES}
    assert [st for st in STAGES if before[st] != after[st]] == ["nms"]
    report = run_stage("nms", project, show_progress=False)
    assert report.computed == 2 and report.pruned == 2
    assert sorted(store_for("nms", project).keys()) == sorted(after["nms"])


def test_downstream_stage_without_upstream_fails_clearly(project: Params, tmp_path: Path) -> None:
    fresh = project.model_copy(deep=True)
    fresh.masks.min_region_area = 7  # a masks key nobody computed
    with pytest.raises(RuntimeError, match="run `use masks` first"):
        run_stage("nms", fresh, show_progress=False)
