"""Every community layout of the five benchmarks, built tiny in its exact folders and encoding.

ADE-847 as uint16 TIFF with 65535 ignore, PC-59 as raw uint8 with 255 (OVSeg / CAT-Seg share
paths with different class orders), PC-459 as ``LabelMap - 1`` uint16 TIFF, PartImageNet in the
release and VLPart layouts with polygons of 1 and 2 points; `use describe-benchmark` on them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from typer.testing import CliRunner

from use_core.cli import app
from use_core.config import EvalConfig
from use_core.eval.datasets import (
    BenchmarkLayoutError,
    annotation_mask,
    load_benchmark,
    load_class_names,
    repair_polygons,
)
from use_core.eval.datasets.describe import describe_benchmark
from use_core.eval.metrics import mask_map

RNG = np.random.default_rng(0)
H, W = 12, 16
runner = CliRunner()


def _image(path: Path, h: int = H, w: int = W) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(path)


def _label(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _semantic_tree(
    base: Path, images: str, labels: str, arr: np.ndarray, suffix: str, stems: tuple[str, ...]
) -> None:
    for stem in stems:
        _image(base / images / f"{stem}.jpg")
        _label(base / labels / f"{stem}{suffix}", arr)


def _ade847_labels() -> np.ndarray:
    lab = np.zeros((H, W), dtype=np.uint16)  # 0 = wall
    lab[:, 8:] = 846
    lab[0, :4] = 65535
    return lab


def test_shipped_lists_have_exact_counts_and_sources() -> None:
    for stem, count in (
        ("ade20k_150", 150),
        ("ade20k_847", 847),
        ("pascal_context_59_ovseg", 59),
        ("pascal_context_59_detail", 59),
        ("pascal_context_459", 459),
        ("coco_stuff_91", 91),
        ("partimagenet_parts", 40),
        ("partimagenet_supercategories", 11),
    ):
        names = load_class_names(stem)
        assert len(names) == len(set(names)) == count, stem
        header = (Path(__file__).parents[1] / "use_core" / "resources" / f"{stem}.txt").read_text()
        assert "Source:" in header.split("\n# ", 3)[1] or "Source:" in header[:400], stem
    ovseg, detail = (
        load_class_names("pascal_context_59_ovseg"),
        load_class_names("pascal_context_59_detail"),
    )
    assert set(ovseg) == set(detail) and ovseg[:2] == ["aeroplane", "bicycle"]
    assert ovseg[20] == "bag" and detail[1] == "bag"
    assert sum(a != b for a, b in zip(ovseg, detail, strict=True)) == 54


def test_ade847_uint16_tif_under_odise_parent(tmp_path: Path) -> None:
    base = tmp_path / "ade" / "ADE20K_2021_17_01"
    _semantic_tree(
        base,
        "images_detectron2/validation",
        "annotations_detectron2/validation",
        _ade847_labels(),
        ".tif",
        ("ADE_frame_00000001", "ADE_frame_00000002"),
    )
    for root in (tmp_path, base):  # the data root or the benchmark folder
        bench = load_benchmark("ade847", root)
        assert bench.layout == "detectron2" and len(bench) == 2 and bench.ignore_index == 65535
        label = bench.read_label(bench.samples[0])
        assert bench.class_names[label[5, 0]] == "wall"
        assert bench.class_names[label[5, 15]] == "adding machine, totalizer, totaliser"
        assert (label == 65535).sum() == 4


def test_ade150_under_odise_parent(tmp_path: Path) -> None:
    raw = np.full((H, W), 3, dtype=np.uint8)
    raw[0, 0] = 0
    _semantic_tree(
        tmp_path / "ade" / "ADEChallengeData2016",
        "images/validation",
        "annotations/validation",
        raw,
        ".png",
        ("ADE_val_00000001",),
    )
    bench = load_benchmark("ade150", tmp_path)
    label = bench.read_label(bench.samples[0])
    assert label[0, 0] == 255 and bench.class_names[label[1, 1]] == "sky"


def _pc59_raw() -> np.ndarray:
    raw = np.full((H, W), 1, dtype=np.uint8)  # label id 1
    raw[0, 0] = 255
    return raw


def test_pc59_shared_paths_require_label_order(tmp_path: Path) -> None:
    voc = tmp_path / "VOCdevkit" / "VOC2010"
    _semantic_tree(
        voc, "JPEGImages", "annotations_detectron2/pc59_val", _pc59_raw(), ".png", ("2008_1",)
    )
    _image(voc / "JPEGImages" / "2008_2.jpg")  # a non-val image: unused
    with pytest.raises(BenchmarkLayoutError, match="label_order: ovseg \\| detail"):
        load_benchmark("pc59", tmp_path)
    ovseg = load_benchmark("pc59", tmp_path, label_order="ovseg")
    detail = load_benchmark("pc59", voc, label_order="detail")
    assert (ovseg.layout, detail.layout) == ("ovseg", "detail") and len(ovseg) == 1
    label = ovseg.read_label(ovseg.samples[0])
    assert label[0, 0] == 255
    assert ovseg.class_names[label[1, 1]] == "bicycle"
    assert detail.class_names[label[1, 1]] == "bag"
    with pytest.raises(ValueError, match="allowed: none"):
        load_benchmark("ade150", tmp_path, label_order="ovseg")


@pytest.mark.parametrize(
    ("folder", "images", "labels", "layout"),
    [
        ("pascal_ctx_d2", "images/validation", "annotations_ctx59/validation", "odise"),
        ("pcontext", "val/image", "val/label", "san"),
    ],
)
def test_pc59_odise_and_san_layouts_fix_the_detail_order(
    tmp_path: Path, folder: str, images: str, labels: str, layout: str
) -> None:
    _semantic_tree(tmp_path / folder, images, labels, _pc59_raw(), ".png", ("2008_1", "2008_3"))
    bench = load_benchmark("pc59", tmp_path)
    assert bench.layout == layout and len(bench) == 2
    assert bench.class_names[bench.read_label(bench.samples[0])[1, 1]] == "bag"
    assert load_benchmark("pc59", tmp_path, label_order="detail").layout == layout
    with pytest.raises(ValueError, match="uses the detail class order"):
        load_benchmark("pc59", tmp_path, label_order="ovseg")


@pytest.mark.parametrize(
    ("folder", "images", "labels", "layout"),
    [
        ("VOCdevkit/VOC2010", "JPEGImages", "annotations_detectron2/pc459_val", "detectron2"),
        ("pascal_ctx_d2", "images/validation", "annotations_ctx459/validation", "odise"),
        ("pcontext_full", "val/image", "val/label", "san"),
    ],
)
def test_pc459_layouts_labelmap_minus_one(
    tmp_path: Path, folder: str, images: str, labels: str, layout: str
) -> None:
    label_map = np.full((H, W), 3, dtype=np.uint16)  # the .mat LabelMap: 1..459
    label_map[:, 10:] = 459
    _semantic_tree(tmp_path / folder, images, labels, label_map - 1, ".tif", ("2008_1",))
    bench = load_benchmark("pc459", tmp_path)
    assert bench.layout == layout and bench.num_classes == 459 and bench.ignore_index == 65535
    label = bench.read_label(bench.samples[0])
    assert bench.class_names[label[0, 0]] == "air conditioner"
    assert bench.class_names[label[0, 15]] == "wool"


def test_unknown_and_ambiguous_layouts_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkLayoutError, match="looked for .*pascal_ctx_d2/.*pcontext/"):
        load_benchmark("pc59", tmp_path)
    for folder, images, labels in (
        ("pascal_ctx_d2", "images/validation", "annotations_ctx59/validation"),
        ("pcontext", "val/image", "val/label"),
    ):
        _semantic_tree(tmp_path / folder, images, labels, _pc59_raw(), ".png", ("a",))
    with pytest.raises(BenchmarkLayoutError, match="several layouts .*odise.*san"):
        load_benchmark("pc59", tmp_path)
    assert load_benchmark("pc59", tmp_path / "pcontext").layout == "san"


# ------------------------------------------------------------------ PartImageNet


def _square(x0: int, y0: int) -> list[float]:
    return [x0, y0, x0 + 6, y0, x0 + 6, y0 + 5, x0, y0 + 5]


def _pin_coco(prefix_folder: bool) -> dict:
    names = load_class_names("partimagenet_parts")
    images, anns = [], []
    for image_id, wnid in ((1, "n01440764"), (2, "n02085620")):
        name = f"{wnid}_{image_id}.JPEG"
        images.append(
            {"id": image_id, "file_name": f"{wnid}/{name}" if prefix_folder else name}
            | {"height": 20, "width": 24}
        )
    mask = np.zeros((20, 24), dtype=np.uint8)
    mask[10:18, 12:20] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    rle["counts"] = rle["counts"].decode("ascii")
    segs: list = [
        [_square(2, 2)],  # a polygon
        [_square(2, 2), [5.0, 5.0]],  # plus a 1-point polygon
        [[3.0, 3.0, 9.0, 9.0]],  # a 2-point polygon (a line)
        rle,  # RLE
    ]
    for i, seg in enumerate(segs):
        anns.append(
            {"id": i + 1, "image_id": 1 + i % 2, "category_id": i, "segmentation": seg}
            | {"area": 30.0, "bbox": [2, 2, 6, 5], "iscrowd": 0}
        )
    cats = [{"id": i, "name": n, "supercategory": n.split(" ")[0]} for i, n in enumerate(names)]
    return {"images": images, "annotations": anns, "categories": cats}


def _pin_release(root: Path) -> Path:
    base = root / "PartImageNet"
    coco = _pin_coco(prefix_folder=False)
    for img in coco["images"]:
        _image(base / "images" / "val" / img["file_name"], 20, 24)
    (base / "annotations" / "val").mkdir(parents=True)
    (base / "annotations" / "val" / "val.json").write_text(json.dumps(coco))
    return base


def test_repair_polygons_pads_like_vlpart() -> None:
    fixed, n = repair_polygons([[1, 2], [1, 2, 3, 4], _square(0, 0)])
    assert n == 2 and fixed[0] == [1, 2, 0, 0, 1, 2] and fixed[1] == [1, 2, 3, 4, 1, 2]
    assert fixed[2] == _square(0, 0)
    assert repair_polygons({"size": [2, 2], "counts": "4"}) == ({"size": [2, 2], "counts": "4"}, 0)
    with pytest.raises(ValueError, match="3 coordinates"):
        repair_polygons([[1, 2, 3]])


def test_partimagenet_release_polygons_rle_and_split_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _pin_release(tmp_path)
    with caplog.at_level(logging.WARNING):
        bench = load_benchmark("partimagenet", tmp_path)
    assert bench.layout == "release" and len(bench) == 2 and bench.num_classes == 40
    assert bench.repaired_polygons == 2
    assert "2957 images" in caplog.text and bench.warnings
    gt = bench.coco_gt
    assert gt is not None
    masks = [annotation_mask(a["segmentation"], (20, 24)) for a in gt["annotations"]]
    assert masks[0].sum() > 20 and masks[3].sum() == 64
    assert masks[1].sum() >= masks[0].sum()
    # the repaired ground truth scores with pycocotools: the GT itself gets 100 mAP
    preds = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0}
        | {"segmentation": mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))}
        for a, m in zip(gt["annotations"], masks, strict=True)
        if m.any()
    ]
    for p in preds:
        p["segmentation"]["counts"] = p["segmentation"]["counts"].decode("ascii")
    result = mask_map(preds, gt)
    # the padded line (a zero-area triangle) rasterises to nothing: no prediction can match it
    assert masks[2].sum() == 0 and len(preds) == 3
    assert [result["per_category_id"][c] for c in (0, 1, 3)] == pytest.approx([100.0] * 3)


@pytest.mark.parametrize("annotation", ["val_format.json", "val.json"])
def test_partimagenet_vlpart_layout(tmp_path: Path, annotation: str) -> None:
    base = tmp_path / "partimagenet"
    coco = _pin_coco(prefix_folder=annotation == "val_format.json")
    for img in coco["images"]:
        name = img["file_name"].split("/")[-1]
        _image(base / "val" / name[:9] / name, 20, 24)
    base.mkdir(parents=True, exist_ok=True)
    (base / annotation).write_text(json.dumps(coco))
    bench = load_benchmark("partimagenet", tmp_path)
    assert bench.layout == "vlpart" and len(bench) == 2
    assert all(s.image_path.parent.name == s.image_path.name[:9] for s in bench)
    assert bench.repaired_polygons == 2


# ------------------------------------------------------------------ describe


def test_describe_benchmark_counts_pixels_and_instances(tmp_path: Path) -> None:
    base = tmp_path / "ADE20K_2021_17_01"
    _semantic_tree(
        base,
        "images_detectron2/validation",
        "annotations_detectron2/validation",
        _ade847_labels(),
        ".tif",
        ("a", "b", "c"),
    )
    doc = describe_benchmark("ade847", base, limit=2)
    assert doc["layout"] == "detectron2" and doc["images"] == 3 and doc["num_classes"] == 847
    assert doc["classes"][0] == "wall" and len(doc["classes"]) == 847
    assert doc["pixels_by_class"]["wall"] == 2 * (H * 8 - 4)
    assert doc["pixels_by_class"]["adding machine, totalizer, totaliser"] == 2 * H * 8
    assert doc["ignored_pixels"] == 2 * 4 and doc["described_images"] == 2
    _pin_release(tmp_path)
    parts = describe_benchmark("partimagenet", tmp_path)
    names = load_class_names("partimagenet_parts")
    assert [parts["pixels_by_class"][n] for n in names[:5]] == [1, 1, 1, 1, 0]
    assert parts["repaired_polygons"] == 2 and parts["warnings"]


def test_describe_benchmark_cli(tmp_path: Path) -> None:
    voc = tmp_path / "VOCdevkit" / "VOC2010"
    _semantic_tree(
        voc, "JPEGImages", "annotations_detectron2/pc59_val", _pc59_raw(), ".png", ("x",)
    )
    args = ["describe-benchmark", "pc59", "--root", str(tmp_path)]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 2
    message = " ".join(result.output.split())  # one sentence, wrapped by the terminal
    assert message.endswith("so set label_order: ovseg | detail.")
    assert message.count(". ") == 0 and "Expected layout" not in message
    result = runner.invoke(app, [*args, "--label-order", "ovseg", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["layout"] == "ovseg" and doc["pixels_by_class"]["bicycle"] == H * W - 1
    assert doc["ignored_pixels"] == 1
    table = runner.invoke(app, [*args, "--label-order", "detail"])
    assert table.exit_code == 0 and "bag" in table.output and "detail" in table.output
    missing = runner.invoke(app, ["describe-benchmark", "ade847", "--root", str(tmp_path / "no")])
    assert missing.exit_code == 2 and "no known layout" in missing.output


def test_eval_benchmarks_entries() -> None:
    cfg = EvalConfig(benchmarks=["shapes", {"name": "pc59", "root": "/d", "label_order": "ovseg"}])
    assert cfg.benchmark_names == ["shapes", "pc59"]
    assert cfg.benchmark_entry("pc59").root == "/d"
    assert cfg.benchmark_entry("shapes").root is None
    with pytest.raises(ValueError, match="at most once"):
        EvalConfig(benchmarks=["shapes", {"name": "shapes"}])
    with pytest.raises(ValueError):
        EvalConfig(benchmarks=[{"name": "pc59", "label_order": "alphabetical"}])
    # the DVC-friendly spelling: bare names plus settings keyed by name
    dvc = EvalConfig(benchmarks=["pc59"], roots={"pc59": "/p"}, label_orders={"pc59": "detail"})
    assert dvc.benchmark_entry("pc59").model_dump() == {
        "name": "pc59",
        "root": "/p",
        "label_order": "detail",
    }
    with pytest.raises(ValueError, match="roots: \\['ade847'\\] not in benchmarks"):
        EvalConfig(benchmarks=["pc59"], roots={"ade847": "/a"})
