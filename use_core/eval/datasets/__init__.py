"""Benchmark datasets (paper §4.3–4.4 and our shapes corpus): a table of layouts, one loader.

A :class:`Benchmark` is a list of :class:`BenchmarkSample` ``(image_path, gt, meta)`` plus its
class names. For *semantic* benchmarks ``gt`` is the label-map file; :meth:`Benchmark.read_label`
turns it into an ``(H, W)`` ``int32`` map with values ``0..K-1`` or ``benchmark.ignore_index``.
For *part* benchmarks ``gt`` is the image's list of COCO annotation dicts and
``benchmark.coco_gt`` the whole COCO document (for :func:`use_core.eval.metrics.mask_map`).

Each benchmark has one or more community layouts, the :class:`Layout` rows of :data:`LAYOUTS`
(:mod:`.layouts`): the folder names a preparation script writes, and a :class:`BenchmarkSpec`
(:mod:`.spec`) with the image / label folders and suffixes (or the COCO file), the label encoding
and a class source. :func:`load_benchmark` recognises the layout under a root by its folders
(:func:`resolve_layout`) and reads it with the one generic loader (:mod:`.loader`); a new
preparation of a known benchmark is a new row. :data:`BENCHMARKS` holds each benchmark's default
layout; ``spec.layout`` renders a row's expected tree (errors quote it).

Shipped class lists (``use_core/resources/*.txt``, each naming its source in a ``#`` header):
ADE-150, ADE-847, PC-59 in OVSeg's and in the Detail-API order, PC-459, the 91 COCO-stuff stuff
classes, PartImageNet's 40 parts and 11 super-categories.
"""

from __future__ import annotations

from pathlib import Path

from use_core.eval.datasets.layouts import LABEL_ORDERS, LAYOUTS, Layout, Resolved, resolve_layout
from use_core.eval.datasets.loader import (
    Benchmark,
    BenchmarkSample,
    annotation_mask,
    check_partimagenet_split,
    load_spec,
    read_label_map,
    repair_polygons,
)
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
    "LABEL_ORDERS",
    "LAYOUTS",
    "Layout",
    "Resolved",
    "ShapesNames",
    "ShippedNames",
    "annotation_mask",
    "repair_polygons",
    "Task",
    "benchmark_root",
    "check_class_count",
    "entry_root",
    "load_benchmark",
    "load_class_names",
    "load_spec",
    "read_class_names_file",
    "read_label_map",
    "resolve_layout",
]

BENCHMARKS: dict[str, BenchmarkSpec] = {name: lays[0].spec for name, lays in LAYOUTS.items()}
"""Benchmark name → its default layout (:data:`LAYOUTS` holds every known one)."""


def _spec(name: str) -> BenchmarkSpec:
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(sorted(BENCHMARKS))}")
    return BENCHMARKS[name]


def benchmark_root(name: str, data_root: str | Path) -> Path:
    """The default folder of benchmark ``name`` under ``data_root``."""
    return Path(data_root) / _spec(name).default_root


def entry_root(name: str, root: str | Path | None, data_root: str | Path) -> Path:
    """Where an ``eval.benchmarks`` entry's benchmark is: its ``root`` if given, else its
    default folder under ``data_root`` when that exists, else ``data_root`` itself (searched
    for every layout's folder names, e.g. ODISE's ``ade/ADEChallengeData2016``)."""
    if root is not None:
        return Path(root)
    default = benchmark_root(name, data_root)
    return default if default.is_dir() else Path(data_root)


def load_benchmark(
    name: str, root: str | Path, class_names: Names = None, label_order: str | None = None
) -> Benchmark:
    """Load benchmark ``name`` (a key of :data:`BENCHMARKS`) from ``root``: its folder in any
    layout of :data:`LAYOUTS`, or a data root holding that folder.

    ``class_names`` overrides the shipped class list (same length required); ``label_order``
    (``ovseg`` | ``detail``) is required where two preparations write the same PC-59 paths.
    Raises :class:`BenchmarkLayoutError` naming the layouts looked for when none (or several)
    is found, ``ValueError`` when images and annotations do not pair up.
    """
    _spec(name)
    resolved = resolve_layout(name, root, label_order)
    bench = load_spec(resolved.spec, resolved.base, class_names)
    bench.layout = resolved.layout.name
    if name == "partimagenet":
        check_partimagenet_split(bench)
    return bench
