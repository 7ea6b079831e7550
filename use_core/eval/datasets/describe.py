"""Look before you run: what a benchmark folder holds, as `use describe-benchmark` prints it.

:func:`describe_benchmark` loads the benchmark in whichever layout it recognises and counts,
over the first ``limit`` images, the labelled pixels of each class (semantic) or the instances
of each part (part benchmarks) and the ignored pixels; :func:`description_table` renders the
result for a terminal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from use_core.eval.datasets.layouts import LAYOUTS

DEFAULT_LIMIT = 20


def describe_benchmark(
    name: str, root: str | Path, label_order: str | None = None, limit: int = DEFAULT_LIMIT
) -> dict[str, Any]:
    """One JSON-able dict describing benchmark ``name`` under ``root``.

    Keys: ``benchmark``, ``layout`` (the recognised preparation), ``task``, ``script`` (what
    writes it), ``root`` (the folder read), ``images``, ``num_classes``, ``classes`` (id order),
    ``pixels_by_class`` (semantic: name → labelled pixels over the first ``limit`` images;
    part: name → instances), ``ignored_pixels``, ``unknown_pixels`` (values neither a class nor
    the ignore value), ``described_images``, ``repaired_polygons`` and ``warnings``.
    Raises :class:`~use_core.eval.datasets.BenchmarkLayoutError` for an unknown or ambiguous
    layout.
    """
    from use_core.eval.datasets import load_benchmark

    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    bench = load_benchmark(name, root, label_order=label_order)
    samples = bench.samples[:limit]
    counts = np.zeros(bench.num_classes, dtype=np.int64)
    ignored = unknown = 0
    if bench.task == "semantic":
        for sample in samples:
            label = bench.read_label(sample)
            valid = (label >= 0) & (label < bench.num_classes)
            counts += np.bincount(label[valid], minlength=bench.num_classes)
            n_ignored = int((label == bench.ignore_index).sum())
            ignored += n_ignored
            unknown += int(label.size - valid.sum() - n_ignored)
    else:
        column = {cid: i for i, cid in enumerate(bench.category_ids)}
        for sample in samples:
            for ann in sample.gt if isinstance(sample.gt, list) else []:
                if ann["category_id"] in column:
                    counts[column[ann["category_id"]]] += 1
                else:
                    unknown += 1
    layout = next(lay for lay in LAYOUTS[name] if lay.name == bench.layout)
    return {
        "benchmark": name,
        "layout": bench.layout,
        "task": bench.task,
        "script": layout.script,
        "root": str(bench.root),
        "images": len(bench),
        "described_images": len(samples),
        "num_classes": bench.num_classes,
        "classes": list(bench.class_names),
        "pixels_by_class": {n: int(c) for n, c in zip(bench.class_names, counts, strict=True)},
        "ignored_pixels": ignored,
        "unknown_pixels": unknown,
        "repaired_polygons": bench.repaired_polygons,
        "warnings": list(bench.warnings),
    }


def description_table(doc: dict[str, Any], top: int = 25) -> Any:
    """A rich renderable of :func:`describe_benchmark`'s dict: a summary and the ``top``
    classes by count (every class when ``top`` is 0)."""
    from rich.console import Group
    from rich.table import Table

    unit = "instances" if doc["task"] == "part" else "pixels"
    summary = Table(show_header=False, title=f"{doc['benchmark']} ({doc['layout']} layout)")
    for key in ("root", "script", "images", "num_classes", "ignored_pixels", "unknown_pixels"):
        summary.add_row(key, str(doc[key]))
    summary.add_row("repaired_polygons", str(doc["repaired_polygons"]))
    for warning in doc["warnings"]:
        summary.add_row("warning", warning)
    ranked = sorted(doc["pixels_by_class"].items(), key=lambda kv: -kv[1])
    shown = ranked[:top] if top else ranked
    classes = Table(title=f"labelled {unit} over the first {doc['described_images']} images")
    classes.add_column("id", justify="right")
    classes.add_column("class")
    classes.add_column(unit, justify="right")
    ids = {n: i for i, n in enumerate(doc["classes"])}
    for name, count in shown:
        classes.add_row(str(ids[name]), name, f"{count:,}")
    if len(shown) < len(ranked):
        classes.caption = f"{len(ranked) - len(shown)} more classes (--json lists all)"
    return Group(summary, classes)
