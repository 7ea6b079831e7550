"""Every community layout of each benchmark, recognised by its folder names.

A :class:`Layout` is one preparation's output: the folder names it lives under (relative to a
data root), a :class:`BenchmarkSpec` (paths under that folder, encoding, class list) and, for
Pascal-Context 59, the class order its label ids use. :func:`resolve_layout` finds the layout
of a benchmark under a root that is either the benchmark folder itself or a data root above
it. OVSeg's and CAT-Seg's PC-59 scripts write the same paths with different class orders, so
that folder needs ``label_order`` (``ovseg`` | ``detail``): the files cannot tell.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from use_core.eval.datasets.shapes import ShapesNames
from use_core.eval.datasets.spec import BenchmarkLayoutError, BenchmarkSpec, CocoNames, ShippedNames

LABEL_ORDERS = ("ovseg", "detail")
PARTIMAGENET_VAL = (2957, 40)  # the OOD val split: images, part categories


@dataclass(frozen=True)
class Layout:
    """One preparation's tree of a benchmark.

    ``folders``: where the tree sits relative to a data root (the first is the default);
    ``annotations``: part layouts, COCO files tried in order (the first found is read);
    ``label_order``: the PC-59 class order of the label ids; ``script``: what writes it.
    """

    benchmark: str
    name: str
    folders: tuple[str, ...]
    spec: BenchmarkSpec
    script: str
    label_order: str | None = None
    annotations: tuple[str, ...] = ()

    def files(self, base: Path) -> BenchmarkSpec | None:
        """The spec of this layout under ``base`` if its folders/files are there, else None."""
        spec = self.spec
        if not (base / spec.images).is_dir():
            return None
        if spec.task == "semantic":
            return spec if (base / spec.labels).is_dir() else None
        for rel in self.annotations or (spec.annotations,):
            if (base / rel).is_file():
                return replace(spec, annotations=rel)
        return None


@dataclass(frozen=True)
class Resolved:
    """A recognised layout: the :class:`Layout`, its spec (files found) and its folder."""

    layout: Layout
    spec: BenchmarkSpec
    base: Path


def _semantic(name: str, root: str, images: str, labels: str, **kw: Any) -> BenchmarkSpec:
    return BenchmarkSpec(
        name=name,
        task="semantic",
        default_root=root,
        images=images,
        labels=labels,
        **kw,
    )


_ADE150 = dict(reduce_zero_label=True, num_classes=150, classes=ShippedNames("ade20k_150"))
_ADE847 = dict(
    label_suffix=".tif",
    label_dtype="uint16",
    ignore_index=65535,
    num_classes=847,
    classes=ShippedNames("ade20k_847"),
)
_PC59 = {
    order: dict(num_classes=59, classes=ShippedNames(f"pascal_context_59_{order}"))
    for order in LABEL_ORDERS
}
_PC459 = dict(
    label_suffix=".tif",
    label_dtype="uint16",
    ignore_index=65535,
    num_classes=459,
    classes=ShippedNames("pascal_context_459"),
)
_VOC = "VOCdevkit/VOC2010"
_VOC_SPEC = dict(every_image_labelled=False)
_PIN_CLASSES = CocoNames(background=("coco_stuff_91", "partimagenet_supercategories"))
_SHAPES = "(generate it with use_core.data.shapes.scenes.generate_shapes)"


def _part(name: str, root: str, images: str, annotations: str, **kw: Any) -> BenchmarkSpec:
    return BenchmarkSpec(
        name=name,
        task="part",
        default_root=root,
        images=images,
        annotations=annotations,
        **kw,
    )


LAYOUTS: dict[str, tuple[Layout, ...]] = {
    "ade150": (
        Layout(
            "ade150",
            "detectron2",
            ("ADEChallengeData2016", "ade/ADEChallengeData2016"),
            _semantic(
                "ade150",
                "ADEChallengeData2016",
                "images/validation",
                "annotations/validation",
                **_ADE150,
            ),
            "detectron2 datasets/prepare_ade20k_sem_seg.py (also OVSeg, SAN, CAT-Seg, ODISE)",
        ),
    ),
    "ade847": (
        Layout(
            "ade847",
            "detectron2",
            ("ADE20K_2021_17_01", "ade/ADE20K_2021_17_01"),
            _semantic(
                "ade847",
                "ADE20K_2021_17_01",
                "images_detectron2/validation",
                "annotations_detectron2/validation",
                **_ADE847,
            ),
            "Mask2Former/OVSeg datasets/prepare_ade20k_full_sem_seg.py, CAT-Seg "
            "datasets/prepare_ade20k_full.py, SAN/ODISE likewise",
        ),
    ),
    "pc59": (
        *(
            Layout(
                "pc59",
                order,
                (_VOC, "pascal_context/" + _VOC),
                _semantic(
                    "pc59",
                    _VOC,
                    "JPEGImages",
                    "annotations_detectron2/pc59_val",
                    **_PC59[order],
                    **_VOC_SPEC,
                ),
                script,
                label_order=order,
            )
            for order, script in (
                ("ovseg", "OVSeg datasets/prepare_pascal_context.py (59_labels.txt line order)"),
                ("detail", "CAT-Seg datasets/prepare_pascal_context_59.py (Detail-API order)"),
            )
        ),
        Layout(
            "pc59",
            "odise",
            ("pascal_ctx_d2",),
            _semantic(
                "pc59",
                "pascal_ctx_d2",
                "images/validation",
                "annotations_ctx59/validation",
                **_PC59["detail"],
            ),
            "ODISE / MaskAdapter datasets/prepare_pascal_ctx_sem_seg.py (Detail-API order)",
            label_order="detail",
        ),
        Layout(
            "pc59",
            "san",
            ("pcontext",),
            _semantic("pc59", "pcontext", "val/image", "val/label", **_PC59["detail"]),
            "SAN datasets/prepare_pcontext_sem_seg_59cls.py (Detail-API order)",
            label_order="detail",
        ),
    ),
    "pc459": (
        Layout(
            "pc459",
            "detectron2",
            (_VOC, "pascal_context/" + _VOC),
            _semantic(
                "pc459",
                _VOC,
                "JPEGImages",
                "annotations_detectron2/pc459_val",
                **_PC459,
                **_VOC_SPEC,
            ),
            "OVSeg datasets/prepare_pascal_context.py or CAT-Seg "
            "datasets/prepare_pascal_context_459.py (LabelMap - 1)",
        ),
        Layout(
            "pc459",
            "odise",
            ("pascal_ctx_d2",),
            _semantic(
                "pc459",
                "pascal_ctx_d2",
                "images/validation",
                "annotations_ctx459/validation",
                **_PC459,
            ),
            "ODISE / MaskAdapter datasets/prepare_pascal_ctx_full_sem_seg.py",
        ),
        Layout(
            "pc459",
            "san",
            ("pcontext_full",),
            _semantic("pc459", "pcontext_full", "val/image", "val/label", **_PC459),
            "SAN datasets/prepare_pcontext_sem_seg_459cls.py",
        ),
    ),
    "partimagenet": (
        Layout(
            "partimagenet",
            "release",
            ("PartImageNet",),
            _part(
                "partimagenet",
                "PartImageNet",
                "images/val",
                "annotations/val/val.json",
                image_suffix=".JPEG",
                num_classes=40,
                classes=_PIN_CLASSES,
            ),
            "the PartImageNet release (OOD split, TACJu/PartImageNet), used as downloaded",
        ),
        Layout(
            "partimagenet",
            "vlpart",
            ("partimagenet", "datasets/partimagenet"),
            _part(
                "partimagenet",
                "partimagenet",
                "val",
                "val_format.json",
                image_suffix=".JPEG",
                num_classes=40,
                classes=_PIN_CLASSES,
            ),
            "VLPart tools/partimagenet_format_json.py (val_format.json; val.json also read)",
            annotations=("val_format.json", "val.json"),
        ),
    ),
    "shapes": (
        Layout(
            "shapes",
            "shapes",
            ("shapes",),
            _semantic(
                "shapes",
                "shapes",
                "val/images",
                "val/semantic",
                image_suffix=".png",
                classes=ShapesNames("semantic"),
                note=_SHAPES,
            ),
            "use_core.data.shapes.scenes.generate_shapes",
        ),
    ),
    "shapes_parts": (
        Layout(
            "shapes_parts",
            "shapes",
            ("shapes",),
            _part(
                "shapes_parts",
                "shapes",
                "val/images",
                "val/parts.json",
                classes=ShapesNames("parts"),
                note=_SHAPES,
            ),
            "use_core.data.shapes.scenes.generate_shapes",
        ),
    ),
}
"""Benchmark name → its known layouts (the first is the default)."""


def _expected(name: str) -> str:
    blocks = []
    for lay in LAYOUTS[name]:
        where = " or ".join(f"<root>/{f}" for f in lay.folders)
        files = f"\n  (annotations: {' or '.join(lay.annotations)})" if lay.annotations else ""
        blocks.append(
            f"[{lay.name}] {where} (or the root itself), by {lay.script}:\n{lay.spec.layout}{files}"
        )
    return "\n".join(blocks)


def resolve_layout(name: str, root: str | Path, label_order: str | None = None) -> Resolved:
    """The layout of benchmark ``name`` under ``root`` (its folder, or a data root above it).

    Raises :class:`BenchmarkLayoutError` naming what was looked for when no layout is found,
    when several are (point ``root`` at one), or when the PC-59 class order is needed and
    ``label_order`` is not given; ``ValueError`` for a ``label_order`` that does not apply.
    """
    if name not in LAYOUTS:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(sorted(LAYOUTS))}")
    layouts = LAYOUTS[name]
    orders = {lay.label_order for lay in layouts if lay.label_order is not None}
    if label_order is not None and label_order not in orders:
        allowed = " | ".join(sorted(orders)) if orders else "none (only pc59 has two orders)"
        raise ValueError(f"benchmark {name!r}: label_order {label_order!r}; allowed: {allowed}")
    root = Path(root)
    found: list[Resolved] = []
    for lay in layouts:
        for base in dict.fromkeys([root, *(root / f for f in lay.folders)]):
            spec = lay.files(base)
            if spec is not None:
                found.append(Resolved(lay, spec, base))
                break
    if not found:
        looked = "; ".join(
            f"{lay.name}: {lay.folders[0]}/{{{lay.spec.images}, "
            f"{' | '.join(lay.annotations) or lay.spec.labels or lay.spec.annotations}}}"
            for lay in layouts
        )
        raise BenchmarkLayoutError(
            f"benchmark {name!r}: no known layout under {root} (looked for {looked}).\n"
            f"Expected layout (one of):\n{_expected(name)}"
        )
    trees = {(r.base, r.spec.images, r.spec.labels or r.spec.annotations) for r in found}
    if len(trees) > 1:
        where = "; ".join(f"{r.layout.name} at {r.base}" for r in found)
        raise BenchmarkLayoutError(
            f"benchmark {name!r}: several layouts under {root} ({where}); set its root to one."
        )
    if label_order is not None:
        same = [r for r in found if r.layout.label_order == label_order]
        if not same:
            raise ValueError(
                f"benchmark {name!r}: the {found[0].layout.name} layout at {found[0].base} uses "
                f"the {found[0].layout.label_order} class order, not {label_order!r}"
            )
        return same[0]
    if len(found) > 1:
        scripts = " or ".join(
            f"{r.layout.script} (label_order: {r.layout.label_order})" for r in found
        )
        raise BenchmarkLayoutError(
            f"benchmark {name!r}: {found[0].base / found[0].spec.labels} may be written by "
            f"{scripts}; both write these paths with different class orders and the files do "
            f"not say which, so set label_order: ovseg | detail."
        )
    return found[0]
