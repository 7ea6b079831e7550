"""Robust image loading: any common file → ``uint8`` RGB array, or a clear :class:`ImageLoadError`.

Returned arrays are ``(H, W, 3)`` ``uint8``, HWC, RGB, in the *displayed* orientation (EXIF
orientation applied). Colour handling, decided once here:

* ``RGBA`` / ``LA`` / ``PA`` / palette or greyscale with a transparency key: alpha is
  **composited on white** (so transparent background reads as white paper, not black);
* ``CMYK`` (and Adobe-inverted CMYK JPEG): Pillow's conversion to RGB (ICC profiles are ignored);
* ``I;16*`` and ``I`` (16-bit greyscale PNG/TIFF): scaled to 8 bit by ``round(v / 257)`` after
  clipping to ``[0, 65535]`` (so 65535 → 255, not clipped to 255 as Pillow's ``convert`` does);
* ``F`` (float): Pillow's convention, values clipped to ``[0, 255]``;
* ``1`` / ``L`` / ``P`` / ``YCbCr``: Pillow's conversion to RGB;
* multi-frame files (GIF, TIFF): the first frame.

A truncated file is always an error: loading forces ``ImageFile.LOAD_TRUNCATED_IMAGES`` off for
the duration of the decode, whatever another library set it to. A 1×1 image is valid and loads;
deciding that it is too small is the caller's business (see :func:`use_core.data.sources`).
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# EXIF orientations 5..8 swap width and height (transpose, rotate 90/270, transverse).
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}
_EXIF_ORIENTATION_TAG = 0x0112
_TRUNCATION_LOCK = threading.Lock()


class ImageLoadError(Exception):
    """An image file that cannot be turned into pixels; ``reason`` says why in plain words."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot load image {self.path}: {reason}")


def _open_checked(path: Path, max_pixels: int) -> Image.Image:
    """Open lazily (header only) with existence, size and decompression-bomb checks."""
    if not path.exists():
        raise ImageLoadError(path, "file not found")
    if not path.is_file():
        raise ImageLoadError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise ImageLoadError(path, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(path, f"decompression-bomb limit exceeded ({exc})") from None
    except UnidentifiedImageError:
        raise ImageLoadError(
            path, "not a recognised image format (corrupt or not an image)"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(path, f"corrupt image header: {exc}") from None
    pixels = im.width * im.height
    if pixels > max_pixels:
        im.close()
        raise ImageLoadError(
            path,
            f"{im.width}x{im.height} = {pixels} pixels exceeds the decompression-bomb limit "
            f"max_pixels={max_pixels}",
        )
    if pixels == 0:
        im.close()
        raise ImageLoadError(path, f"image has zero size ({im.width}x{im.height})")
    return im


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(_EXIF_ORIENTATION_TAG, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block must not hide a readable image
        return 1


def read_image_size(path: str | Path, max_pixels: int) -> tuple[int, int]:
    """``(height, width)`` of the image as displayed (EXIF orientation applied), header only.

    Cheap: decodes no pixels, so a truncated file passes here and fails in :func:`load_rgb`.
    Raises :class:`ImageLoadError` for missing, empty, non-image or too-large files.
    """
    p = Path(path)
    with _open_checked(p, max_pixels) as im:
        w, h = im.size
        if _orientation(im) in _SWAPPING_ORIENTATIONS:
            w, h = h, w
    return h, w


def _decode_strict(im: Image.Image) -> None:
    """Decode all pixels with truncated-image tolerance forced off."""
    with _TRUNCATION_LOCK:
        saved = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            im.load()
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = saved


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info


def _to_rgb(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        grey = np.asarray(im, dtype=np.float64)
        grey8 = np.rint(np.clip(grey, 0, 65535) / 257.0).astype(np.uint8)
        return np.repeat(grey8[:, :, None], 3, axis=2)
    if mode == "F":
        grey8 = np.rint(np.clip(np.asarray(im, dtype=np.float64), 0, 255)).astype(np.uint8)
        return np.repeat(grey8[:, :, None], 3, axis=2)
    if _has_alpha(im):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.uint8)
    if mode in ("RGB", "CMYK", "L", "1", "P", "YCbCr"):
        return np.asarray(im.convert("RGB"), dtype=np.uint8)
    raise ValueError(f"unsupported pixel mode {mode!r}")


def load_rgb(path: str | Path, max_pixels: int) -> np.ndarray:
    """Load an image as ``(H, W, 3)`` ``uint8`` RGB (HWC), EXIF orientation applied.

    Arguments:
      path: image file (JPEG, PNG, WebP, BMP, TIFF, GIF... anything Pillow reads).
      max_pixels: decompression-bomb limit; a file with more than this many pixels (width x
        height, read from the header before decoding) is refused.
    Raises:
      ImageLoadError: missing, empty, non-image, corrupt or truncated file, too many pixels,
        or an unsupported pixel mode; the message names the file and the reason.
    """
    p = Path(path)
    with _open_checked(p, max_pixels) as im:
        try:
            _decode_strict(im)
            oriented = ImageOps.exif_transpose(im)
            rgb = _to_rgb(oriented)
        except ImageLoadError:
            raise
        except OSError as exc:
            text = str(exc)
            reason = "truncated file" if "truncated" in text else "corrupt image data"
            raise ImageLoadError(p, f"{reason}: {text}") from None
        except (SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
            raise ImageLoadError(p, f"corrupt image data: {exc}") from None
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageLoadError(p, f"unexpected decoded shape {rgb.shape}")
    return np.ascontiguousarray(rgb)
