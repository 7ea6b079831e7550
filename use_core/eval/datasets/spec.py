"""A benchmark layout (:class:`BenchmarkSpec`) and where its class names come from.

A spec holds paths relative to the benchmark root, file suffixes, the label encoding and a
:class:`ClassSource`; ``spec.layout`` renders the expected tree for error messages. Sources here:
:class:`ShippedNames` (``use_core/resources/*.txt``), :class:`DatasetNames` (a file in the
dataset) and :class:`CocoNames` (the annotation file's categories); the shapes corpus' is
:class:`use_core.eval.datasets.shapes.ShapesNames`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol

Task = Literal["semantic", "part"]
Categories = list[dict[str, Any]] | None  # a part benchmark's COCO categories, sorted by id
Names = Sequence[str] | None  # class names passed by the caller


class BenchmarkLayoutError(FileNotFoundError):
    """A benchmark folder that is missing or does not have the expected layout."""


# ------------------------------------------------------------------ class-name files


@cache
def _resource_names(filename: str) -> tuple[str, ...]:
    text = resources.files("use_core").joinpath("resources", filename).read_text("utf-8")
    lines = (line.strip() for line in text.splitlines())
    return tuple(line for line in lines if line and not line.startswith("#"))


def load_class_names(resource: str) -> list[str]:
    """A shipped class list by file stem (``#`` header lines, naming its source, are skipped):
    ``ade20k_150``, ``ade20k_847``, ``pascal_context_59_ovseg``, ``pascal_context_59_detail``,
    ``pascal_context_459``, ``coco_stuff_91``, ``partimagenet_parts``,
    ``partimagenet_supercategories``."""
    return list(_resource_names(f"{resource}.txt"))


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


# ------------------------------------------------------------------ class sources


class ClassInfo(NamedTuple):
    """A resolved class list: ``names`` (label-id / sorted-category order), an ``ignore_index``
    replacing the spec's (None: keep it) and part benchmarks' ``background`` distractors."""

    names: list[str]
    ignore_index: int | None = None
    background: tuple[str, ...] = ()


class ClassSource(Protocol):
    """Where a benchmark's class names come from (the ``classes`` field of a spec)."""

    def read(self, spec: BenchmarkSpec, root: Path, cats: Categories, given: Names) -> ClassInfo:
        """The names of ``spec`` under ``root`` (``given`` instead, its length checked)."""
        ...

    def layout_rows(self, spec: BenchmarkSpec) -> list[tuple[str, str]]:
        """``(path, description)`` lines this source adds to ``spec.layout``."""
        ...


def check_class_count(spec: BenchmarkSpec, names: Sequence[str], expected: int | None) -> None:
    """``ValueError`` when ``expected`` is known and ``names`` has another length."""
    if expected is not None and len(names) != expected:
        raise ValueError(f"{spec.name}: expected {expected} class names, got {len(names)}")


@dataclass(frozen=True)
class ShippedNames:
    """Names from ``use_core/resources/<resource>.txt`` (one per line, label-id order)."""

    resource: str

    def read(self, spec: BenchmarkSpec, root: Path, cats: Categories, given: Names) -> ClassInfo:
        names = list(given) if given is not None else load_class_names(self.resource)
        check_class_count(spec, names, spec.num_classes)
        return ClassInfo(names)

    def layout_rows(self, spec: BenchmarkSpec) -> list[tuple[str, str]]:
        return []


@dataclass(frozen=True)
class DatasetNames:
    """Names from the first existing file of ``files`` (relative to the benchmark root), read
    by :func:`read_class_names_file`; not needed when class names are given."""

    files: tuple[str, ...]
    order: str = "label-id order"  # for the layout text

    def read(self, spec: BenchmarkSpec, root: Path, cats: Categories, given: Names) -> ClassInfo:
        expected = spec.num_classes
        if given is not None:
            check_class_count(spec, given, expected)
            return ClassInfo(list(given))
        for rel in self.files:
            if (root / rel).is_file():
                return ClassInfo(read_class_names_file(root / rel, expected))
        raise BenchmarkLayoutError(
            f"benchmark {spec.name!r}: its {expected} class names are not shipped with use_core; "
            f"put them in {' or '.join(str(root / f) for f in self.files)} (one name per line, "
            f"label-id order) or pass class_names."
        )

    def layout_rows(self, spec: BenchmarkSpec) -> list[tuple[str, str]]:
        what = f'{spec.num_classes} class names ("name" or "1: name" lines, {self.order})'
        return [(" or ".join(self.files), what)]


@dataclass(frozen=True)
class CocoNames:
    """Part names from the annotation file's categories (authoritative: they are what the ids
    mean); ``background``: shipped lists (resource stems) used as distractor vocabulary."""

    background: tuple[str, ...] = ()

    def read(self, spec: BenchmarkSpec, root: Path, cats: Categories, given: Names) -> ClassInfo:
        cats = cats or []
        names = list(given) if given is not None else [c["name"] for c in cats]
        check_class_count(spec, names, len(cats))
        background = tuple(n for res in self.background for n in load_class_names(res))
        return ClassInfo(names, background=background)

    def layout_rows(self, spec: BenchmarkSpec) -> list[tuple[str, str]]:
        return []


# ------------------------------------------------------------------ the spec


@dataclass(frozen=True)
class BenchmarkSpec:
    """One benchmark layout; paths are relative to the benchmark root (``data_root/default_root``).

    Semantic rows pair ``images/*image_suffix`` with ``labels/*label_suffix`` by file stem (with
    ``every_image_labelled`` false the label maps define the evaluation set and other images are
    unused). ``label_dtype`` is the label files' pixel type as written (any single-channel
    integer map is read); ``reduce_zero_label``: raw 0 → ``ignore_index``, ``v`` → ``v - 1``.
    Part rows read the COCO file ``annotations`` and find each ``file_name`` in ``images`` (or in
    ``images/<file_name up to "_">/``). ``num_classes``: expected class / category count (None:
    whatever the class source holds). ``note``: a last line for :attr:`layout`.
    """

    name: str
    task: Task
    default_root: str
    images: str
    classes: ClassSource
    num_classes: int | None = None
    image_suffix: str = ".jpg"
    labels: str = ""
    label_suffix: str = ".png"
    label_dtype: str = "uint8"
    reduce_zero_label: bool = False
    ignore_index: int = 255  # part rows: unused, parts are scored as COCO masks
    every_image_labelled: bool = True
    annotations: str = ""
    note: str = ""

    def __post_init__(self) -> None:
        needed = "labels" if self.task == "semantic" else "annotations"
        if not getattr(self, needed):
            raise ValueError(f"benchmark spec {self.name!r}: a {self.task} layout needs {needed}")

    @property
    def layout(self) -> str:
        """The expected tree under the benchmark root, one ``path   description`` line each."""
        if self.task == "semantic":
            rows = [
                (f"{self.images}/*{self.image_suffix}", ""),
                (f"{self.labels}/*{self.label_suffix}", f"{self.label_dtype}; {self._encoding()}"),
            ]
        else:
            count = f"the {self.num_classes} part categories" if self.num_classes else "parts"
            alt = f'(or {self.images}/<file_name up to "_">/<file_name>)'
            rows = [
                (self.annotations, f"COCO instances of {count}"),
                (f"{self.images}/<file_name>", alt),
            ]
        rows += self.classes.layout_rows(self)
        width = max(len(path) for path, _ in rows)
        lines = [f"  {path:<{width}}   {what}".rstrip() for path, what in rows]
        if self.task == "semantic" and not self.every_image_labelled:
            lines.append("(the label maps define the evaluation set; other images are unused)")
        return "\n".join(lines + ([self.note] if self.note else []))

    def _encoding(self) -> str:
        k = self.num_classes
        if self.reduce_zero_label:
            ids = f"1..{k} = classes (→ 0..{k - 1})" if k else "v = class v - 1"
            return f"0 = other (ignored), {ids}"
        ids = f"0..{k - 1} = classes" if k else "class id"
        return f"{ids}, {self.ignore_index} = ignore"

    def require_dir(self, path: Path) -> Path:
        """``path`` if it is a folder, else :class:`BenchmarkLayoutError` quoting the layout."""
        if not path.is_dir():
            raise self._missing("folder", path)
        return path

    def require_file(self, path: Path) -> Path:
        """``path`` if it is a file, else :class:`BenchmarkLayoutError` quoting the layout."""
        if not path.is_file():
            raise self._missing("file", path)
        return path

    def _missing(self, what: str, path: Path) -> BenchmarkLayoutError:
        return BenchmarkLayoutError(
            f"benchmark {self.name!r}: {what} {path} not found.\n"
            f"Expected layout under the benchmark root:\n{self.layout}"
        )
