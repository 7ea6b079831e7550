"""The shapes corpus as a benchmark: the class source of the ``shapes`` / ``shapes_parts`` rows.

It lives with the benchmark specs (not in :mod:`use_core.data.shapes`) because data sits below
eval in the layers.

Rows of :data:`use_core.eval.datasets.BENCHMARKS` read by the generic loader; only the class names
are corpus-specific. They come from ``classes.json`` (:func:`use_core.data.shapes.vocab.
classes_document`): ``"semantic"`` names label ids (``val/semantic/*.png``, uint8), ``"parts"``
names COCO category ids ``0..N-1`` (``val/parts.json``); ``"ignore_index"`` (default 255) is the
semantic ignore value, and ``"stuff"``, ``"objects"``, ``"shapes"`` are the parts' distractor
vocabulary (the analogue of paper §4.4's COCO-stuff + super-categories).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # runtime imports are in the methods: eval.datasets builds its table from this
    from use_core.eval.datasets.spec import BenchmarkSpec, Categories, ClassInfo, Names

CLASSES_FILE = "classes.json"


def read_classes_document(spec: BenchmarkSpec, root: Path) -> dict[str, Any]:
    """``root/classes.json`` with its ``"semantic"`` and ``"parts"`` lists checked."""
    path = spec.require_file(root / CLASSES_FILE)
    doc = json.loads(path.read_text("utf-8"))
    for key in ("semantic", "parts"):
        if not isinstance(doc.get(key), list):
            raise ValueError(f"{path}: missing list {key!r}")
    return doc


@dataclass(frozen=True)
class ShapesNames:
    """Class names ``classes.json[key]`` (a :class:`use_core.eval.datasets.ClassSource`)."""

    key: Literal["semantic", "parts"]

    def read(self, spec: BenchmarkSpec, root: Path, cats: Categories, given: Names) -> ClassInfo:
        """Semantic: names, ignore index; parts: names (the categories must be ``classes.json``'s
        ``"parts"`` with ids ``0..N-1``) and the distractor vocabulary."""
        from use_core.eval.datasets.spec import ClassInfo, check_class_count

        doc = read_classes_document(spec, root)
        names = list(doc[self.key])
        if spec.task == "semantic":
            chosen = list(given) if given is not None else names
            check_class_count(spec, chosen, len(names))
            return ClassInfo(chosen, ignore_index=int(doc.get("ignore_index", spec.ignore_index)))
        cats = cats or []
        if [c["name"] for c in cats] != names or [c["id"] for c in cats] != list(range(len(cats))):
            raise ValueError(
                f"{root / spec.annotations}: categories do not match {CLASSES_FILE} "
                f"{self.key!r} (ids 0..N-1)"
            )
        chosen = list(given) if given is not None else names
        check_class_count(spec, chosen, len(cats))
        background = (*doc.get("stuff", []), *doc.get("objects", []), *doc.get("shapes", []))
        return ClassInfo(chosen, background=tuple(background))

    def layout_rows(self, spec: BenchmarkSpec) -> list[tuple[str, str]]:
        """The ``classes.json`` line of ``spec.layout``."""
        return [(CLASSES_FILE, f'class lists ("semantic", "parts", ...); ids index "{self.key}"')]
