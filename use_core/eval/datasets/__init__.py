"""Benchmark datasets (paper §4.3–4.4 and our shapes corpus): a table of layouts, one loader.

A :class:`Benchmark` is a list of :class:`BenchmarkSample` ``(image_path, gt, meta)`` plus its
class names. For *semantic* benchmarks ``gt`` is the label-map file; :meth:`Benchmark.read_label`
turns it into an ``(H, W)`` ``int32`` map with values ``0..K-1`` or ``benchmark.ignore_index``.
For *part* benchmarks ``gt`` is the image's list of COCO annotation dicts and
``benchmark.coco_gt`` the whole COCO document (for :func:`use_core.eval.metrics.mask_map`).

Each benchmark is one :class:`BenchmarkSpec` row of :data:`BENCHMARKS` (:mod:`.spec`): its folder
under the data root, image / label folders and suffixes (or the COCO file), the label encoding
and a class source; :func:`load_benchmark` reads any row (:mod:`.loader`). A new layout of a
known kind is a new row. ``BENCHMARKS[name].layout`` renders a row's expected tree (errors
quote it); the rows below are the reference for each layout's folders, suffixes and encoding.

Shipped class lists (``use_core/resources/*.txt``): ADE-150, PC-59, the 91 COCO-stuff stuff
classes, PartImageNet's 40 parts and 11 super-categories. The ADE-847 and PC-459 lists are not
shipped: they are read from the dataset folder (files named in their rows) or passed as
``class_names``.
"""

from __future__ import annotations

from pathlib import Path

from use_core.eval.datasets.loader import Benchmark, BenchmarkSample, load_spec, read_label_map
from use_core.eval.datasets.shapes import ShapesNames
from use_core.eval.datasets.spec import (
    BenchmarkLayoutError,
    BenchmarkSpec,
    ClassInfo,
    ClassSource,
    CocoNames,
    DatasetNames,
    Names,
    ShippedNames,
    Task,
    check_class_count,
    load_class_names,
    read_class_names_file,
)

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "BenchmarkLayoutError",
    "BenchmarkSample",
    "BenchmarkSpec",
    "ClassInfo",
    "ClassSource",
    "CocoNames",
    "DatasetNames",
    "ShapesNames",
    "ShippedNames",
    "Task",
    "benchmark_root",
    "check_class_count",
    "load_benchmark",
    "load_class_names",
    "load_spec",
    "read_class_names_file",
    "read_label_map",
]

_SHAPES_NOTE = "(generate it with use_core.data.shapes.scenes.generate_shapes)"

BENCHMARKS: dict[str, BenchmarkSpec] = {
    spec.name: spec
    for spec in (
        BenchmarkSpec(
            name="ade150",
            task="semantic",
            default_root="ADEChallengeData2016",
            images="images/validation",
            labels="annotations/validation",
            reduce_zero_label=True,
            num_classes=150,
            classes=ShippedNames("ade20k_150"),
        ),
        BenchmarkSpec(
            name="ade847",
            task="semantic",
            default_root="ADE20K_2021_17_01",
            images="images_detectron2/validation",
            labels="annotations_detectron2/validation",
            label_suffix=".tif",
            label_dtype="uint16",
            ignore_index=65535,
            num_classes=847,
            classes=DatasetNames(("ade847_classes.txt",), order="detectron2 order"),
            note="(written by detectron2/Mask2Former datasets/prepare_ade20k_full_sem_seg.py)",
        ),
        BenchmarkSpec(
            name="pc59",
            task="semantic",
            default_root="VOCdevkit/VOC2010",
            images="JPEGImages",
            labels="annotations_detectron2/pc59_val",
            every_image_labelled=False,
            num_classes=59,
            classes=ShippedNames("pascal_context_59"),
            note="(written by the OVSeg/SAN prepare_pascal_context.py)",
        ),
        BenchmarkSpec(
            name="pc459",
            task="semantic",
            default_root="VOCdevkit/VOC2010",
            images="JPEGImages",
            labels="annotations_detectron2/pc459_val",
            label_suffix=".tif",
            label_dtype="uint16",
            ignore_index=65535,
            every_image_labelled=False,
            num_classes=459,
            classes=DatasetNames(("pc459_classes.txt", "labels.txt")),
        ),
        BenchmarkSpec(
            name="partimagenet",
            task="part",
            default_root="PartImageNet",
            images="images/val",
            annotations="annotations/val.json",
            num_classes=40,
            classes=CocoNames(background=("coco_stuff_91", "partimagenet_supercategories")),
        ),
        BenchmarkSpec(
            name="shapes",
            task="semantic",
            default_root="shapes",
            images="val/images",
            image_suffix=".png",
            labels="val/semantic",
            classes=ShapesNames("semantic"),
            note=_SHAPES_NOTE,
        ),
        BenchmarkSpec(
            name="shapes_parts",
            task="part",
            default_root="shapes",
            images="val/images",
            annotations="val/parts.json",
            classes=ShapesNames("parts"),
            note=_SHAPES_NOTE,
        ),
    )
}
"""Benchmark name → its layout; :func:`load_benchmark` reads any row."""


def _spec(name: str) -> BenchmarkSpec:
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(sorted(BENCHMARKS))}")
    return BENCHMARKS[name]


def benchmark_root(name: str, data_root: str | Path) -> Path:
    """The default folder of benchmark ``name`` under ``data_root``."""
    return Path(data_root) / _spec(name).default_root


def load_benchmark(name: str, root: str | Path, class_names: Names = None) -> Benchmark:
    """Load benchmark ``name`` (a key of :data:`BENCHMARKS`) from its folder ``root``.

    ``class_names`` overrides the shipped / dataset class list (same length required).
    Raises :class:`BenchmarkLayoutError` naming the expected layout when a folder or file is
    missing, ``ValueError`` when images and annotations do not pair up.
    """
    spec = _spec(name)
    root = Path(root)
    if not root.is_dir():
        raise BenchmarkLayoutError(
            f"benchmark {name!r}: root folder {root} not found (default: <data root>/"
            f"{spec.default_root}).\nExpected layout under it:\n{spec.layout}"
        )
    return load_spec(spec, root, class_names)
