"""Image loading on real files: every colour mode, EXIF orientation, and every kind of bad file."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFile

from use_core.data.images import ImageLoadError, load_rgb, read_image_size

LIMIT = 10_000_000


def _noise(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(path: Path, im: Image.Image, **kw: Any) -> Path:
    im.save(path, **kw)
    return path


def test_plain_rgb_jpeg_and_png(tmp_path: Path) -> None:
    arr = _noise()
    png = _save(tmp_path / "a.png", Image.fromarray(arr))
    out = load_rgb(png, LIMIT)
    assert out.dtype == np.uint8 and out.shape == (48, 64, 3)
    np.testing.assert_array_equal(out, arr)  # lossless
    jpg = _save(tmp_path / "a.jpg", Image.fromarray(arr), quality=95)
    assert load_rgb(jpg, LIMIT).shape == (48, 64, 3)


def test_exif_orientation_6_rotates_the_array(tmp_path: Path) -> None:
    # stored 20 wide x 10 high, top-left 4x4 block red, rest grey; orientation 6 = rotate 90° CW
    arr = np.full((10, 20, 3), 128, dtype=np.uint8)
    arr[:4, :4] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(tmp_path / "rot.jpg", Image.fromarray(arr), exif=exif.tobytes(), quality=95)
    assert Image.open(path).size == (20, 10)  # stored orientation
    out = load_rgb(path, LIMIT)
    assert out.shape == (20, 10, 3)  # displayed: 10 wide, 20 high
    assert read_image_size(path, LIMIT) == (20, 10)
    # stored top-left corner is displayed at the top-right after a clockwise quarter turn
    r, g, b = (int(v) for v in out[1, 8])
    assert r > 200 and g < 60 and b < 60
    r, g, b = (int(v) for v in out[1, 1])
    assert abs(r - 128) < 30 and abs(g - 128) < 30


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    path = _save(tmp_path / "cmyk.jpg", Image.new("CMYK", (16, 8), (0, 255, 255, 0)), quality=95)
    assert Image.open(path).mode == "CMYK"
    out = load_rgb(path, LIMIT)
    assert out.shape == (8, 16, 3)
    mean = out.reshape(-1, 3).mean(axis=0)
    assert mean[0] > 230 and mean[1] < 30 and mean[2] < 30  # red


def test_16bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    grey = np.array([[0, 257 * 100, 65535, 1000]], dtype=np.uint16)
    path = _save(tmp_path / "g16.png", Image.fromarray(grey))
    assert Image.open(path).mode.startswith("I")
    out = load_rgb(path, LIMIT)
    assert out.shape == (1, 4, 3)
    assert out[0, :, 0].tolist() == [0, 100, 255, 4]  # 1000 / 257 = 3.9 → 4
    assert (out[..., 0] == out[..., 2]).all()


def test_palette_png_with_and_without_transparency(tmp_path: Path) -> None:
    im = Image.new("P", (3, 1))
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (768 - 9))
    im.putdata([0, 1, 2])
    out = load_rgb(_save(tmp_path / "pal.png", im), LIMIT)
    assert out[0].tolist() == [[255, 0, 0], [0, 255, 0], [0, 0, 255]]
    out_t = load_rgb(_save(tmp_path / "pal_t.png", im, transparency=1), LIMIT)
    assert out_t[0].tolist() == [[255, 0, 0], [255, 255, 255], [0, 0, 255]]  # transparent → white


def test_rgba_and_la_composite_on_white(tmp_path: Path) -> None:
    rgba = np.array([[[255, 0, 0, 0], [0, 0, 255, 255], [0, 0, 0, 128]]], dtype=np.uint8)
    out = load_rgb(_save(tmp_path / "rgba.png", Image.fromarray(rgba, "RGBA")), LIMIT)
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [0, 0, 255]
    assert all(abs(int(v) - 127) <= 1 for v in out[0, 2])
    la = Image.fromarray(np.array([[[0, 0], [0, 255]]], dtype=np.uint8), "LA")
    out_la = load_rgb(_save(tmp_path / "la.png", la), LIMIT)
    assert out_la[0].tolist() == [[255, 255, 255], [0, 0, 0]]


def test_greyscale_and_bilevel(tmp_path: Path) -> None:
    out = load_rgb(_save(tmp_path / "l.png", Image.new("L", (5, 4), 77)), LIMIT)
    assert out.shape == (4, 5, 3) and (out == 77).all()
    out1 = load_rgb(_save(tmp_path / "one.bmp", Image.new("1", (3, 2), 1)), LIMIT)
    assert (out1 == 255).all()


def test_one_pixel_image_loads(tmp_path: Path) -> None:
    path = _save(tmp_path / "px.png", Image.new("RGB", (1, 1), (1, 2, 3)))
    assert load_rgb(path, LIMIT).tolist() == [[[1, 2, 3]]]
    assert read_image_size(path, LIMIT) == (1, 1)


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageLoadError, match=r"empty\.jpg: empty file \(0 bytes\)"):
        load_rgb(path, LIMIT)


def test_missing_and_non_image_files(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="file not found"):
        load_rgb(tmp_path / "nope.png", LIMIT)
    text = tmp_path / "notes.png"
    text.write_text("this is not a picture\n")
    with pytest.raises(ImageLoadError, match="not a recognised image format") as info:
        load_rgb(text, LIMIT)
    assert info.value.path == str(text)


@pytest.mark.parametrize("ext", ["jpg", "png"])
@pytest.mark.parametrize("tolerant", [False, True])
def test_truncated_file_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ext: str, tolerant: bool
) -> None:
    whole = _save(tmp_path / f"whole.{ext}", Image.fromarray(_noise()))
    data = whole.read_bytes()
    cut = tmp_path / f"cut.{ext}"
    cut.write_bytes(data[: len(data) // 2])
    # even if some library switched Pillow to "load truncated images", we must not half-load
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", tolerant)
    with pytest.raises(ImageLoadError, match="truncated"):
        load_rgb(cut, LIMIT)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is tolerant  # the global is restored


def test_corrupt_png_data_and_corrupt_jpeg_header(tmp_path: Path) -> None:
    png = bytearray(_save(tmp_path / "ok.png", Image.fromarray(_noise())).read_bytes())
    start = len(png) // 3
    png[start : start + 64] = bytes(b ^ 0xFF for b in png[start : start + 64])
    bad_png = tmp_path / "bad.png"
    bad_png.write_bytes(bytes(png))
    with pytest.raises(ImageLoadError, match="corrupt image data"):
        load_rgb(bad_png, LIMIT)

    jpg = bytearray(_save(tmp_path / "ok.jpg", Image.fromarray(_noise())).read_bytes())
    jpg[2:40] = b"\x00" * 38  # keep the SOI marker, wipe the segment headers behind it
    bad_jpg = tmp_path / "bad.jpg"
    bad_jpg.write_bytes(bytes(jpg))
    with pytest.raises(ImageLoadError, match=r"bad\.jpg: not a recognised image format"):
        load_rgb(bad_jpg, LIMIT)


def test_too_many_pixels_names_file_and_count(tmp_path: Path) -> None:
    path = _save(tmp_path / "big.png", Image.new("L", (2000, 1500)))  # compresses to a few KB
    with pytest.raises(
        ImageLoadError, match=r"big\.png: 2000x1500 = 3000000 pixels exceeds .*max_pixels=1000000"
    ):
        load_rgb(path, max_pixels=1_000_000)
    with pytest.raises(ImageLoadError, match="3000000 pixels"):
        read_image_size(path, max_pixels=1_000_000)
    assert load_rgb(path, max_pixels=3_000_000).shape == (1500, 2000, 3)


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00"))
        + chunk(b"IEND", b"")
    )


def test_pillow_bomb_guard_becomes_image_load_error(tmp_path: Path) -> None:
    # 30000 x 30000 = 9e8 pixels, more than twice Pillow's own limit: Pillow refuses at open
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(30000, 30000))
    with pytest.raises(ImageLoadError, match="bomb"):
        load_rgb(path, max_pixels=10**10)
    with pytest.raises(ImageLoadError, match="900000000 pixels"):
        load_rgb(path, max_pixels=LIMIT)
