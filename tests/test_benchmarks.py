"""Benchmark loaders on tiny fixture trees in each supported on-disk layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from use_core.data.shapes.scenes import generate_shapes
from use_core.eval.datasets import (
    BENCHMARKS,
    BenchmarkLayoutError,
    BenchmarkSpec,
    CocoNames,
    DatasetNames,
    ShippedNames,
    benchmark_root,
    load_benchmark,
    load_class_names,
    read_class_names_file,
)
from use_core.eval.datasets.shapes import ShapesNames
from use_core.eval.metrics import mask_map, semantic_metrics

RNG = np.random.default_rng(0)


def _write_image(path: Path, h: int = 12, w: int = 16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(path)


def _write_label(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_shipped_class_lists() -> None:
    ade = load_class_names("ade20k_150")
    assert len(ade) == 150 and ade[0] == "wall" and ade[-1] == "flag"
    pc = load_class_names("pascal_context_59_detail")
    assert len(pc) == 59 and pc[0] == "aeroplane" and pc[-1] == "wood"
    stuff = load_class_names("coco_stuff_91")
    assert len(stuff) == 91 and stuff[0] == "banner" and stuff[-1] == "wood"
    parts = load_class_names("partimagenet_parts")
    supers = load_class_names("partimagenet_supercategories")
    assert len(parts) == 40 and len(supers) == 11
    assert {p.rsplit(" ", 1)[0].replace(" Side", "") for p in parts} == set(supers)
    for names in (ade, pc, stuff, parts, supers):
        assert len(set(names)) == len(names)


def test_ade150_reduce_zero_label(tmp_path: Path) -> None:
    root = tmp_path / "ADEChallengeData2016"
    raws = {}
    for stem in ("ADE_val_00000002", "ADE_val_00000001"):
        _write_image(root / "images" / "validation" / f"{stem}.jpg")
        raw = RNG.integers(0, 151, size=(12, 16)).astype(np.uint8)
        raw[0, 0], raw[0, 1], raw[0, 2] = 0, 1, 150
        raws[stem] = raw
        _write_label(root / "annotations" / "validation" / f"{stem}.png", raw)
    bench = load_benchmark("ade150", root)
    assert bench.task == "semantic" and bench.num_classes == 150 and bench.ignore_index == 255
    assert [s.meta["stem"] for s in bench] == ["ADE_val_00000001", "ADE_val_00000002"]
    for image_path, gt, meta in bench:
        assert isinstance(gt, Path)
        assert image_path.stem == gt.stem == meta["stem"]
        label = bench.read_label(gt)
        raw = raws[meta["stem"]]
        assert label.dtype == np.int32
        assert label[0, 0] == 255 and label[0, 1] == 0 and label[0, 2] == 149
        np.testing.assert_array_equal(label[raw > 0], raw[raw > 0].astype(np.int32) - 1)
        np.testing.assert_array_equal(label == 255, raw == 0)
    # the converted maps feed the metric directly
    labels = [bench.read_label(s) for s in bench]
    out = semantic_metrics(labels, labels, bench.num_classes, bench.ignore_index)
    assert out["mIoU"] == 100.0


def test_ade847_uint16_tiff(tmp_path: Path) -> None:
    root = tmp_path / "ADE20K_2021_17_01"
    for stem in ("ADE_frame_1", "ADE_frame_2"):
        _write_image(root / "images_detectron2" / "validation" / f"{stem}.jpg")
        lab = RNG.integers(0, 847, size=(12, 16)).astype(np.uint16)
        lab[0, 0], lab[0, 1] = 65535, 846
        _write_label(root / "annotations_detectron2" / "validation" / f"{stem}.tif", lab)
    bench = load_benchmark("ade847", root)  # the 847 names are shipped
    assert len(bench) == 2 and bench.num_classes == 847 and bench.ignore_index == 65535
    label = bench.read_label(bench.samples[0])
    assert label[0, 0] == 65535 and label[0, 1] == 846 and label.max() == 65535
    assert semantic_metrics([label], [label], 847, 65535)["pixels"] == label.size - 1


def test_pc59_uses_annotation_files_as_val_set(tmp_path: Path) -> None:
    root = tmp_path / "VOCdevkit" / "VOC2010"
    for stem in ("2008_000001", "2008_000002", "2008_000003"):  # 3 JPEGs, 2 annotated
        _write_image(root / "JPEGImages" / f"{stem}.jpg")
    for stem in ("2008_000001", "2008_000003"):
        lab = RNG.integers(0, 59, size=(12, 16)).astype(np.uint8)
        lab[1, 1] = 255
        _write_label(root / "annotations_detectron2" / "pc59_val" / f"{stem}.png", lab)
    bench = load_benchmark("pc59", root, label_order="detail")
    assert [s.meta["stem"] for s in bench] == ["2008_000001", "2008_000003"]
    assert bench.class_names[0] == "aeroplane" and bench.num_classes == 59
    label = bench.read_label(bench.samples[1])
    assert label[1, 1] == 255 and label[label != 255].max() < 59


def test_pc459_class_names_can_be_given(tmp_path: Path) -> None:
    root = tmp_path / "VOCdevkit" / "VOC2010"
    for stem in ("2008_000001", "2008_000002"):
        _write_image(root / "JPEGImages" / f"{stem}.jpg")
        lab = RNG.integers(0, 459, size=(12, 16)).astype(np.uint16)
        lab[2, 2] = 65535
        _write_label(root / "annotations_detectron2" / "pc459_val" / f"{stem}.tif", lab)
    # numbered like the dataset's labels.txt, deliberately written out of order
    lines = [f"{i}: name{i}" for i in range(459, 0, -1)]
    (root / "labels.txt").write_text("\n".join(lines))
    names = read_class_names_file(root / "labels.txt", expected=459)
    bench = load_benchmark("pc459", root, class_names=names)
    assert bench.class_names[0] == "name1" and bench.class_names[-1] == "name459"
    assert load_benchmark("pc459", root).class_names[2] == "air conditioner"  # shipped
    assert bench.read_label(bench.samples[0])[2, 2] == 65535


def test_class_names_file_errors(tmp_path: Path) -> None:
    gap = tmp_path / "gap.txt"
    gap.write_text("1: a\n3: c\n")
    with pytest.raises(ValueError, match="1..2"):
        read_class_names_file(gap)
    short = tmp_path / "short.txt"
    short.write_text("a\nb\n")
    with pytest.raises(ValueError, match="expected 3"):
        read_class_names_file(short, expected=3)
    as_json = tmp_path / "names.json"
    as_json.write_text(json.dumps(["x", "y"]))
    assert read_class_names_file(as_json) == ["x", "y"]


def _partimagenet_tree(root: Path) -> dict:
    names = load_class_names("partimagenet_parts")
    images, annotations = [], []
    for image_id, name in ((1, "n01440764_1.JPEG"), (2, "n02085620_7.JPEG")):
        folder = root / "images" / "val"
        # second image sits in a per-synset folder, as in some PartImageNet copies
        path = folder / name if image_id == 1 else folder / name.split("_")[0] / name
        _write_image(path, 20, 24)
        images.append({"id": image_id, "file_name": name, "height": 20, "width": 24})
        mask = np.zeros((20, 24), dtype=np.uint8)
        mask[2:10, 3:12] = 1
        rle = mask_utils.encode(np.asfortranarray(mask))
        rle["counts"] = rle["counts"].decode("ascii")
        annotations.append(
            {
                "id": image_id,
                "image_id": image_id,
                "category_id": image_id * 3,
                "segmentation": rle,
                "area": float(mask.sum()),
                "bbox": [3, 2, 9, 8],
                "iscrowd": 0,
            }
        )
    images.append({"id": 3, "file_name": "n01440764_9.JPEG", "height": 20, "width": 24})
    _write_image(root / "images" / "val" / "n01440764_9.JPEG", 20, 24)
    coco = {
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i, "name": n, "supercategory": n.split(" ")[0]} for i, n in enumerate(names)
        ],
    }
    (root / "annotations" / "val").mkdir(parents=True)
    (root / "annotations" / "val" / "val.json").write_text(json.dumps(coco))
    return coco


def test_partimagenet_coco_parts(tmp_path: Path) -> None:
    root = tmp_path / "PartImageNet"
    coco = _partimagenet_tree(root)
    bench = load_benchmark("partimagenet", root)
    assert bench.task == "part" and bench.num_classes == 40
    assert bench.category_ids == list(range(40))
    assert bench.class_names[0] == "Quadruped Head"
    assert len(bench.background_names) == 91 + 11 and "Quadruped" in bench.background_names
    assert [s.meta["image_id"] for s in bench] == [1, 2, 3]
    paths = [s.image_path for s in bench]
    assert paths[1].parent.name == "n02085620" and all(p.is_file() for p in paths)
    gts = [s.gt for s in bench if isinstance(s.gt, list)]
    assert [len(g) for g in gts] == [1, 1, 0]  # every image is kept, one without parts
    assert gts[0][0]["category_id"] == 3
    preds = [
        {k: a[k] for k in ("image_id", "category_id", "segmentation")} | {"score": 1.0}
        for a in coco["annotations"]
    ]
    assert bench.coco_gt is not None
    assert mask_map(preds, bench.coco_gt)["mAP"] == pytest.approx(100.0)
    with pytest.raises(TypeError, match="without label maps"):
        bench.read_label(bench.samples[0])


def test_partimagenet_missing_image_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "PartImageNet"
    _partimagenet_tree(root)
    (root / "images" / "val" / "n01440764_9.JPEG").unlink()
    with pytest.raises(ValueError, match="1 images .* n01440764_9.JPEG"):
        load_benchmark("partimagenet", root)


def test_shapes_benchmarks_on_generated_corpus(tmp_path: Path) -> None:
    root = tmp_path / "shapes"
    generate_shapes(
        root, train_images=1, val_images=2, image_size=64, max_objects=2, show_progress=False
    )
    classes = json.loads((root / "classes.json").read_text())
    sem = load_benchmark("shapes", root)
    assert len(sem) == 2 and sem.class_names == classes["semantic"]
    for image_path, gt, _meta in sem:
        label = sem.read_label(gt)
        with Image.open(image_path) as im:
            assert im.size == (label.shape[1], label.shape[0])
        assert label.max() < sem.num_classes
    parts = load_benchmark("shapes_parts", root)
    assert parts.task == "part" and parts.class_names == classes["parts"]
    assert parts.category_ids == list(range(len(classes["parts"])))
    assert set(classes["stuff"]) <= set(parts.background_names)
    assert len(parts) == 2 and all(s.image_path.is_file() for s in parts)
    n_anns = sum(len(s.gt) for s in parts if isinstance(s.gt, list))
    assert parts.coco_gt is not None and n_anns == len(parts.coco_gt["annotations"])


def test_missing_and_mismatched_layouts_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkLayoutError, match="annotations/validation/\\*.png"):
        load_benchmark("ade150", tmp_path / "nowhere")
    root = tmp_path / "ADEChallengeData2016"
    (root / "images" / "validation").mkdir(parents=True)
    with pytest.raises(BenchmarkLayoutError, match="Expected layout"):
        load_benchmark("ade150", root)
    _write_image(root / "images" / "validation" / "a.jpg")
    _write_image(root / "images" / "validation" / "b.jpg")
    _write_label(root / "annotations" / "validation" / "a.png", np.zeros((12, 16), np.uint8))
    with pytest.raises(ValueError, match="1 images .* no .png label map.*b"):
        load_benchmark("ade150", root)
    with pytest.raises(KeyError, match="unknown benchmark 'ade'"):
        load_benchmark("ade", root)


def test_registry_and_default_roots(tmp_path: Path) -> None:
    assert set(BENCHMARKS) == {
        "ade150",
        "ade847",
        "pc59",
        "pc459",
        "partimagenet",
        "shapes",
        "shapes_parts",
    }
    assert benchmark_root("pc459", tmp_path) == tmp_path / "VOCdevkit" / "VOC2010"
    assert BENCHMARKS["partimagenet"].task == "part"
    assert BENCHMARKS["ade847"].ignore_index == 65535


def test_rgb_label_map_is_rejected(tmp_path: Path) -> None:
    root = tmp_path / "VOCdevkit" / "VOC2010"
    _write_image(root / "JPEGImages" / "x.jpg")
    _write_image(root / "annotations_detectron2" / "pc59_val" / "x.png")  # RGB, not labels
    bench = load_benchmark("pc59", root, label_order="ovseg")
    with pytest.raises(ValueError, match="single-channel"):
        bench.read_label(bench.samples[0])


def _tiny_tree(spec: BenchmarkSpec, root: Path) -> np.ndarray | None:
    """One image with its label map (semantic, returned as the expected ``read_label`` output)
    or its one-annotation COCO file (part), written in ``spec``'s layout under ``root``."""
    k = spec.num_classes or 3
    names = [f"class {i}" for i in range(k)]
    if isinstance(spec.classes, DatasetNames):
        (root / spec.classes.files[0]).parent.mkdir(parents=True, exist_ok=True)
        (root / spec.classes.files[0]).write_text("\n".join(names))
    elif isinstance(spec.classes, ShapesNames):
        doc = {"semantic": names, "parts": names, "stuff": ["sky"], "ignore_index": 255}
        root.mkdir(parents=True, exist_ok=True)
        (root / "classes.json").write_text(json.dumps(doc))
    elif not isinstance(spec.classes, ShippedNames | CocoNames):
        pytest.fail(f"no tiny-tree fixture for class source {spec.classes!r}")
    if spec.task == "part":
        _write_image(root / spec.images / "x_1.jpg")
        mask = np.zeros((12, 16), dtype=np.uint8)
        mask[2:6, 3:9] = 1
        rle = mask_utils.encode(np.asfortranarray(mask))
        rle["counts"] = rle["counts"].decode("ascii")
        ann = {"id": 1, "image_id": 7, "category_id": k - 1, "segmentation": rle, "iscrowd": 0}
        coco = {
            "images": [{"id": 7, "file_name": "x_1.jpg", "height": 12, "width": 16}],
            "annotations": [ann],
            "categories": [{"id": i, "name": n} for i, n in enumerate(names)],
        }
        (root / spec.annotations).parent.mkdir(parents=True, exist_ok=True)
        (root / spec.annotations).write_text(json.dumps(coco))
        return None
    _write_image(root / spec.images / f"x{spec.image_suffix}")
    expected = (np.arange(12 * 16).reshape(12, 16) % k).astype(np.int32)
    expected[0, 0] = spec.ignore_index
    raw = expected + 1 if spec.reduce_zero_label else expected.copy()
    raw[0, 0] = 0 if spec.reduce_zero_label else spec.ignore_index
    _write_label(root / spec.labels / f"x{spec.label_suffix}", raw.astype(spec.label_dtype))
    return expected


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_every_spec_loads_a_tiny_tree_in_its_layout(name: str, tmp_path: Path) -> None:
    spec = BENCHMARKS[name]
    root = benchmark_root(name, tmp_path)
    expected = _tiny_tree(spec, root)
    for path in (spec.images, spec.labels or spec.annotations):
        assert path in spec.layout
    order = "detail" if name == "pc59" else None
    bench = load_benchmark(name, root, label_order=order)
    assert bench.name == name and bench.task == spec.task and len(bench) == 1
    assert bench.num_classes == (spec.num_classes or 3)
    sample = bench.samples[0]
    assert sample.image_path.is_file()
    if expected is None:
        assert isinstance(sample.gt, list) and len(sample.gt) == 1
        assert bench.category_ids == list(range(bench.num_classes))
        assert bench.coco_gt is not None and sample.meta["image_id"] == 7
    else:
        assert bench.ignore_index == spec.ignore_index
        np.testing.assert_array_equal(bench.read_label(sample), expected)
    with pytest.raises(ValueError, match="expected .* class names"):
        load_benchmark(name, root, class_names=["one", "two"] * 100, label_order=order)


def test_spec_needs_its_task_files() -> None:
    with pytest.raises(ValueError, match="needs annotations"):
        BenchmarkSpec(name="x", task="part", default_root="x", images="i", classes=CocoNames())
