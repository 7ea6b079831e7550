"""The generic loader: any :class:`BenchmarkSpec` row → a :class:`Benchmark` of samples.

Semantic rows: images and label maps paired by file stem, sorted by stem; labels read by
:func:`read_label_map`. Part rows: the COCO file's images sorted by id, each with its list of
annotation dicts (possibly empty).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from use_core.eval.datasets.spec import BenchmarkLayoutError, BenchmarkSpec, Names, Task

log = logging.getLogger(__name__)


class BenchmarkSample(NamedTuple):
    """One evaluation image: ``image_path``, ``gt`` (label-map path or COCO annotations), ``meta``.

    Semantic ``meta``: ``stem``, ``index``; part ``meta``: ``image_id``, ``file_name``, ``height``,
    ``width``.
    """

    image_path: Path
    gt: Path | list[dict[str, Any]]
    meta: dict[str, Any]


# ------------------------------------------------------------------ label maps


def _read_label_array(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        arr = np.asarray(im)
    if arr.ndim != 2:
        raise ValueError(f"{path}: expected a single-channel label map, got shape {arr.shape}")
    if arr.dtype.kind not in "iub":
        raise ValueError(f"{path}: expected integer labels, got dtype {arr.dtype}")
    return arr


def read_label_map(path: Path, reduce_zero_label: bool = False, ignore: int = 255) -> np.ndarray:
    """``(H, W)`` int32 label map of a single-channel integer image (PNG, TIFF, any depth).

    ``reduce_zero_label`` (mmseg's, ADE-150): raw 0 (other) → ``ignore``, ``v`` → ``v - 1``.
    """
    raw = _read_label_array(path).astype(np.int32)
    if not reduce_zero_label:
        return raw
    out = raw - 1
    out[raw == 0] = ignore
    return out


@dataclass
class Benchmark:
    """A loaded benchmark: samples in a fixed (sorted) order and what is needed to score them.

    Attributes:
      class_names: names of label ids ``0..K-1`` (semantic) or of ``category_ids`` (part).
      ignore_index: label value to ignore in ``read_label`` output (semantic benchmarks).
      category_ids: part benchmarks: COCO category id of each entry of ``class_names``.
      background_names: part benchmarks: extra vocabulary used as distractors (paper §4.4).
      coco_gt: part benchmarks: the COCO ground-truth document.
      layout: the recognised layout (a :class:`~use_core.eval.datasets.layouts.Layout` name).
      repaired_polygons: part benchmarks: polygons of < 3 points padded (see
        :func:`repair_polygons`).
      warnings: what the loader found unexpected but not fatal (e.g. a split's image count).
    """

    name: str
    task: Task
    root: Path
    class_names: list[str]
    ignore_index: int
    samples: list[BenchmarkSample]
    label_reader: Callable[[Path], np.ndarray] | None = None
    category_ids: list[int] = field(default_factory=list)
    background_names: list[str] = field(default_factory=list)
    coco_gt: dict[str, Any] | None = None
    layout: str = ""
    repaired_polygons: int = 0
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[BenchmarkSample]:
        return iter(self.samples)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def read_label(self, gt: BenchmarkSample | Path | list[dict[str, Any]]) -> np.ndarray:
        """(H, W) int32 label map with values in ``0..K-1`` or ``ignore_index``."""
        if self.label_reader is None:
            raise TypeError(f"{self.name} is a {self.task} benchmark without label maps")
        path = gt.gt if isinstance(gt, BenchmarkSample) else gt
        if not isinstance(path, Path):
            raise TypeError(f"expected a label-map path, got {type(path).__name__}")
        return self.label_reader(path)


# ------------------------------------------------------------------ part annotations


def repair_polygons(segmentation: Any, where: str = "annotation") -> tuple[Any, int]:
    """Polygons of fewer than 3 points padded as VLPart's tools/partimagenet_format_json.py
    pads them (1 point ``p``: ``p, (0, 0), p``; 2 points ``p, q``: ``p, q, p``), and how many
    were padded. RLE segmentations are returned unchanged. ``ValueError`` for an empty or
    odd-length polygon."""
    if not isinstance(segmentation, list):
        return segmentation, 0
    out, repaired = [], 0
    for poly in segmentation:
        if not poly or len(poly) % 2:
            raise ValueError(f"{where}: polygon with {len(poly)} coordinates (need x, y pairs)")
        if len(poly) == 2:
            poly, repaired = [*poly, 0, 0, poly[0], poly[1]], repaired + 1
        elif len(poly) == 4:
            poly, repaired = [*poly, poly[0], poly[1]], repaired + 1
        out.append(poly)
    return out, repaired


def annotation_mask(segmentation: Any, hw: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` bool mask of a COCO segmentation: polygons, uncompressed or compressed RLE."""
    from pycocotools import mask as mask_utils

    h, w = hw
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, h, w))
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, h, w)
    else:
        from use_core.ops.rle import decode_rle

        return decode_rle(segmentation, hw)
    return np.asarray(mask_utils.decode(rle), dtype=bool)


def check_partimagenet_split(bench: Benchmark) -> None:
    """Warn (log + ``bench.warnings``) when PartImageNet is not the OOD val split."""
    from use_core.eval.datasets.layouts import PARTIMAGENET_VAL

    images, parts = PARTIMAGENET_VAL
    if len(bench) != images or bench.num_classes != parts:
        msg = (
            f"partimagenet under {bench.root}: {len(bench)} images and {bench.num_classes} parts; "
            f"the OOD val split of the paper has {images} images and {parts} parts"
        )
        log.warning(msg)
        bench.warnings.append(msg)


# ------------------------------------------------------------------ loading


def _examples(names: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(sorted(names)[:n])
    return shown + (f", … ({len(names)} in all)" if len(names) > n else "")


def _pair_by_stem(spec: BenchmarkSpec, root: Path) -> list[tuple[Path, Path]]:
    """(image, label) pairs matched by file stem, sorted by stem.

    Every label file must have its image; with ``spec.every_image_labelled`` every image must
    also have its label (otherwise extra images, e.g. VOC's non-val JPEGs, are simply not used).
    """
    image_dir, label_dir = root / spec.images, root / spec.labels
    image_ext, label_ext = spec.image_suffix, spec.label_suffix
    images = {p.stem: p for p in spec.require_dir(image_dir).glob(f"*{image_ext}")}
    labels = {p.stem: p for p in spec.require_dir(label_dir).glob(f"*{label_ext}")}
    if not labels:
        raise BenchmarkLayoutError(
            f"benchmark {spec.name!r}: no *{label_ext} label maps in {label_dir}.\n"
            f"Expected layout:\n{spec.layout}"
        )
    no_image = [s for s in labels if s not in images]
    if no_image:
        raise ValueError(
            f"benchmark {spec.name!r}: {len(no_image)} label maps in {label_dir} have no "
            f"{image_ext} image in {image_dir}: {_examples(no_image)}"
        )
    if spec.every_image_labelled:
        no_label = [s for s in images if s not in labels]
        if no_label:
            raise ValueError(
                f"benchmark {spec.name!r}: {len(no_label)} images in {image_dir} have no "
                f"{label_ext} label map in {label_dir}: {_examples(no_label)}"
            )
    return [(images[s], labels[s]) for s in sorted(labels)]


def _load_semantic(spec: BenchmarkSpec, root: Path, given: Names) -> Benchmark:
    pairs = _pair_by_stem(spec, root)
    info = spec.classes.read(spec, root, None, given)
    ignore = spec.ignore_index if info.ignore_index is None else info.ignore_index
    samples = [
        BenchmarkSample(image, label, {"stem": image.stem, "index": i})
        for i, (image, label) in enumerate(pairs)
    ]
    return Benchmark(
        name=spec.name,
        task="semantic",
        root=root,
        class_names=info.names,
        ignore_index=ignore,
        samples=samples,
        label_reader=partial(
            read_label_map, reduce_zero_label=spec.reduce_zero_label, ignore=ignore
        ),
    )


def _load_part(spec: BenchmarkSpec, root: Path, given: Names) -> Benchmark:
    ann_path = spec.require_file(root / spec.annotations)
    coco = json.loads(ann_path.read_text("utf-8"))
    cats = sorted(coco.get("categories", []), key=lambda c: c["id"])
    if spec.num_classes is not None and len(cats) != spec.num_classes:
        raise ValueError(
            f"{ann_path}: expected {spec.num_classes} part categories, found {len(cats)}"
        )
    info = spec.classes.read(spec, root, cats, given)
    image_dir = spec.require_dir(root / spec.images)
    by_image: dict[Any, list[dict[str, Any]]] = {img["id"]: [] for img in coco["images"]}
    repaired = 0
    for ann in coco["annotations"]:
        ann["segmentation"], n = repair_polygons(ann["segmentation"], f"annotation {ann.get('id')}")
        repaired += n
        if ann["image_id"] not in by_image:
            raise ValueError(
                f"{spec.name}: annotation {ann.get('id')} refers to unknown image {ann['image_id']}"
            )
        by_image[ann["image_id"]].append(ann)
    samples: list[BenchmarkSample] = []
    missing: list[str] = []
    for img in sorted(coco["images"], key=lambda im: im["id"]):
        name = img["file_name"]
        path = image_dir / name
        if not path.is_file():  # PartImageNet also ships images in per-synset folders
            alt = image_dir / name.split("_")[0] / name
            path = alt if alt.is_file() else path
        if not path.is_file():
            missing.append(name)
            continue
        meta = {k: img[k] for k in ("id", "file_name", "height", "width") if k in img}
        meta["image_id"] = img["id"]
        samples.append(BenchmarkSample(path, by_image[img["id"]], meta))
    if missing:
        raise ValueError(
            f"benchmark {spec.name!r}: {len(missing)} images of the annotation file are not in "
            f"{image_dir}: {_examples(missing)}"
        )
    return Benchmark(
        name=spec.name,
        task="part",
        root=root,
        class_names=info.names,
        ignore_index=spec.ignore_index,
        samples=samples,
        category_ids=[c["id"] for c in cats],
        background_names=list(info.background),
        coco_gt=coco,
        repaired_polygons=repaired,
    )


def load_spec(spec: BenchmarkSpec, root: Path, given: Names = None) -> Benchmark:
    """Read benchmark ``spec`` from its existing folder ``root`` (``given`` class names)."""
    return (_load_semantic if spec.task == "semantic" else _load_part)(spec, root, given)
