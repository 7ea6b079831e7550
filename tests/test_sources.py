"""Sources on tiny real fixtures: three kinds, path safety, bad records kept with reasons."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
from PIL import Image

from use_core.config import SourceConfig
from use_core.data.quarantine import (
    QuarantineWriter,
    quarantine_records_from,
    read_quarantine,
    summarize,
)
from use_core.data.sources import (
    Region,
    SourceError,
    SourceRecord,
    UnsafePathError,
    iter_source,
    resolve_inside,
    shard_key,
    shard_records,
)


def _img(path: Path, w: int = 40, h: int = 30, color: tuple[int, int, int] = (200, 10, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), color).save(path)
    return path


def _json(path: Path, doc: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def _reasons(rec: SourceRecord) -> list[str]:
    return [p.reason for p in rec.problems]


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    r = tmp_path / "data"
    r.mkdir()
    return r


def test_image_folder_sorted_walk(root: Path) -> None:
    _img(root / "pics" / "b.png")
    _img(root / "pics" / "a.JPG", w=10, h=20)
    _img(root / "pics" / "sub" / "c.webp")
    _img(root / "pics" / "d.bmp")
    (root / "pics" / "readme.txt").write_text("not an image")
    src = SourceConfig(name="folder", kind="image_folder", images="pics")
    recs = list(iter_source(src, root))
    assert [r.image_id for r in recs] == [
        "folder/a.JPG",
        "folder/b.png",
        "folder/d.bmp",
        "folder/sub/c.webp",
    ]
    assert [r.image_path for r in recs][-1] == "pics/sub/c.webp"
    first = recs[0]
    assert (first.height, first.width) == (20, 10)
    assert first.file_size == (root / "pics" / "a.JPG").stat().st_size
    assert first.captions == [] and first.regions == [] and first.usable and first.problems == []


def test_coco_captions_grouped_and_bad_records_kept(root: Path, tmp_path: Path) -> None:
    _img(root / "coco" / "img" / "1.jpg")
    _img(root / "coco" / "img" / "2.jpg")
    _img(root / "coco" / "img" / "tiny.png", w=1, h=1)
    (root / "coco" / "img" / "empty.jpg").write_bytes(b"")
    outside = _img(tmp_path / "secret" / "x.png")
    os.symlink(outside, root / "coco" / "img" / "link.png")
    images = [
        {"id": 1, "file_name": "1.jpg"},
        {"id": 2, "file_name": "2.jpg"},
        {"id": 3, "file_name": "../../etc/passwd"},
        {"id": 4, "file_name": "/etc/passwd"},
        {"id": 5, "file_name": "link.png"},
        {"id": 6, "file_name": "missing.jpg"},
        {"id": 7, "file_name": "tiny.png"},
        {"id": 8, "file_name": "empty.jpg"},
        {"id": 9},
    ]
    anns = [
        {"image_id": 1, "id": 10, "caption": "A red square."},
        {"image_id": 1, "id": 11, "caption": "  a   big red   block  "},
        {"image_id": 2, "id": 12, "caption": "   "},
        {"image_id": 2, "id": 13, "caption": None},
        {"image_id": 2, "id": 14, "caption": "a picture"},
        {"image_id": 99, "id": 15, "caption": "orphan"},
    ]
    _json(root / "coco" / "captions.json", {"images": images, "annotations": anns})
    src = SourceConfig(
        name="cc", kind="coco_captions", images="coco/img", annotations="coco/captions.json"
    )
    recs = {r.image_id: r for r in iter_source(src, root)}

    one = recs["cc/1"]
    assert one.usable and one.captions == ["A red square.", "a big red block"]
    assert one.image_path == "coco/img/1.jpg" and (one.height, one.width) == (30, 40)
    two = recs["cc/2"]
    assert two.usable and two.captions == ["a picture"]
    assert sorted(_reasons(two)) == ["empty_caption", "malformed_entry"]
    assert not any(p.fatal for p in two.problems)

    for traversal in ("cc/3", "cc/4", "cc/5"):
        rec = recs[traversal]
        assert not rec.usable and _reasons(rec) == ["unsafe_path"], traversal
    assert recs["cc/3"].problems[0].detail == (
        "file name '../../etc/passwd' leaves the images root 'coco/img' of source 'cc'"
    )
    assert recs["cc/3"].image_path == "coco/img/../../etc/passwd"  # reported as written
    assert "outside the data root" in recs["cc/5"].problems[0].detail  # symlink escape
    assert "'/etc/passwd' leaves the images root" in recs["cc/4"].problems[0].detail
    assert _reasons(recs["cc/6"]) == ["missing_file"]
    assert (
        _reasons(recs["cc/7"]) == ["image_too_small"] and "1x1" in recs["cc/7"].problems[0].detail
    )
    assert (
        _reasons(recs["cc/8"]) == ["bad_image"] and "empty file" in recs["cc/8"].problems[0].detail
    )
    assert _reasons(recs["cc/#images[8]"]) == ["malformed_entry"]
    assert _reasons(recs["cc/99"]) == ["unknown_image"]
    assert len(recs) == 10  # nothing dropped silently


def test_vg_regions_file_names_and_box_validation(root: Path) -> None:
    _img(root / "vg" / "img" / "1.jpg", w=100, h=50)
    _img(root / "vg" / "img" / "2.png", w=100, h=50)
    _img(root / "vg" / "img" / "train_00000.png", w=64, h=64)
    regions_1 = [
        {
            "region_id": 1,
            "image_id": 1,
            "phrase": "a red box",
            "x": 10,
            "y": 5,
            "width": 20,
            "height": 10,
        },
        {
            "region_id": 2,
            "image_id": 1,
            "phrase": "nan box",
            "x": float("nan"),
            "y": 0,
            "width": 5,
            "height": 5,
        },
        {
            "region_id": 3,
            "image_id": 1,
            "phrase": "negative size",
            "x": 1,
            "y": 1,
            "width": -4,
            "height": 5,
        },
        {
            "region_id": 4,
            "image_id": 1,
            "phrase": "negative origin",
            "x": -10,
            "y": 0,
            "width": 20,
            "height": 5,
        },
        {
            "region_id": 5,
            "image_id": 1,
            "phrase": "outside",
            "x": 90,
            "y": 0,
            "width": 30,
            "height": 5,
        },
        {
            "region_id": 6,
            "image_id": 1,
            "phrase": "sliver",
            "x": 5,
            "y": 5,
            "width": 0.4,
            "height": 9,
        },
        {
            "region_id": 7,
            "image_id": 1,
            "phrase": "overshoot",
            "x": 80,
            "y": 40,
            "width": 20.5,
            "height": 10.5,
        },
        {"region_id": 8, "image_id": 1, "phrase": "  ", "x": 1, "y": 1, "width": 5, "height": 5},
        {"region_id": 9, "image_id": 1, "x": 1, "y": 1, "height": 5, "phrase": "no width"},
    ]
    doc = [
        {"id": 1, "regions": regions_1},
        {"id": 2, "regions": [{"phrase": "png by id", "x": 0, "y": 0, "width": 100, "height": 50}]},
        {
            "id": 0,
            "file_name": "train_00000.png",
            "regions": [{"phrase": "a circle", "x": 1, "y": 2, "width": 3, "height": 4}],
        },
        {"id": 3, "regions": []},
        {"regions": []},
    ]
    _json(root / "vg" / "regions.json", doc)
    src = SourceConfig(name="vg", kind="vg_regions", images="vg/img", annotations="vg/regions.json")
    recs = {r.image_id: r for r in iter_source(src, root)}

    one = recs["vg/1"]
    assert one.usable and one.image_path == "vg/img/1.jpg"
    assert one.regions == [
        Region((10.0, 5.0, 20.0, 10.0), "a red box"),
        Region((80.0, 40.0, 20.0, 10.0), "overshoot"),  # within 1 px tolerance: clipped
    ]
    details = {p.detail.split(",")[0]: p.reason for p in one.problems}
    assert sorted(_reasons(one)) == ["bad_box"] * 5 + ["empty_phrase", "malformed_entry"]
    assert any(d.startswith("non-finite") for d in details)
    assert any("outside the image" in p.detail for p in one.problems)
    assert any("degenerate" in p.detail for p in one.problems)
    assert recs["vg/2"].image_path == "vg/img/2.png" and recs["vg/2"].usable
    shapes = recs["vg/0"]
    assert shapes.image_path == "vg/img/train_00000.png" and shapes.regions[0].phrase == "a circle"
    assert _reasons(recs["vg/3"]) == ["missing_file"]
    assert _reasons(recs["vg/#[4]"]) == ["malformed_entry"]


def test_source_level_errors(root: Path) -> None:
    with pytest.raises(UnsafePathError, match="outside the data root"):
        list(iter_source(SourceConfig(name="x", kind="image_folder", images="../elsewhere"), root))
    with pytest.raises(UnsafePathError, match="absolute path"):
        list(iter_source(SourceConfig(name="x", kind="image_folder", images="/tmp"), root))
    with pytest.raises(SourceError, match="annotation file not found"):
        list(
            iter_source(
                SourceConfig(name="x", kind="coco_captions", images="i", annotations="nope.json"),
                root,
            )
        )
    (root / "bad.json").write_text("{not json")
    with pytest.raises(SourceError, match="not valid JSON"):
        list(
            iter_source(
                SourceConfig(name="x", kind="vg_regions", images="i", annotations="bad.json"), root
            )
        )
    _json(root / "list.json", [])
    with pytest.raises(SourceError, match="'images' list"):
        list(
            iter_source(
                SourceConfig(name="x", kind="coco_captions", images="i", annotations="list.json"),
                root,
            )
        )
    with pytest.raises(SourceError, match="needs an 'annotations'"):
        list(iter_source(SourceConfig(name="x", kind="vg_regions", images="i"), root))
    assert resolve_inside(root, "a/../b") == (root / "b").resolve()


def test_problems_route_to_quarantine(root: Path, tmp_path: Path) -> None:
    _img(root / "img" / "1.jpg")
    _json(
        root / "caps.json",
        {
            "images": [
                {"id": 1, "file_name": "1.jpg"},
                {"id": 2, "file_name": "../../../etc/passwd"},
            ],
            "annotations": [{"image_id": 1, "caption": ""}, {"image_id": 1, "caption": "ok"}],
        },
    )
    src = SourceConfig(name="cc", kind="coco_captions", images="img", annotations="caps.json")
    recs = list(iter_source(src, root))
    quarantined = [q for r in recs for q in quarantine_records_from(r, stage="sources")]
    writer = QuarantineWriter(tmp_path / "quarantine", "sources")
    writer.write("shard0", quarantined)
    table = read_quarantine(tmp_path / "quarantine")
    assert table[["image_id", "reason", "fatal"]].values.tolist() == [
        ["cc/1", "empty_caption", False],
        ["cc/2", "unsafe_path", True],
    ]
    assert table["image_path"].tolist() == ["img/1.jpg", "img/../../../etc/passwd"]
    stats = summarize(table)
    assert stats["total"] == 2 and stats["images_set_aside"] == 1
    assert stats["by_stage_reason"] == {"sources/empty_caption": 1, "sources/unsafe_path": 1}


def test_reads_the_generated_shapes_captions(tmp_path: Path) -> None:
    from use_core.config import DataConfig
    from use_core.data.shapes.scenes import generate_shapes

    generate_shapes(
        tmp_path / "shapes", train_images=3, val_images=1, image_size=64, show_progress=False
    )
    coco = next(s for s in DataConfig().sources if s.kind == "coco_captions")
    recs = list(iter_source(coco, tmp_path))
    assert [r.image_path for r in recs] == [
        f"shapes/train/images/train_{i:05d}.png" for i in range(3)
    ]
    assert all(r.usable and r.captions and (r.height, r.width) == (64, 64) for r in recs)
    vg = next(s for s in DataConfig().sources if s.kind == "vg_regions")
    regions = list(iter_source(vg, tmp_path))
    assert [r.image_path for r in regions] == [r.image_path for r in recs]
    assert all(r.usable and r.regions and not r.problems for r in regions)


def _records(n: int) -> list[SourceRecord]:
    return [
        SourceRecord(f"s/{i:03d}", f"img/{i}.jpg", "s", captions=[f"c{i}"], file_size=100 + i)
        for i in range(n)
    ]


def test_shard_records_is_deterministic() -> None:
    recs = _records(10)
    shuffled = recs[:]
    random.Random(1).shuffle(shuffled)
    shards = shard_records(shuffled, 4)
    assert [len(s) for s in shards] == [4, 4, 2]
    assert [[r.image_id for r in s] for s in shards] == [
        [r.image_id for r in s] for s in shard_records(recs, 4)
    ]
    assert shards[0][0].image_id == "s/000"
    with pytest.raises(ValueError, match="shard_size"):
        shard_records(recs, 0)


def test_shard_key_is_stable_and_sensitive() -> None:
    recs = _records(3)
    key = shard_key(recs, {"a": 1, "b": [2, 3]}, "v1")
    assert len(key) == 64
    assert key == shard_key(
        _records(3), {"b": [2, 3], "a": 1}, "v1"
    )  # params order does not matter
    assert key != shard_key(recs, {"a": 2, "b": [2, 3]}, "v1")
    assert key != shard_key(recs, {"a": 1, "b": [2, 3]}, "v2")
    changed = _records(3)
    changed[1].file_size = 999
    assert key != shard_key(changed, {"a": 1, "b": [2, 3]}, "v1")
    changed = _records(3)
    changed[2].captions = ["another caption"]
    assert key != shard_key(changed, {"a": 1, "b": [2, 3]}, "v1")
