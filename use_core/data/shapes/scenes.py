"""The procedural "shapes" demo corpus: seeded scenes with exact instance, part and stuff masks.

Each scene is a textured background (one or two "stuff" kinds, e.g. sky above grass) with
2–5 objects: coloured primitives (``red circle``) and composites with named parts
(``house``: wall, roof, door, window). Objects are drawn in order, later ones occluding earlier
ones; a placement that would leave an earlier object with less than
:data:`~use_core.data.shapes.draw.MIN_VISIBLE_FRACTION` of its silhouette visible is rejected,
so every drawn object is annotated and every annotation is visible. Drawing is done without
anti-aliasing on boolean masks, so image pixels, label maps and masks agree exactly. The drawing
lives in :mod:`~use_core.data.shapes.draw`, the captions in :mod:`~use_core.data.shapes.language`.

Layout written under ``out_dir`` (all JSON sorted-key and compact, byte-identical for a seed)::

    classes.json                       class lists; list index == label id == COCO category_id
    {split}/images/{split}_{i:05d}.png RGB uint8, HWC
    {split}/semantic/{stem}.png        uint8 index into classes["semantic"] (every pixel labelled)
    {split}/parts_sem/{stem}.png       uint8 index into classes["parts"], 255 = not a part
    {split}/instances.json             COCO instances (objects and stuff), RLE masks
    {split}/parts.json                 COCO parts, each with ``parent_id`` (its object annotation)
    {split}/captions.json              COCO captions, 1–2 per image
    {split}/regions.json               Visual-Genome region descriptions (xywh int pixel boxes)

Masks are *visible* pixels: an instance mask is what is left of the object after occlusion, a part
mask is the visible pixels of that part, hence always a subset of its parent's instance mask.
Boxes are COCO ``[x, y, w, h]`` of the tight box around the mask (``w = x_max - x_min + 1``).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

from use_core.data.shapes import vocab as V
from use_core.data.shapes.draw import background, layout
from use_core.data.shapes.language import (
    assign_refs,
    captions,
    object_phrase,
    part_items,
    part_phrase,
)

SPLITS: tuple[str, ...] = ("train", "val")
COLOUR_JITTER = 12  # per-part uniform RGB offset, ±
PIXEL_NOISE_STD = 4.0  # per-pixel Gaussian noise on objects
IGNORE = 255


@dataclass
class _Scene:
    image: np.ndarray  # uint8 (H, W, 3)
    semantic: np.ndarray  # uint8 (H, W)
    parts_sem: np.ndarray  # uint8 (H, W)
    instances: list[dict[str, Any]]  # mask, category, colour, colour_shape, parts=[...]
    captions: list[str]
    regions: list[tuple[str, tuple[int, int, int, int]]]  # phrase, xywh


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight xywh int box of a non-empty bool mask."""
    ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)


# ---------------------------------------------------------------- one scene


def _render_scene(size: int, n_objects: int, rng: np.random.Generator) -> _Scene:
    """Sample and draw one scene with its annotations (masks are bool (H, W))."""
    rgb, semantic = background(size, rng)
    stuff = [V.SEMANTIC[int(v)] for v in dict.fromkeys(semantic[:, 0].tolist())]
    objects = layout(size, n_objects, rng)
    assign_refs(objects, size)
    noise = rng.normal(0, PIXEL_NOISE_STD, (size, size, 3)).astype(np.float32)
    owner = np.full((size, size), -1, np.int64)
    parts_sem = np.full((size, size), IGNORE, np.uint8)
    part_owner = np.full((size, size), -1, np.int64)  # (object, part, piece) flat code
    for k, obj in enumerate(objects):
        semantic[obj.silhouette] = V.SEMANTIC.index(obj.kind)
        owner[obj.silhouette] = k
        for p, part in enumerate(obj.parts):
            tint = np.asarray(V.COLOURS[part.colour], np.float32)
            tint = tint + rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, 3).astype(np.float32)
            label = IGNORE if part.name is None else V.PARTS.index(part.name)
            for q, piece in enumerate(part.pieces):
                rgb[piece] = tint + noise[piece]
                parts_sem[piece] = label
                part_owner[piece] = (k * 16 + p) * 16 + q
    image = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)

    instances: list[dict[str, Any]] = []
    regions: list[tuple[str, tuple[int, int, int, int]]] = []
    part_counts: list[dict[str, int]] = []
    for k, obj in enumerate(objects):
        mask = owner == k
        parts, counts = [], {}
        for p, part in enumerate(obj.parts):
            codes = [(k * 16 + p) * 16 + q for q in range(len(part.pieces))]
            pieces = [part_owner == c for c in codes]
            n_visible = sum(bool(m.any()) for m in pieces)
            if part.name is None or n_visible == 0:
                continue
            counts[part.name] = n_visible
            parts.append(
                {"mask": np.logical_or.reduce(pieces), "name": part.name, "colour": part.colour}
            )
        part_counts.append(counts)
        instances.append(
            {
                "mask": mask,
                "category": obj.kind,
                "colour": obj.colour,
                "colour_shape": f"{obj.colour} {obj.kind}",
                "parts": parts,
            }
        )
        regions.append((object_phrase(obj, size, rng), _box(mask)))
        for part_ann, (noun_phrase, _) in zip(parts, part_items(obj, counts), strict=True):
            regions.append((part_phrase(obj, noun_phrase, rng), _box(part_ann["mask"])))
    for kind in stuff:
        mask = semantic == V.SEMANTIC.index(kind)
        if not mask.any():
            continue
        instances.append(
            {
                "mask": mask,
                "category": kind,
                "colour": V.STUFF_COLOUR_WORD[kind],
                "colour_shape": kind,
                "parts": [],
            }
        )
        if rng.uniform() < 0.5:
            regions.append((f"the {kind}", _box(mask)))
    if rng.uniform() < 0.3:
        regions.append((str(rng.choice(V.VAGUE_SCENE_WORDS)), (0, 0, size, size)))
    texts = captions(objects, stuff, part_counts, rng)
    return _Scene(image, semantic, parts_sem, instances, texts, regions)


# ---------------------------------------------------------------- writing


def _rle(mask: np.ndarray) -> tuple[dict[str, Any], float, list[float]]:
    """COCO RLE (counts as str), area and xywh float bbox of a bool (H, W) mask."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    bbox = [float(v) for v in mask_utils.toBbox(rle)]
    area = float(mask_utils.area(rle))
    return (
        {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
        area,
        bbox,
    )


def _write_json(path: Path, obj: Any) -> None:
    """Write sorted-key compact JSON via a temporary file and an atomic rename."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, sort_keys=True, separators=(",", ":")), encoding="utf-8")
    os.replace(tmp, path)


def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG", compress_level=3)


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Per-image generator: depends only on (seed, split, index), not on split sizes."""
    entropy = [abs(seed), int(seed < 0), SPLITS.index(split), index]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def _write_split(
    split_dir: Path,
    split: str,
    n_images: int,
    size: int,
    objects_range: tuple[int, int],
    seed: int,
    progress: tqdm,
) -> dict[str, int]:
    for sub in ("images", "semantic", "parts_sem"):
        (split_dir / sub).mkdir(parents=True)
    images: list[dict[str, Any]] = []
    instances: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    captions: list[dict[str, Any]] = []
    regions: list[dict[str, Any]] = []
    n_regions = 0
    for i in range(n_images):
        rng = _image_rng(seed, split, i)
        scene = _render_scene(size, int(rng.integers(objects_range[0], objects_range[1] + 1)), rng)
        stem = f"{split}_{i:05d}"
        image_id = i + 1
        _save_png(scene.image, split_dir / "images" / f"{stem}.png")
        _save_png(scene.semantic, split_dir / "semantic" / f"{stem}.png")
        _save_png(scene.parts_sem, split_dir / "parts_sem" / f"{stem}.png")
        images.append({"id": image_id, "file_name": f"{stem}.png", "height": size, "width": size})
        for inst in scene.instances:
            rle, area, bbox = _rle(inst["mask"])
            ann_id = len(instances) + 1
            instances.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": V.SEMANTIC.index(inst["category"]),
                    "segmentation": rle,
                    "area": area,
                    "bbox": bbox,
                    "iscrowd": 0,
                    "colour": inst["colour"],
                    "colour_shape": inst["colour_shape"],
                }
            )
            for part in inst["parts"]:
                rle, area, bbox = _rle(part["mask"])
                parts.append(
                    {
                        "id": len(parts) + 1,
                        "image_id": image_id,
                        "category_id": V.PARTS.index(part["name"]),
                        "segmentation": rle,
                        "area": area,
                        "bbox": bbox,
                        "iscrowd": 0,
                        "parent_id": ann_id,
                        "colour": part["colour"],
                    }
                )
        for text in scene.captions:
            captions.append({"id": len(captions) + 1, "image_id": image_id, "caption": text})
        image_regions: list[dict[str, Any]] = []
        for phrase, (x, y, w, h) in scene.regions:
            n_regions += 1
            image_regions.append(
                {"region_id": n_regions, "image_id": image_id, "phrase": phrase}
                | {"x": x, "y": y, "width": w, "height": h}
            )
        regions.append({"id": image_id, "file_name": f"{stem}.png", "regions": image_regions})
        progress.update(1)
    categories = [
        {"id": i, "name": n, "supercategory": V.SUPERCATEGORY[n]} for i, n in enumerate(V.SEMANTIC)
    ]
    part_categories = [
        {"id": i, "name": n, "supercategory": n.split(" ")[0]} for i, n in enumerate(V.PARTS)
    ]
    _write_json(
        split_dir / "instances.json",
        {"images": images, "categories": categories, "annotations": instances},
    )
    _write_json(
        split_dir / "parts.json",
        {"images": images, "categories": part_categories, "annotations": parts},
    )
    _write_json(split_dir / "captions.json", {"images": images, "annotations": captions})
    _write_json(split_dir / "regions.json", regions)
    n_objects = sum(
        1 for a in instances if V.SUPERCATEGORY[V.SEMANTIC[a["category_id"]]] != "stuff"
    )
    return {
        "images": len(images),
        "instances": len(instances),
        "objects": n_objects,
        "parts": len(parts),
        "captions": len(captions),
        "regions": n_regions,
    }


def generate_shapes(
    out_dir: Path,
    *,
    train_images: int = 200,
    val_images: int = 50,
    image_size: int = 448,
    min_objects: int = 2,
    max_objects: int = 5,
    seed: int = 0,
    show_progress: bool = True,
) -> dict[str, dict[str, int]]:
    """Generate the shapes corpus under ``out_dir`` (layout in the module docstring).

    Arguments:
      out_dir: target folder; its ``train``/``val`` folders and ``classes.json`` are replaced.
      train_images, val_images: number of scenes per split (>= 1).
      image_size: square image side in pixels (>= 64).
      min_objects, max_objects: objects attempted per scene (a placement that would hide an
        earlier object too much is retried, then skipped, so a scene can hold fewer).
      seed: same seed → byte-identical files; image ``i`` of a split depends only on
        (seed, split, i), so val does not change with ``train_images``.
      show_progress: show a tqdm progress bar.

    Returns:
      per split: counts of images, instances (objects + stuff), objects, parts, captions, regions.
    """
    if train_images < 1 or val_images < 1:
        raise ValueError(
            f"train_images and val_images must be >= 1, got {train_images}, {val_images}"
        )
    if image_size < 64:
        raise ValueError(f"image_size must be >= 64, got {image_size}")
    if not 1 <= min_objects <= max_objects:
        raise ValueError(f"need 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {"train": train_images, "val": val_images}
    summary: dict[str, dict[str, int]] = {}
    with tqdm(total=train_images + val_images, desc="shapes", disable=not show_progress) as bar:
        for split in SPLITS:
            staging = out_dir / f".{split}.partial"
            if staging.exists():
                shutil.rmtree(staging)
            summary[split] = _write_split(
                staging, split, counts[split], image_size, (min_objects, max_objects), seed, bar
            )
            final = out_dir / split
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging, final)
    _write_json(out_dir / "classes.json", V.classes_document())
    return summary
