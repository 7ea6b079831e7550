"""Image sources of curation (paper §3.1): plain images, captioned images, boxed phrases.

Three kinds (``SourceConfig.kind``), every path relative to the data root:

* ``image_folder`` — every ``.jpg/.jpeg/.png/.webp/.bmp`` under ``images`` (sorted walk); no
  captions, no regions. ``image_id`` is ``"{source}/{path relative to images, posix}"``.
* ``coco_captions`` — a COCO captions JSON: ``{"images": [{"id", "file_name", ...}],
  "annotations": [{"image_id", "caption", ...}]}``; captions are grouped per image.
  ``image_id`` is ``"{source}/{COCO image id}"``.
* ``vg_regions`` — Visual Genome ``region_descriptions.json``: a list of
  ``{"id": image id, "regions": [{"region_id", "image_id", "phrase", "x", "y", "width",
  "height"}]}``. The image file is ``entry["file_name"]`` when that optional key is present
  (relative to ``images``; the shapes corpus uses it for ``train_00000.png``), else
  ``{id}.jpg`` or ``{id}.png`` under ``images``.

**Bad input is never dropped silently.** Each :class:`SourceRecord` carries a ``problems`` list.
A *fatal* problem (missing or unreadable file, path escaping the data root, malformed entry, image
too small) makes the record unusable (``record.usable`` is false); a non-fatal one says what part
was dropped (an empty caption, an invalid box) while the rest of the record is kept. Callers
route every problem to the quarantine table with
:func:`use_core.data.quarantine.quarantine_records_from`, and process only usable records.

**Path safety.** Every path is resolved (symlinks followed) and must stay inside ``data_root``.
A source whose ``images``/``annotations`` escape it raises :class:`UnsafePathError`. An
annotation entry whose ``file_name`` escapes the source's images root (``../../etc/passwd``, an
absolute path) or whose file is a symlink leading out of the data root becomes a fatal
``unsafe_path`` problem for that record only (the run goes on; the record is quarantined).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from use_core.config import SourceConfig
from use_core.data.images import ImageLoadError, read_image_size

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
# Boxes may overshoot the image by this many pixels (rounding in annotation tools); they are
# clipped. Boxes overshooting by more are rejected as ``bad_box``.
BOX_TOLERANCE_PX = 1.0
# Boxes narrower or lower than this (after clipping) are degenerate.
MIN_BOX_SIDE_PX = 1.0


class UnsafePathError(ValueError):
    """A path that resolves outside the data root (``..``, absolute path or symlink escape)."""


class SourceError(ValueError):
    """A source that cannot be read at all (missing or unparseable annotation file)."""


@dataclass(frozen=True)
class Problem:
    """Something wrong with (part of) a record. ``reason`` is a short code, ``detail`` prose.

    Reasons: ``missing_file``, ``unsafe_path``, ``bad_image``, ``image_too_small``,
    ``malformed_entry``, ``unknown_image``, ``empty_caption``, ``empty_phrase``, ``bad_box``.
    """

    reason: str
    detail: str
    fatal: bool


@dataclass
class Region:
    """A box with its phrase. ``box_xywh``: ``(x, y, w, h)`` floats in pixels, x right, y down."""

    box_xywh: tuple[float, float, float, float]
    phrase: str


@dataclass
class SourceRecord:
    """One image of a source with its ground-truth texts.

    ``image_id`` is namespaced (``"{source}/{original id}"``); ``image_path`` is relative to the
    data root, posix. ``height``/``width`` are of the displayed image (EXIF applied), ``None`` when
    the file could not be read; ``file_size`` in bytes (``None`` when missing).
    """

    image_id: str
    image_path: str
    source: str
    captions: list[str] = field(default_factory=list)
    regions: list[Region] = field(default_factory=list)
    height: int | None = None
    width: int | None = None
    file_size: int | None = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        """False when any problem is fatal: the record must be quarantined, not processed."""
        return not any(p.fatal for p in self.problems)


def resolve_inside(root: Path, relative: str | os.PathLike[str], what: str = "data root") -> Path:
    """Resolve ``root / relative`` and require the result to stay inside ``root``.

    Raises :class:`UnsafePathError` for absolute paths, ``..`` escapes and symlinks leading out;
    ``what`` names ``root`` in the message.
    """
    rel = os.fspath(relative)
    if os.path.isabs(rel) or PurePosixPath(rel.replace("\\", "/")).is_absolute():
        raise UnsafePathError(
            f"absolute path {rel!r} is not allowed (paths are relative to the {what})"
        )
    base = root.resolve()
    target = (base / rel).resolve()
    if not target.is_relative_to(base):
        raise UnsafePathError(f"path {rel!r} resolves to {target}, outside the {what} {base}")
    return target


def _entry_path(src: SourceConfig, file_name: str) -> tuple[str, Problem | None]:
    """Data-root-relative path of an annotation's image, or an ``unsafe_path`` problem.

    An entry's file name must stay (lexically) inside the source's images root; symlinks are
    followed later, when the file is checked against the data root. An unsafe name is reported
    with the path as written.
    """
    raw = f"{src.images.rstrip('/')}/{file_name}"
    norm = os.path.normpath(file_name.replace("\\", "/"))
    if os.path.isabs(norm) or norm == ".." or norm.startswith("../"):
        detail = (
            f"file name {file_name!r} leaves the images root {src.images!r} of source {src.name!r}"
        )
        return raw, Problem("unsafe_path", detail, fatal=True)
    return _posix_relative(src.images, norm), None


def _posix_relative(*parts: str) -> str:
    """Join and normalise lexically (``a/b/../c`` → ``a/c``) into a posix path string."""
    return Path(os.path.normpath(os.path.join(*parts))).as_posix()


def _load_json(data_root: Path, rel: str | None, src: SourceConfig) -> Any:
    if not rel:
        raise SourceError(f"source {src.name!r} ({src.kind}) needs an 'annotations' JSON file")
    path = resolve_inside(data_root, rel)
    if not path.is_file():
        raise SourceError(f"source {src.name!r}: annotation file not found: {path}")
    try:
        with path.open("rb") as fh:
            return json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SourceError(f"source {src.name!r}: {path} is not valid JSON: {exc}") from None


def _finish_record(
    rec: SourceRecord, data_root: Path, max_pixels: int, min_image_side: int
) -> SourceRecord:
    """Check the image file (safety, existence, header, size) and the boxes against it."""
    try:
        path = resolve_inside(data_root, rec.image_path)
    except UnsafePathError as exc:
        rec.problems.append(Problem("unsafe_path", str(exc), fatal=True))
        return rec
    if not path.is_file():
        rec.problems.append(
            Problem("missing_file", f"image file not found: {rec.image_path}", True)
        )
        return rec
    rec.file_size = path.stat().st_size
    try:
        rec.height, rec.width = read_image_size(path, max_pixels)
    except ImageLoadError as exc:
        rec.problems.append(Problem("bad_image", exc.reason, fatal=True))
        return rec
    if min(rec.height, rec.width) < min_image_side:
        rec.problems.append(
            Problem(
                "image_too_small",
                f"{rec.width}x{rec.height} px is below min_image_side={min_image_side}",
                fatal=True,
            )
        )
    rec.regions = [r for r in (_check_box(rec, r) for r in rec.regions) if r is not None]
    return rec


def _check_box(rec: SourceRecord, region: Region) -> Region | None:
    """Clip a box overshooting by at most BOX_TOLERANCE_PX; reject NaN, negative, degenerate."""
    assert rec.height is not None and rec.width is not None
    x, y, w, h = region.box_xywh
    where = f"box {list(region.box_xywh)} ({region.phrase!r}) in {rec.width}x{rec.height} image"
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        reason = f"non-finite {where}"
    elif w <= 0 or h <= 0:
        reason = f"non-positive width/height, {where}"
    elif x < -BOX_TOLERANCE_PX or y < -BOX_TOLERANCE_PX:
        reason = f"negative origin, {where}"
    elif x + w > rec.width + BOX_TOLERANCE_PX or y + h > rec.height + BOX_TOLERANCE_PX:
        reason = f"outside the image, {where}"
    else:
        x0, y0 = max(x, 0.0), max(y, 0.0)
        x1, y1 = min(x + w, float(rec.width)), min(y + h, float(rec.height))
        if x1 - x0 < MIN_BOX_SIDE_PX or y1 - y0 < MIN_BOX_SIDE_PX:
            reason = f"degenerate (side < {MIN_BOX_SIDE_PX} px), {where}"
        else:
            return Region((x0, y0, x1 - x0, y1 - y0), region.phrase)
    rec.problems.append(Problem("bad_box", reason, fatal=False))
    return None


def _clean_text(rec: SourceRecord, value: Any, what: str) -> str | None:
    if not isinstance(value, str):
        rec.problems.append(Problem("malformed_entry", f"{what} is not a string: {value!r}", False))
        return None
    text = " ".join(value.split())
    if not text:
        rec.problems.append(Problem(f"empty_{what}", f"empty or whitespace-only {what}", False))
        return None
    return text


def _iter_image_folder(src: SourceConfig, data_root: Path) -> Iterator[SourceRecord]:
    images_dir = resolve_inside(data_root, src.images)
    if not images_dir.is_dir():
        raise SourceError(f"source {src.name!r}: image folder not found: {images_dir}")
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(images_dir):
        dirnames.sort()
        for name in filenames:
            if name.lower().endswith(IMAGE_SUFFIXES):
                rel = Path(dirpath, name).relative_to(images_dir).as_posix()
                found.append(rel)
    for rel in sorted(found):
        yield SourceRecord(
            image_id=f"{src.name}/{rel}",
            image_path=_posix_relative(src.images, rel),
            source=src.name,
        )


def _iter_coco_captions(src: SourceConfig, data_root: Path) -> Iterator[SourceRecord]:
    doc = _load_json(data_root, src.annotations, src)
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise SourceError(f"source {src.name!r}: COCO JSON needs an 'images' list")
    annotations = doc.get("annotations", [])
    if not isinstance(annotations, list):
        raise SourceError(f"source {src.name!r}: COCO 'annotations' must be a list")
    records: dict[str, SourceRecord] = {}
    for i, entry in enumerate(doc["images"]):
        oid = entry.get("id") if isinstance(entry, dict) else None
        fname = entry.get("file_name") if isinstance(entry, dict) else None
        if oid is None or not isinstance(fname, str) or not fname:
            bad = SourceRecord(f"{src.name}/#images[{i}]", "", src.name)
            bad.problems.append(
                Problem(
                    "malformed_entry", f"images[{i}] needs 'id' and 'file_name': {entry!r}", True
                )
            )
            yield bad
            continue
        image_id = f"{src.name}/{oid}"
        if image_id in records:
            dup = SourceRecord(image_id, "", src.name)
            dup.problems.append(Problem("malformed_entry", f"duplicate image id {oid!r}", True))
            yield dup
            continue
        path, problem = _entry_path(src, fname)
        records[image_id] = SourceRecord(image_id, path, src.name)
        if problem is not None:
            records[image_id].problems.append(problem)
    orphans: dict[str, SourceRecord] = {}
    for j, ann in enumerate(annotations):
        oid = ann.get("image_id") if isinstance(ann, dict) else None
        rec = records.get(f"{src.name}/{oid}")
        if rec is None:
            key = f"{src.name}/{oid}" if oid is not None else f"{src.name}/#annotations[{j}]"
            orphan = orphans.setdefault(key, SourceRecord(key, "", src.name))
            orphan.problems.append(
                Problem(
                    "unknown_image", f"annotations[{j}] refers to no listed image: {ann!r}", True
                )
            )
            continue
        caption = _clean_text(rec, ann.get("caption"), "caption")
        if caption is not None:
            rec.captions.append(caption)
    yield from records.values()
    yield from orphans.values()


def _region_from(entry: Any, rec: SourceRecord, k: int) -> Region | None:
    try:
        box = tuple(float(entry[key]) for key in ("x", "y", "width", "height"))
    except (KeyError, TypeError, ValueError):
        rec.problems.append(
            Problem("malformed_entry", f"regions[{k}] has no numeric box: {entry!r}", False)
        )
        return None
    phrase = _clean_text(rec, entry.get("phrase"), "phrase")
    if phrase is None:
        return None
    return Region((box[0], box[1], box[2], box[3]), phrase)


def _vg_image_path(
    src: SourceConfig, data_root: Path, entry: dict[str, Any], oid: Any
) -> tuple[str, Problem | None]:
    fname = entry.get("file_name")
    if isinstance(fname, str) and fname:
        return _entry_path(src, fname)
    candidates = [_entry_path(src, f"{oid}{ext}") for ext in (".jpg", ".png")]
    for cand, problem in candidates:
        if problem is None and (data_root / cand).is_file():
            return cand, None
    return candidates[0]


def _iter_vg_regions(src: SourceConfig, data_root: Path) -> Iterator[SourceRecord]:
    doc = _load_json(data_root, src.annotations, src)
    if not isinstance(doc, list):
        raise SourceError(f"source {src.name!r}: VG region descriptions must be a JSON list")
    seen: set[str] = set()
    for i, entry in enumerate(doc):
        oid = None
        if isinstance(entry, dict):
            oid = entry.get("id", entry.get("image_id"))
        regions = entry.get("regions") if isinstance(entry, dict) else None
        if oid is None or not isinstance(regions, list) or not isinstance(entry, dict):
            bad = SourceRecord(f"{src.name}/#[{i}]", "", src.name)
            bad.problems.append(
                Problem("malformed_entry", f"entry [{i}] needs 'id' and a 'regions' list", True)
            )
            yield bad
            continue
        image_id = f"{src.name}/{oid}"
        path, problem = _vg_image_path(src, data_root, entry, oid)
        rec = SourceRecord(image_id, path, src.name, problems=[problem] if problem else [])
        if image_id in seen:
            rec.problems.append(Problem("malformed_entry", f"duplicate image id {oid!r}", True))
            yield rec
            continue
        seen.add(image_id)
        for k, reg in enumerate(regions):
            region = _region_from(reg, rec, k) if isinstance(reg, dict) else None
            if not isinstance(reg, dict):
                rec.problems.append(
                    Problem("malformed_entry", f"regions[{k}] is not an object", False)
                )
            if region is not None:
                rec.regions.append(region)
        yield rec


_READERS = {
    "image_folder": _iter_image_folder,
    "coco_captions": _iter_coco_captions,
    "vg_regions": _iter_vg_regions,
}


def iter_source(
    src: SourceConfig,
    data_root: Path,
    max_pixels: int = 40_000_000,
    min_image_side: int = 8,
) -> Iterator[SourceRecord]:
    """Yield every image of ``src`` as a :class:`SourceRecord`, bad ones included (with problems).

    Arguments:
      src: the source's config (kind, images root, annotations, both relative to ``data_root``).
      data_root: the data root; nothing outside it is ever read.
      max_pixels: decompression-bomb limit used when reading image headers.
      min_image_side: images whose height or width (px) is below this are ``image_too_small``.
    Raises:
      UnsafePathError: ``src.images``, ``src.annotations`` or a ``src.gt_instances`` file
        escape ``data_root``.
      SourceError: the annotation file is missing or not in the expected format.
    Records come in a deterministic order (file order of the annotations, sorted walk for
    folders). Records with a fatal problem found before the file check are yielded as they are.
    """
    resolve_inside(data_root, src.images)
    if src.annotations:
        resolve_inside(data_root, src.annotations)
    for rel in src.gt_instances:  # read later (masks quality): checked here, before any stage
        resolve_inside(data_root, rel)
    for rec in _READERS[src.kind](src, data_root):
        if rec.usable:
            _finish_record(rec, data_root, max_pixels, min_image_side)
        yield rec


def shard_records(records: Iterable[SourceRecord], shard_size: int) -> list[list[SourceRecord]]:
    """Sort records by ``image_id`` and cut them into consecutive shards of ``shard_size``.

    Deterministic: the same set of records gives the same shards whatever the input order.
    (Adding an image shifts the shards after it; their keys change and they are recomputed.)
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    ordered = sorted(records, key=lambda r: r.image_id)
    return [ordered[i : i + shard_size] for i in range(0, len(ordered), shard_size)]


def shard_key(
    records: Sequence[SourceRecord], stage_params: dict[str, Any], stage_version: str
) -> str:
    """Stable hex sha256 naming a shard's output, for skip-if-done resumption.

    Hashes the stage version, the stage params (canonical JSON) and, per record: image id, image
    path, file size in bytes, captions and regions. Not hashed: file modification times (they
    change on every clone/checkout) and image bytes (too expensive to read on every run). So an
    image replaced in place by one of the *same byte size* keeps its key: bump the stage version
    or touch the params to force recomputation in that rare case.
    """
    payload = {
        "version": stage_version,
        "params": stage_params,
        "records": [
            {
                "image_id": r.image_id,
                "image_path": r.image_path,
                "file_size": r.file_size,
                "captions": r.captions,
                "regions": [asdict(reg) for reg in r.regions],
            }
            for r in records
        ],
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()
