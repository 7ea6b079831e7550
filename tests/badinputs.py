"""The bad-inputs corpus: every kind of broken or awkward input, and what the pipeline did with it.

:func:`write_bad_inputs_corpus` writes a data root holding two sources (COCO-style captions and
Visual-Genome-style regions) whose images, captions and boxes include truncated / corrupt JPEG
and PNG files, a zero-byte file, CMYK, 16-bit, palette and RGBA images, an EXIF-rotated photo,
a 1×1 image, decompression bombs, a path-traversal entry, empty / whitespace / non-English /
10,000-character captions and degenerate / negative / outside / NaN boxes. Its
:class:`BadInputsManifest` says, per input, what a correct pipeline does with it: quarantine it
with one of some reason codes, process it (the item reaches the stage outputs), or refuse it with
a clear error.

:func:`run_bad_inputs` runs the curation stages (caption → ground → masks → nms) on the corpus,
corrupts two rows of a masks-stage shard before NMS (an RLE that does not decode, an RLE of the
wrong size), checks that an unreadable shard file gives an error naming it, and returns a report
``{tried, handled, lost, items, quarantine}`` (target: ``lost == 0``).

All image coordinates are pixels of the *displayed* image (EXIF applied), x right, y down; boxes
in the sources are ``[x, y, w, h]``.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

IMAGES = "bad/images"
CAPTIONS_JSON = "bad/captions.json"
REGIONS_JSON = "bad/regions.json"
COCO_SOURCE = "bad_coco"
VG_SOURCE = "bad_vg"
LONG_CAPTION_CHARS = 10_000
# stored 128 wide x 96 high; EXIF orientation 6 displays it rotated 90° clockwise (96 x 128)
EXIF_STORED_SQUARE = (8, 8, 32, 32)  # x, y, w, h in stored pixels
EXIF_DISPLAYED_BOX = (56.0, 8.0, 32.0, 32.0)  # the same square once displayed


@dataclass(frozen=True)
class BadInput:
    """One input of the corpus and what must become of it.

    ``kind``: ``image`` | ``caption`` | ``box`` | ``pairs_row`` | ``shard_file``.
    ``expect``: ``quarantine`` (a quarantine row with one of ``reasons``), ``process`` (the item
    reaches the stage outputs) or ``error`` (a clear error naming the file and the reason).
    ``image_path`` is relative to the data root; ``text`` identifies a caption / box phrase.
    """

    name: str
    kind: str
    image_path: str
    expect: str
    reasons: tuple[str, ...] = ()
    text: str | None = None


@dataclass
class BadInputsManifest:
    """The corpus: its data root, the two sources' configs and every bad input."""

    root: Path
    sources: list[dict[str, Any]]
    items: list[BadInput] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# File writers


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` RGB pixels but holds one row of data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    row = zlib.compress(b"\0" * (1 + 3 * min(width, 4096)))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", row)
        + _png_chunk(b"IEND", b"")
    )


def _scene(h: int = 96, w: int = 128) -> np.ndarray:
    """A grey ``(h, w, 3)`` uint8 scene with a red, a green and a blue square (RGB)."""
    img = np.full((h, w, 3), 128, np.uint8)
    img[8:40, 8:40] = (220, 30, 30)
    img[8:40, 56:88] = (30, 200, 30)
    img[52:84, 32:64] = (30, 30, 220)
    return img


def _save(path: Path, im: Image.Image, **kw: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, **kw)


def _write_images(images: Path) -> None:
    rng = np.random.default_rng(0)
    scene = _scene()
    _save(images / "good.png", Image.fromarray(scene))
    _save(images / "cmyk.jpg", Image.fromarray(scene).convert("CMYK"), quality=95)
    grey16 = np.full((96, 128), 10_000, np.uint16)
    grey16[8:40, 8:40] = 60_000
    _save(images / "grey16.png", Image.fromarray(grey16))
    _save(
        images / "palette.png", Image.fromarray(scene).convert("P", palette=Image.Palette.ADAPTIVE)
    )
    rgba = np.zeros((96, 128, 4), np.uint8)
    rgba[8:40, 8:40] = (220, 30, 30, 255)  # an opaque red square on a transparent background
    _save(images / "rgba.png", Image.fromarray(rgba, mode="RGBA"))
    stored = np.full((96, 128, 3), 128, np.uint8)
    x, y, w, h = EXIF_STORED_SQUARE
    stored[y : y + h, x : x + w] = (220, 30, 30)
    exif = Image.Exif()
    exif[0x0112] = 6
    _save(images / "exif_rotated.jpg", Image.fromarray(stored), exif=exif.tobytes(), quality=95)
    _save(images / "one_pixel.png", Image.fromarray(np.zeros((1, 1, 3), np.uint8)))

    noise = Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8))
    _save(images / "full.jpg", noise, quality=90)
    data = (images / "full.jpg").read_bytes()
    (images / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff" + rng.bytes(2000))
    (images / "full.jpg").unlink()
    _save(images / "full.png", noise)
    data = (images / "full.png").read_bytes()
    (images / "truncated.png").write_bytes(data[: len(data) // 2])
    ihdr = struct.pack(">IIBBBBB", 128, 96, 8, 2, 0, 0, 0)
    (images / "corrupt.png").write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", rng.bytes(3000))  # not a zlib stream
        + _png_chunk(b"IEND", b"")
    )
    (images / "full.png").unlink()
    (images / "zero_bytes.png").write_bytes(b"")
    (images / "not_an_image.png").write_text("this is text, not a PNG\n")
    # 50000 x 50000: above Pillow's own bomb limit; 7000 x 6000 = 42 Mpx: above data.max_pixels
    (images / "bomb.png").write_bytes(_png_header_only(50_000, 50_000))
    (images / "too_large.png").write_bytes(_png_header_only(7000, 6000))


def _long_caption() -> str:
    sentence = "A red square sits on a grey background next to a green square. "
    text = sentence * (LONG_CAPTION_CHARS // len(sentence) + 1)
    return text[:LONG_CAPTION_CHARS]


# ----------------------------------------------------------------------------------------------
# The corpus


def write_bad_inputs_corpus(root: str | Path) -> BadInputsManifest:
    """Write the bad-inputs corpus under data root ``root``; return its manifest.

    Layout: ``bad/images/*`` (image files), ``bad/captions.json`` (COCO captions, one per image
    plus the caption cases on ``good.png``), ``bad/regions.json`` (VG regions: one good box per
    processable image, plus the box cases on ``good.png``).
    """
    root = Path(root)
    images = root / IMAGES
    if images.exists():
        shutil.rmtree(images)
    _write_images(images)
    items: list[BadInput] = []

    def img(name: str, expect: str, *reasons: str) -> str:
        path = f"{IMAGES}/{name}"
        items.append(BadInput(name, "image", path, expect, tuple(reasons)))
        return path

    bad_image = ("bad_image",)
    img("truncated.jpg", "quarantine", *bad_image)
    img("corrupt.jpg", "quarantine", *bad_image)
    img("truncated.png", "quarantine", *bad_image)
    img("corrupt.png", "quarantine", *bad_image)
    img("zero_bytes.png", "quarantine", *bad_image)
    img("not_an_image.png", "quarantine", *bad_image)
    img("bomb.png", "quarantine", *bad_image)
    img("too_large.png", "quarantine", *bad_image)
    img("one_pixel.png", "quarantine", "image_too_small")
    for name in ("good.png", "cmyk.jpg", "grey16.png", "palette.png", "rgba.png"):
        img(name, "process")
    img("exif_rotated.jpg", "process")

    coco_images: list[dict[str, Any]] = [
        {"id": i, "file_name": it.name} for i, it in enumerate(items)
    ]
    good_id = next(c["id"] for c in coco_images if c["file_name"] == "good.png")
    annotations: list[dict[str, Any]] = [
        {"id": 1000 + c["id"], "image_id": c["id"], "caption": "a red square on a grey background"}
        for c in coco_images
    ]
    # path traversal and a missing file: quarantined records, never read
    coco_images.append({"id": 900, "file_name": "../../../etc/passwd"})
    items.append(BadInput("path_traversal", "image", f"{IMAGES}/../../../etc/passwd", "quarantine",
                          ("unsafe_path",)))  # fmt: skip
    coco_images.append({"id": 901, "file_name": "missing.png"})
    items.append(BadInput("missing_file", "image", f"{IMAGES}/missing.png", "quarantine",
                          ("missing_file",)))  # fmt: skip

    good_path = f"{IMAGES}/good.png"
    caption_cases: list[tuple[str, Any, str, tuple[str, ...]]] = [
        ("caption_empty", "", "quarantine", ("empty_caption",)),
        ("caption_whitespace", " \t\n  ", "quarantine", ("empty_caption",)),
        ("caption_not_a_string", 42, "quarantine", ("malformed_entry",)),
        ("caption_french", "un carré rouge à côté d'un carré vert", "process", ()),
        ("caption_chinese", "灰色背景上的红色方块和绿色方块", "process", ()),
        ("caption_10000_chars", _long_caption(), "process", ()),
    ]
    for k, (name, text, expect, reasons) in enumerate(caption_cases):
        annotations.append({"id": 2000 + k, "image_id": good_id, "caption": text})
        shown = text if expect == "process" else None
        items.append(BadInput(name, "caption", good_path, expect, reasons, shown))

    def region(phrase: str, box: tuple[float, ...]) -> dict[str, Any]:
        x, y, w, h = box
        return {"phrase": phrase, "x": x, "y": y, "width": w, "height": h}

    vg: list[dict[str, Any]] = []
    good_regions = [
        region("a red square", (8, 8, 32, 32)),
        region("a green square", (56, 8, 32, 32)),
        region("a blue square", (32, 52, 32, 32)),
    ]
    box_cases: list[tuple[str, dict[str, Any], str]] = [
        ("box_zero_width", region("zero width box", (10, 10, 0, 20)), "bad_box"),
        ("box_degenerate", region("half pixel box", (10, 10, 0.5, 20)), "bad_box"),
        ("box_negative", region("negative box", (-30, 10, 20, 20)), "bad_box"),
        ("box_outside", region("outside box", (120, 10, 40, 20)), "bad_box"),
        ("box_nan", region("nan box", (math.nan, 10, 20, 20)), "bad_box"),
        (
            "box_not_numeric",
            {"phrase": "text box", "x": "a", "y": 1, "width": 2, "height": 3},
            "malformed_entry",
        ),  # fmt: skip
        ("phrase_empty", region("   ", (8, 8, 32, 32)), "empty_phrase"),
    ]
    for name, reg, reason in box_cases:
        text = reg["phrase"] if reason != "empty_phrase" else None
        items.append(BadInput(name, "box", good_path, "quarantine", (reason,), text))
    vg.append(
        {
            "id": 0,
            "file_name": "good.png",
            "regions": good_regions + [reg for _, reg, _ in box_cases],
        }
    )
    for i, name in enumerate(("cmyk.jpg", "palette.png", "rgba.png", "grey16.png"), start=1):
        vg.append({"id": i, "file_name": name, "regions": [region("a red square", (8, 8, 32, 32))]})
    vg.append(
        {
            "id": 9,
            "file_name": "exif_rotated.jpg",
            "regions": [region("a rotated red square", EXIF_DISPLAYED_BOX)],
        }
    )
    items.append(BadInput("pairs_row_bad_rle", "pairs_row", good_path, "quarantine",
                          ("bad_rle",), "a red square"))  # fmt: skip
    items.append(BadInput("pairs_row_wrong_size", "pairs_row", good_path, "quarantine",
                          ("bad_rle",), "a green square"))  # fmt: skip
    items.append(BadInput("shard_file_truncated", "shard_file", "pairs", "error"))

    (root / CAPTIONS_JSON).write_text(
        json.dumps({"images": coco_images, "annotations": annotations}, ensure_ascii=False)
    )
    (root / REGIONS_JSON).write_text(json.dumps(vg))  # NaN is written as the JSON token NaN
    sources = [
        {
            "name": COCO_SOURCE,
            "kind": "coco_captions",
            "images": IMAGES,
            "annotations": CAPTIONS_JSON,
        },
        {"name": VG_SOURCE, "kind": "vg_regions", "images": IMAGES, "annotations": REGIONS_JSON},
    ]
    return BadInputsManifest(root, sources, items)


def exif_expected_mask() -> np.ndarray:
    """The EXIF photo's square as a ``(128, 96)`` bool mask in displayed orientation (HW)."""
    stored = np.zeros((96, 128), bool)
    x, y, w, h = EXIF_STORED_SQUARE
    stored[y : y + h, x : x + w] = True
    return np.rot90(stored, k=-1)  # orientation 6: rotate 90° clockwise to display


# ----------------------------------------------------------------------------------------------
# Running the curation on it


def bad_inputs_params(manifest: BadInputsManifest, models_cache: str | Path) -> Any:
    """Params for the corpus: its two sources, small shards, few grounded boxes per caption."""
    from use_core.config import parse_params

    return parse_params(
        {
            "data": {"root": str(manifest.root), "shard_size": 4, "sources": manifest.sources},
            "caption": {"max_new_tokens": 8},
            "ground": {"max_boxes": 1},
            "models": {"cache_dir": str(models_cache)},
            "runtime": {"device": "cpu"},
        }
    )


def _corrupt_masks_rows(params: Any, manifest: BadInputsManifest) -> list[str]:
    """Break the rows named by the ``pairs_row`` items in the masks store; return what was done."""
    from use_core.data.plan import build_plan
    from use_core.ops.rle import encode_mask
    from use_core.pipeline.shards import shard_stage_key, store_for

    store = store_for("masks", params)
    done = []
    for shard in build_plan(params).shards:
        key = shard_stage_key("masks", shard, params)
        df = store.read(key)
        changed = False
        for item in manifest.items:
            if item.kind != "pairs_row":
                continue
            hit = [
                i
                for i, (path, texts) in enumerate(zip(df["image_path"], df["texts"], strict=True))
                if path == item.image_path and item.text in texts
            ]
            if not hit:
                continue
            row = hit[0]
            if item.name.endswith("bad_rle"):
                df.at[row, "rle"] = "not-an-rle!!"
            else:  # an RLE of a 5x5 mask in a row that says the image is 96x128
                df.at[row, "rle"] = encode_mask(np.ones((5, 5), bool))["counts"]
            done.append(f"{item.name}: segment {int(df.at[row, 'segment_id'])}")
            changed = True
        if changed:
            store.write(key, df)
    return done


def _truncated_shard_error(params: Any, scratch: Path) -> str | None:
    """Copy one pairs shard, truncate it, read it: return the error message (None if it read)."""
    from use_core.data.pairs import ShardStore
    from use_core.pipeline.shards import store_for

    pairs = store_for("nms", params)
    keys = pairs.keys()
    if not keys:
        return None
    copy = ShardStore(scratch, "pairs")
    copy.dir.mkdir(parents=True, exist_ok=True)
    data = (pairs.dir / f"{keys[0]}.parquet").read_bytes()
    (copy.dir / f"{keys[0]}.parquet").write_bytes(data[: len(data) // 2])
    try:
        copy.read(keys[0])
    except Exception as exc:  # noqa: BLE001 - the message is what is judged
        return str(exc)
    return None


def run_bad_inputs(
    root: str | Path, models_cache: str | Path, show_progress: bool = False
) -> dict[str, Any]:
    """Write the corpus under ``root``, run the curation stages on it, classify every input.

    Returns ``{"tried", "handled", "lost", "items": [{name, kind, expect, handled, how}],
    "quarantine": summary, "exif_mask_iou": float | None, "errors": [...]}``. A stage that
    raises is recorded in ``errors`` and the next stages still run where they can.
    """
    import pandas as pd

    from use_core.data.quarantine import read_quarantine, summarize
    from use_core.ops.rle import decode_rle, rle_from_string
    from use_core.pipeline.shards import read_stage, run_stage

    manifest = write_bad_inputs_corpus(root)
    params = bad_inputs_params(manifest, models_cache)
    errors: list[str] = []
    for stage in ("caption", "ground", "masks"):
        try:
            run_stage(stage, params, show_progress=show_progress)
        except Exception as exc:  # noqa: BLE001 - recorded, never hidden
            errors.append(f"{stage}: {type(exc).__name__}: {exc}")
    corrupted = _corrupt_masks_rows(params, manifest)
    try:
        run_stage("nms", params, show_progress=show_progress)
    except Exception as exc:  # noqa: BLE001
        errors.append(f"nms: {type(exc).__name__}: {exc}")

    quarantine = read_quarantine(Path(params.data.root) / "curation" / "quarantine")
    captions = _safe_read(read_stage, "caption", params)
    pairs = _safe_read(read_stage, "nms", params)
    shard_error = _truncated_shard_error(params, Path(root) / "scratch")

    rows: list[dict[str, Any]] = []
    used: set[int] = set()
    for item in manifest.items:
        handled, how = _classify(item, quarantine, captions, pairs, shard_error, used)
        rows.append({**asdict(item), "handled": handled, "how": how})
        rows[-1].pop("text", None)
    exif_iou = None
    exif = pairs[pairs["image_path"] == f"{IMAGES}/exif_rotated.jpg"] if len(pairs) else pairs
    for rle, texts, h, w in (
        zip(exif["rle"], exif["texts"], exif["height"], exif["width"], strict=True)
        if len(exif)
        else []
    ):
        if "a rotated red square" in texts:
            mask = decode_rle(rle_from_string(rle, int(h), int(w)))
            want = exif_expected_mask()
            if mask.shape == want.shape:
                exif_iou = float((mask & want).sum() / max((mask | want).sum(), 1))
    n_handled = len([r for r in rows if r["handled"]])
    return {
        "tried": len(rows),
        "handled": n_handled,
        "lost": len(rows) - n_handled,
        "items": rows,
        "quarantine": summarize(quarantine) if len(quarantine) else summarize(pd.DataFrame()),
        "exif_mask_iou": exif_iou,
        "corrupted_rows": corrupted,
        "errors": errors,
    }


def _safe_read(read_stage: Any, stage: str, params: Any) -> Any:
    import pandas as pd

    try:
        return read_stage(stage, params)
    except Exception:  # noqa: BLE001 - a missing output shows up as unhandled items
        return pd.DataFrame(columns=["image_path", "captions", "texts"])


def _classify(
    item: BadInput,
    quarantine: Any,
    captions: Any,
    pairs: Any,
    shard_error: str | None,
    used: set[int],
) -> tuple[bool, str]:
    """Was ``item`` quarantined with an accepted reason, processed, or refused clearly?

    Each quarantine row accounts for at most one item (``used`` holds the rows already taken),
    so two empty captions need two quarantine rows.
    """
    if item.expect == "error":
        ok = (
            shard_error is not None
            and ".parquet" in shard_error
            and "cannot be read" in shard_error
        )
        return ok, f"error: {shard_error}"
    if item.expect == "quarantine":
        for idx, row in quarantine.iterrows():
            if idx in used or row["image_path"] != item.image_path:
                continue
            if row["reason"] not in item.reasons:
                continue
            if item.text is not None and item.text not in row["detail"]:
                continue
            used.add(idx)
            return True, f"quarantined {row['stage']}/{row['reason']}: {row['detail'][:90]}"
        return False, "not in the quarantine table"
    if item.kind == "caption":
        text = " ".join(str(item.text).split())
        found = any(
            path == item.image_path and text in list(caps)
            for path, caps in zip(captions["image_path"], captions["captions"], strict=True)
        )
        return found, "caption kept for grounding" if found else "caption missing"
    in_pairs = int((pairs["image_path"] == item.image_path).sum()) if len(pairs) else 0
    return in_pairs > 0, f"processed: {in_pairs} segments in the pairs table"
