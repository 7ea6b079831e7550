"""`use evaluate --benchmark <name> --root <folder>` end to end on a tiny ADE-847 and a tiny
PartImageNet, each given only its root, with a tiny trained USE model (oracle proposals)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_project import train_tiny_model, write_tiny_params
from typer.testing import CliRunner

from use_core.cli import app
from use_core.eval.datasets import load_class_names

runner = CliRunner()
RNG = np.random.default_rng(1)


@pytest.fixture(scope="module")
def project(
    tmp_path_factory: pytest.TempPathFactory,
    shapes_small: Path,
    models_cache: Path,
    demo_models: dict,
) -> dict[str, Path]:
    """params.yaml + a tiny model trained on the shapes corpus (artifacts/train)."""
    root = tmp_path_factory.mktemp("eval_layouts")
    params = write_tiny_params(
        root / "params.yaml",
        shapes_small,
        models_cache,
        eval={"proposals": "oracle", "class_templates": ["a photo of a {}."], "num_overlays": 1},
    )
    train_tiny_model(params, shapes_small, root / "artifacts" / "train")
    return {"root": root, "params": params}


def _image(path: Path, h: int, w: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(path)


def _evaluate(project: dict[str, Path], name: str, root: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(project["root"])
    args = ["evaluate", "--benchmark", name, "--root", root, "-p", project["params"], "--no-track"]
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    metrics = json.loads((project["root"] / "metrics" / "eval" / f"{name}.json").read_text())
    report = json.loads((project["root"] / "reports" / "eval" / name / "metrics.json").read_text())
    return metrics, report


def test_evaluate_ade847_given_only_its_root(
    project: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = tmp_path / "ADE20K_2021_17_01"
    for stem in ("ADE_frame_1", "ADE_frame_2"):
        _image(base / "images_detectron2" / "validation" / f"{stem}.jpg", 48, 64)
        lab = np.zeros((48, 64), dtype=np.uint16)
        lab[:, 32:] = 2  # sky
        lab[:8] = 65535
        path = base / "annotations_detectron2" / "validation" / f"{stem}.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(lab).save(path)
    metrics, report = _evaluate(project, "ade847", base, monkeypatch)
    assert report["layout"] == "detectron2" and report["images"] == 2
    assert report["pixels"] == 2 * 40 * 64  # the 65535 rows are ignored
    assert 0.0 <= metrics["ade847_mIoU"] <= 100.0 and metrics["ade847_images"] == 2
    assert len(report["IoU"]) == 847


def test_evaluate_partimagenet_given_only_its_root(
    project: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = tmp_path / "PartImageNet"
    names = load_class_names("partimagenet_parts")
    images, anns = [], []
    for image_id in (1, 2):
        name = f"n01440764_{image_id}.JPEG"
        _image(base / "images" / "val" / name, 40, 48)
        images.append({"id": image_id, "file_name": name, "height": 40, "width": 48})
        square = [4.0, 4.0, 30.0, 4.0, 30.0, 30.0, 4.0, 30.0]
        segs = [[square], [square, [40.0, 35.0]]]  # the second with a 1-point polygon
        anns.append(
            {"id": image_id, "image_id": image_id, "category_id": 0, "iscrowd": 0}
            | {"segmentation": segs[image_id - 1], "area": 676.0, "bbox": [4, 4, 26, 26]}
        )
    cats = [{"id": i, "name": n, "supercategory": n.split(" ")[0]} for i, n in enumerate(names)]
    (base / "annotations" / "val").mkdir(parents=True)
    doc = {"images": images, "annotations": anns, "categories": cats}
    (base / "annotations" / "val" / "val.json").write_text(json.dumps(doc))
    metrics, report = _evaluate(project, "partimagenet", tmp_path, monkeypatch)
    assert report["layout"] == "release" and report["images"] == 2
    assert report["repaired_polygons"] == 1 and report["segments"] == 2  # polygon oracle masks
    assert 0.0 <= metrics["partimagenet_mAP"] <= 100.0
