"""Benchmark loaders for the on-disk layouts users already have (paper §4.3–4.4) and our shapes.

A :class:`Benchmark` is a list of :class:`BenchmarkSample` ``(image_path, gt, meta)`` plus its
class names. For *semantic* benchmarks ``gt`` is the label-map file; :meth:`Benchmark.read_label`
turns it into an ``(H, W)`` ``int32`` map with values ``0..K-1`` or ``benchmark.ignore_index``
(each format's conversion, e.g. ADE-150's ``reduce_zero_label``, is done there). For *part*
benchmarks ``gt`` is the image's list of COCO annotation dicts and ``benchmark.coco_gt`` the whole
COCO document (for :func:`use_core.eval.metrics.mask_map`).

Supported layouts, relative to the benchmark root (``BENCHMARKS[name].default_root`` under the
data root):

=============  ==========================================================================
ade150         ``ADEChallengeData2016/``: ``images/validation/*.jpg``,
               ``annotations/validation/*.png`` (uint8, 0 = other/ignore, 1..150 → 0..149)
ade847         ``ADE20K_2021_17_01/`` as written by detectron2's
               ``prepare_ade20k_full_sem_seg.py``: ``images_detectron2/validation/*.jpg``,
               ``annotations_detectron2/validation/*.tif`` (uint16 0..846, 65535 ignore);
               class names from ``ade847_classes.txt`` (847 lines, detectron2 order)
pc59           ``VOCdevkit/VOC2010/`` as written by the OVSeg/SAN ``prepare_pascal_context.py``:
               ``JPEGImages/*.jpg``, ``annotations_detectron2/pc59_val/*.png``
               (uint8 0..58, 255 ignore); the annotation files define the val set
pc459          same root: ``annotations_detectron2/pc459_val/*.tif`` (uint16 0..458, 65535
               ignore); class names from ``pc459_classes.txt`` or the dataset's ``labels.txt``
               (``"1: accordion"`` lines, ids 1..459)
partimagenet   ``PartImageNet/``: ``annotations/val.json`` (COCO, 40 part categories),
               ``images/val/<file_name>`` (or ``images/val/<wnid>/<file_name>``)
shapes         our corpus (:mod:`use_core.data.shapes.scenes`): ``classes.json`` ("semantic"),
               ``val/images/*.png``, ``val/semantic/*.png`` (uint8, 255 ignore)
shapes_parts   same root: ``val/parts.json`` (COCO parts, ids = ``classes.json["parts"]`` index)
=============  ==========================================================================

Shipped class lists (``use_core/resources/*.txt``): ADE-150, PC-59, the 91 COCO-stuff stuff
classes, PartImageNet's 40 parts and 11 super-categories. The ADE-847 and PC-459 lists are not
shipped: they are read from the dataset folder (files named above) or passed as ``class_names``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
from PIL import Image

Task = Literal["semantic", "part"]


class BenchmarkLayoutError(FileNotFoundError):
    """A benchmark folder that is missing or does not have the expected layout."""


class BenchmarkSample(NamedTuple):
    """One evaluation image: ``image_path``, ``gt`` (label-map path or COCO annotations), ``meta``.

    Semantic ``meta``: ``stem``, ``index``; part ``meta``: ``image_id``, ``file_name``, ``height``,
    ``width``.
    """

    image_path: Path
    gt: Path | list[dict[str, Any]]
    meta: dict[str, Any]


@cache
def _resource_names(filename: str) -> tuple[str, ...]:
    text = resources.files("use_core").joinpath("resources", filename).read_text("utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def load_class_names(resource: str) -> list[str]:
    """A shipped class list by file stem: ``ade20k_150``, ``pascal_context_59``,
    ``coco_stuff_91``, ``partimagenet_parts``, ``partimagenet_supercategories``."""
    return list(_resource_names(f"{resource}.txt"))


# ------------------------------------------------------------------ label-map readers


def _read_label_array(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        arr = np.asarray(im)
    if arr.ndim != 2:
        raise ValueError(f"{path}: expected a single-channel label map, got shape {arr.shape}")
    if arr.dtype.kind not in "iub":
        raise ValueError(f"{path}: expected integer labels, got dtype {arr.dtype}")
    return arr


def _read_identity(path: Path) -> np.ndarray:
    return _read_label_array(path).astype(np.int32)


def _read_reduce_zero(path: Path) -> np.ndarray:
    """ADE-150 raw annotation: 0 (other) → 255 ignore, v → v - 1 (mmseg reduce_zero_label)."""
    raw = _read_label_array(path).astype(np.int32)
    out = raw - 1
    out[raw == 0] = 255
    return out


# ------------------------------------------------------------------ benchmark object


@dataclass
class Benchmark:
    """A loaded benchmark: samples in a fixed (sorted) order and what is needed to score them.

    Attributes:
      class_names: names of label ids ``0..K-1`` (semantic) or of ``category_ids`` (part).
      ignore_index: label value to ignore in ``read_label`` output (semantic benchmarks).
      category_ids: part benchmarks: COCO category id of each entry of ``class_names``.
      background_names: part benchmarks: extra vocabulary used as distractors (paper §4.4).
      coco_gt: part benchmarks: the COCO ground-truth document.
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


@dataclass(frozen=True)
class BenchmarkSpec:
    """Registry entry: how to find and read one benchmark."""

    name: str
    task: Task
    default_root: str  # relative to the data root
    ignore_index: int
    num_classes: int | None  # None: read from the dataset (shapes)
    layout: str  # human-readable expected layout, quoted in errors
    loader: Callable[[BenchmarkSpec, Path, Sequence[str] | None], Benchmark]


# ------------------------------------------------------------------ helpers


def _require_dir(spec: BenchmarkSpec, path: Path) -> Path:
    if not path.is_dir():
        raise BenchmarkLayoutError(
            f"benchmark {spec.name!r}: folder {path} not found.\n"
            f"Expected layout under the benchmark root:\n{spec.layout}"
        )
    return path


def _require_file(spec: BenchmarkSpec, path: Path) -> Path:
    if not path.is_file():
        raise BenchmarkLayoutError(
            f"benchmark {spec.name!r}: file {path} not found.\n"
            f"Expected layout under the benchmark root:\n{spec.layout}"
        )
    return path


def _examples(names: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(sorted(names)[:n])
    return shown + (f", … ({len(names)} in all)" if len(names) > n else "")


def _pair_by_stem(
    spec: BenchmarkSpec,
    image_dir: Path,
    image_ext: str,
    label_dir: Path,
    label_ext: str,
    every_image_labelled: bool,
) -> list[tuple[Path, Path]]:
    """(image, label) pairs matched by file stem, sorted by stem.

    Every label file must have its image; with ``every_image_labelled`` every image must also
    have its label (otherwise extra images, e.g. VOC's non-val JPEGs, are simply not used).
    """
    images = {p.stem: p for p in _require_dir(spec, image_dir).glob(f"*{image_ext}")}
    labels = {p.stem: p for p in _require_dir(spec, label_dir).glob(f"*{label_ext}")}
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
    if every_image_labelled:
        no_label = [s for s in images if s not in labels]
        if no_label:
            raise ValueError(
                f"benchmark {spec.name!r}: {len(no_label)} images in {image_dir} have no "
                f"{label_ext} label map in {label_dir}: {_examples(no_label)}"
            )
    return [(images[s], labels[s]) for s in sorted(labels)]


def _semantic_benchmark(
    spec: BenchmarkSpec,
    root: Path,
    pairs: list[tuple[Path, Path]],
    class_names: list[str],
    reader: Callable[[Path], np.ndarray],
    ignore_index: int | None = None,
) -> Benchmark:
    samples = [
        BenchmarkSample(image, label, {"stem": image.stem, "index": i})
        for i, (image, label) in enumerate(pairs)
    ]
    return Benchmark(
        name=spec.name,
        task="semantic",
        root=root,
        class_names=class_names,
        ignore_index=spec.ignore_index if ignore_index is None else ignore_index,
        samples=samples,
        label_reader=reader,
    )


_NUMBERED = re.compile(r"^\s*(\d+)\s*:\s*(.+?)\s*$")


def read_class_names_file(path: Path, expected: int | None = None) -> list[str]:
    """Class names from a text file: one name per line, or ``"<id>: <name>"`` lines.

    Numbered files (e.g. Pascal-Context's ``labels.txt``, ids 1..N) are ordered by id and must
    number ``1..N`` without gaps; label value ``i`` then names id ``i + 1``. A ``.json`` file
    must hold a list of strings. Raises ``ValueError`` when the count differs from ``expected``.
    """
    if path.suffix == ".json":
        names = json.loads(path.read_text("utf-8"))
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{path}: expected a JSON list of class-name strings")
    else:
        lines = [ln for ln in path.read_text("utf-8").splitlines() if ln.strip()]
        matches = [_NUMBERED.match(ln) for ln in lines]
        if lines and all(matches):
            numbered = {int(m.group(1)): m.group(2) for m in matches if m}
            ids = sorted(numbered)
            if ids != list(range(1, len(lines) + 1)):
                raise ValueError(f"{path}: numbered class ids must be 1..{len(lines)} exactly")
            names = [numbered[i] for i in ids]
        else:
            names = [ln.strip() for ln in lines]
    if expected is not None and len(names) != expected:
        raise ValueError(f"{path}: expected {expected} class names, found {len(names)}")
    return names


def _names_from_dataset(
    spec: BenchmarkSpec, root: Path, candidates: Sequence[str], given: Sequence[str] | None
) -> list[str]:
    expected = spec.num_classes
    if given is not None:
        if expected is not None and len(given) != expected:
            raise ValueError(f"{spec.name}: expected {expected} class names, got {len(given)}")
        return list(given)
    for rel in candidates:
        if (root / rel).is_file():
            return read_class_names_file(root / rel, expected)
    raise BenchmarkLayoutError(
        f"benchmark {spec.name!r}: its {expected} class names are not shipped with use_core; "
        f"put them in {' or '.join(str(root / c) for c in candidates)} (one name per line, "
        f"label-id order) or pass class_names."
    )


def _given_or_shipped(spec: BenchmarkSpec, resource: str, given: Sequence[str] | None) -> list[str]:
    names = list(given) if given is not None else load_class_names(resource)
    if spec.num_classes is not None and len(names) != spec.num_classes:
        raise ValueError(f"{spec.name}: expected {spec.num_classes} class names, got {len(names)}")
    return names


# ------------------------------------------------------------------ loaders


def _load_ade150(spec: BenchmarkSpec, root: Path, names: Sequence[str] | None) -> Benchmark:
    pairs = _pair_by_stem(
        spec,
        root / "images" / "validation",
        ".jpg",
        root / "annotations" / "validation",
        ".png",
        every_image_labelled=True,
    )
    classes = _given_or_shipped(spec, "ade20k_150", names)
    return _semantic_benchmark(spec, root, pairs, classes, _read_reduce_zero)


def _load_ade847(spec: BenchmarkSpec, root: Path, names: Sequence[str] | None) -> Benchmark:
    pairs = _pair_by_stem(
        spec,
        root / "images_detectron2" / "validation",
        ".jpg",
        root / "annotations_detectron2" / "validation",
        ".tif",
        every_image_labelled=True,
    )
    classes = _names_from_dataset(spec, root, ["ade847_classes.txt"], names)
    return _semantic_benchmark(spec, root, pairs, classes, _read_identity)


def _load_pc59(spec: BenchmarkSpec, root: Path, names: Sequence[str] | None) -> Benchmark:
    pairs = _pair_by_stem(
        spec,
        root / "JPEGImages",
        ".jpg",
        root / "annotations_detectron2" / "pc59_val",
        ".png",
        every_image_labelled=False,
    )
    classes = _given_or_shipped(spec, "pascal_context_59", names)
    return _semantic_benchmark(spec, root, pairs, classes, _read_identity)


def _load_pc459(spec: BenchmarkSpec, root: Path, names: Sequence[str] | None) -> Benchmark:
    pairs = _pair_by_stem(
        spec,
        root / "JPEGImages",
        ".jpg",
        root / "annotations_detectron2" / "pc459_val",
        ".tif",
        every_image_labelled=False,
    )
    classes = _names_from_dataset(spec, root, ["pc459_classes.txt", "labels.txt"], names)
    return _semantic_benchmark(spec, root, pairs, classes, _read_identity)


def _read_shapes_classes(spec: BenchmarkSpec, root: Path) -> dict[str, Any]:
    doc = json.loads(_require_file(spec, root / "classes.json").read_text("utf-8"))
    for key in ("semantic", "parts"):
        if not isinstance(doc.get(key), list):
            raise ValueError(f"{root / 'classes.json'}: missing list {key!r}")
    return doc


def _load_shapes(spec: BenchmarkSpec, root: Path, names: Sequence[str] | None) -> Benchmark:
    _require_dir(spec, root)
    doc = _read_shapes_classes(spec, root)
    pairs = _pair_by_stem(
        spec,
        root / "val" / "images",
        ".png",
        root / "val" / "semantic",
        ".png",
        every_image_labelled=True,
    )
    classes = list(names) if names is not None else list(doc["semantic"])
    if len(classes) != len(doc["semantic"]):
        raise ValueError(f"shapes: expected {len(doc['semantic'])} class names, got {len(classes)}")
    ignore = int(doc.get("ignore_index", spec.ignore_index))
    return _semantic_benchmark(spec, root, pairs, classes, _read_identity, ignore)


def _coco_part_benchmark(
    spec: BenchmarkSpec,
    root: Path,
    coco: dict[str, Any],
    image_dir: Path,
    class_names: list[str],
    background: list[str],
) -> Benchmark:
    cats = sorted(coco["categories"], key=lambda c: c["id"])
    by_image: dict[Any, list[dict[str, Any]]] = {img["id"]: [] for img in coco["images"]}
    for ann in coco["annotations"]:
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
        class_names=class_names,
        ignore_index=spec.ignore_index,
        samples=samples,
        category_ids=[c["id"] for c in cats],
        background_names=background,
        coco_gt=coco,
    )


def _load_partimagenet(spec: BenchmarkSpec, root: Path, names: Sequence[str] | None) -> Benchmark:
    _require_dir(spec, root)
    ann_path = _require_file(spec, root / "annotations" / "val.json")
    coco = json.loads(ann_path.read_text("utf-8"))
    cats = sorted(coco.get("categories", []), key=lambda c: c["id"])
    if len(cats) != spec.num_classes:
        raise ValueError(
            f"{ann_path}: expected {spec.num_classes} part categories, found {len(cats)}"
        )
    # The annotation file's names are authoritative (they are what the ids mean).
    classes = list(names) if names is not None else [c["name"] for c in cats]
    if len(classes) != len(cats):
        raise ValueError(f"partimagenet: expected {len(cats)} class names, got {len(classes)}")
    background = load_class_names("coco_stuff_91") + load_class_names(
        "partimagenet_supercategories"
    )
    image_dir = _require_dir(spec, root / "images" / "val")
    return _coco_part_benchmark(spec, root, coco, image_dir, classes, background)


def _load_shapes_parts(spec: BenchmarkSpec, root: Path, names: Sequence[str] | None) -> Benchmark:
    _require_dir(spec, root)
    doc = _read_shapes_classes(spec, root)
    ann_path = _require_file(spec, root / "val" / "parts.json")
    coco = json.loads(ann_path.read_text("utf-8"))
    cats = sorted(coco.get("categories", []), key=lambda c: c["id"])
    if [c["name"] for c in cats] != list(doc["parts"]) or [c["id"] for c in cats] != list(
        range(len(cats))
    ):
        raise ValueError(f"{ann_path}: categories do not match classes.json 'parts' (ids 0..N-1)")
    classes = list(names) if names is not None else list(doc["parts"])
    if len(classes) != len(cats):
        raise ValueError(f"shapes_parts: expected {len(cats)} class names, got {len(classes)}")
    # Background vocabulary (the analogue of paper §4.4's COCO-stuff + super-categories):
    # stuff, whole objects and primitive shapes.
    background = [*doc.get("stuff", []), *doc.get("objects", []), *doc.get("shapes", [])]
    image_dir = _require_dir(spec, root / "val" / "images")
    return _coco_part_benchmark(spec, root, coco, image_dir, classes, background)


# ------------------------------------------------------------------ registry

_ADE150_LAYOUT = """\
  images/validation/*.jpg
  annotations/validation/*.png   uint8; 0 = other (ignored), 1..150 = classes (→ 0..149)"""
_ADE847_LAYOUT = """\
  images_detectron2/validation/*.jpg
  annotations_detectron2/validation/*.tif   uint16; 0..846 = classes, 65535 = ignore
  ade847_classes.txt                        847 class names, one per line (detectron2 order)
(written by detectron2/Mask2Former datasets/prepare_ade20k_full_sem_seg.py)"""
_PC59_LAYOUT = """\
  JPEGImages/*.jpg
  annotations_detectron2/pc59_val/*.png   uint8; 0..58 = classes, 255 = ignore
(the annotation files define the validation set; written by prepare_pascal_context.py)"""
_PC459_LAYOUT = """\
  JPEGImages/*.jpg
  annotations_detectron2/pc459_val/*.tif   uint16; 0..458 = classes, 65535 = ignore
  pc459_classes.txt or labels.txt          459 class names ("name" or "1: name" lines)"""
_PARTIMAGENET_LAYOUT = """\
  annotations/val.json   COCO instances of the 40 part categories
  images/val/<file_name> (or images/val/<wnid>/<file_name>)"""
_SHAPES_LAYOUT = """\
  classes.json            class lists ("semantic", "parts", ...)
  val/images/*.png
  val/semantic/*.png      uint8; index into classes.json "semantic", 255 = ignore
(generate it with use_core.data.shapes.scenes.generate_shapes)"""
_SHAPES_PARTS_LAYOUT = """\
  classes.json            class lists ("semantic", "parts", ...)
  val/images/*.png
  val/parts.json          COCO parts, category_id = index into classes.json "parts"
(generate it with use_core.data.shapes.scenes.generate_shapes)"""

_SPECS = (
    BenchmarkSpec(
        name="ade150",
        task="semantic",
        default_root="ADEChallengeData2016",
        ignore_index=255,
        num_classes=150,
        layout=_ADE150_LAYOUT,
        loader=_load_ade150,
    ),
    BenchmarkSpec(
        name="ade847",
        task="semantic",
        default_root="ADE20K_2021_17_01",
        ignore_index=65535,
        num_classes=847,
        layout=_ADE847_LAYOUT,
        loader=_load_ade847,
    ),
    BenchmarkSpec(
        name="pc59",
        task="semantic",
        default_root="VOCdevkit/VOC2010",
        ignore_index=255,
        num_classes=59,
        layout=_PC59_LAYOUT,
        loader=_load_pc59,
    ),
    BenchmarkSpec(
        name="pc459",
        task="semantic",
        default_root="VOCdevkit/VOC2010",
        ignore_index=65535,
        num_classes=459,
        layout=_PC459_LAYOUT,
        loader=_load_pc459,
    ),
    BenchmarkSpec(
        name="partimagenet",
        task="part",
        default_root="PartImageNet",
        ignore_index=255,  # unused: parts are scored as COCO masks
        num_classes=40,
        layout=_PARTIMAGENET_LAYOUT,
        loader=_load_partimagenet,
    ),
    BenchmarkSpec(
        name="shapes",
        task="semantic",
        default_root="shapes",
        ignore_index=255,
        num_classes=None,
        layout=_SHAPES_LAYOUT,
        loader=_load_shapes,
    ),
    BenchmarkSpec(
        name="shapes_parts",
        task="part",
        default_root="shapes",
        ignore_index=255,  # unused: parts are scored as COCO masks
        num_classes=None,
        layout=_SHAPES_PARTS_LAYOUT,
        loader=_load_shapes_parts,
    ),
)
BENCHMARKS: dict[str, BenchmarkSpec] = {spec.name: spec for spec in _SPECS}


def _spec(name: str) -> BenchmarkSpec:
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(sorted(BENCHMARKS))}")
    return BENCHMARKS[name]


def benchmark_root(name: str, data_root: str | Path) -> Path:
    """The default folder of benchmark ``name`` under ``data_root``."""
    return Path(data_root) / _spec(name).default_root


def load_benchmark(
    name: str, root: str | Path, class_names: Sequence[str] | None = None
) -> Benchmark:
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
    return spec.loader(spec, root, class_names)
