"""Evaluation reports: per-class IoU tables (CSV for DVC plots), bar charts, confusion matrices,
segmentation overlays and contact sheets of segment crops.

Plots are drawn on :class:`matplotlib.figure.Figure` objects (Agg canvas, no pyplot, no display,
no global backend change); raster compositions (overlay, contact sheet) are drawn with PIL so
their pixel sizes are exact. All images are HWC ``uint8`` RGB.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import imgviz
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

LEGEND_WIDTH = 220  # pixels added to the right of an overlay for its legend
LEGEND_ROW = 20  # legend row height in pixels
CAPTION_HEIGHT = 36  # contact-sheet caption band height in pixels


def _ensure_parent(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (OSError, TypeError):  # Pillow built without FreeType
        return ImageFont.load_default()


# ------------------------------------------------------------------ tables


def per_class_iou_table(metrics: Mapping[str, Any], class_names: Sequence[str]) -> pd.DataFrame:
    """Per-class IoU of :func:`use_core.eval.metrics.semantic_metrics` output.

    Returns a DataFrame with columns ``class`` (str) and ``iou`` (float percent, NaN for classes
    absent from both ground truth and prediction), in label-id order.
    """
    ious = list(metrics["IoU"])
    if len(ious) != len(class_names):
        raise ValueError(f"{len(ious)} IoU values for {len(class_names)} class names")
    return pd.DataFrame({"class": list(class_names), "iou": np.asarray(ious, dtype=float)})


def save_per_class_iou_csv(
    metrics: Mapping[str, Any], class_names: Sequence[str], path: str | Path
) -> Path:
    """Write the per-class IoU table as CSV (``class,iou``; NaN written empty) for DVC plots."""
    path = _ensure_parent(path)
    per_class_iou_table(metrics, class_names).to_csv(path, index=False, float_format="%.4f")
    return path


# ------------------------------------------------------------------ matplotlib plots


def plot_per_class_iou(
    metrics: Mapping[str, Any],
    class_names: Sequence[str],
    path: str | Path,
    title: str | None = None,
    max_classes: int | None = None,
) -> Path:
    """Horizontal bar chart of per-class IoU (percent), best class on top, mIoU as a line.

    Classes with NaN IoU (never seen) are left out; ``max_classes`` keeps the best ones.
    """
    full = per_class_iou_table(metrics, class_names)
    table = full.dropna(subset=["iou"])
    omitted = len(full) - len(table)
    table = table.sort_values("iou", ascending=False, kind="stable")
    if max_classes is not None:
        table = table.head(max_classes)
    n = max(len(table), 1)
    fig = Figure(figsize=(7.0, max(2.0, 0.28 * n + 1.2)), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    y = np.arange(len(table))
    bars = ax.barh(y, table["iou"].to_numpy(), color="#4C72B0")
    ax.bar_label(bars, fmt="%.1f", padding=2, fontsize=7)
    ax.set_yticks(y, table["class"].tolist(), fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("IoU (%)" + (f" — {omitted} classes never seen, not shown" if omitted else ""))
    miou = metrics.get("mIoU")
    if miou is not None and not math.isnan(float(miou)):
        ax.axvline(float(miou), color="#C44E52", linestyle="--", label=f"mIoU {float(miou):.1f}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title or "Per-class IoU")
    fig.tight_layout()
    path = _ensure_parent(path)
    fig.savefig(path)
    return path


def plot_confusion_matrix(
    conf: np.ndarray | Sequence[Sequence[int]],
    class_names: Sequence[str],
    path: str | Path,
    normalize: bool = True,
    max_labelled: int = 60,
) -> Path:
    """Confusion matrix heat map (rows = ground truth, columns = prediction).

    With ``normalize`` each row is divided by its sum (rows without pixels stay 0). Tick labels
    are drawn only up to ``max_labelled`` classes.
    """
    matrix = np.asarray(conf, dtype=np.float64)
    k = len(class_names)
    if matrix.shape != (k, k):
        raise ValueError(f"confusion matrix shape {matrix.shape} does not match {k} classes")
    if normalize:
        rows = matrix.sum(axis=1, keepdims=True)
        matrix = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    side = min(max(4.0, 0.25 * k + 2.0), 24.0)
    fig = Figure(figsize=(side + 1.0, side), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if k <= max_labelled:
        ticks = np.arange(k)
        ax.set_xticks(ticks, list(class_names), rotation=90, fontsize=7)
        ax.set_yticks(ticks, list(class_names), fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title("Confusion matrix" + (" (row-normalised)" if normalize else ""))
    fig.tight_layout()
    path = _ensure_parent(path)
    fig.savefig(path)
    return path


# ------------------------------------------------------------------ raster compositions


def label_palette(num_classes: int) -> np.ndarray:
    """(K, 3) uint8 colours: class ``i`` gets ``imgviz.label_colormap()[i + 1]`` (index 0 is
    black, kept for "nothing"); classes beyond 254 get seeded random colours."""
    base = imgviz.label_colormap()[1:]
    if num_classes <= len(base):
        return base[:num_classes].copy()
    extra = np.random.default_rng(0).integers(0, 256, size=(num_classes - len(base), 3))
    return np.concatenate([base, extra.astype(np.uint8)], axis=0)


def overlay_segmentation(
    image: np.ndarray,
    label_map: np.ndarray,
    class_names: Sequence[str],
    path: str | Path,
    alpha: float = 0.5,
    legend: bool = True,
    ignore_index: int = 255,
) -> list[str]:
    """Blend a coloured label map over an image and save it as PNG.

    Arguments:
      image: (H, W, 3) uint8 RGB.
      label_map: (H, W) integer labels in ``0..K-1``; ``ignore_index`` (or any value outside
        that range) is left unblended.
      class_names: K names; colours are :func:`label_palette` (K).
      alpha: weight of the class colour: ``out = round((1 - alpha) * image + alpha * colour)``.
      legend: add a ``LEGEND_WIDTH``-pixel panel on the right listing the classes present.

    Returns the names of the classes present, in label-id order (the legend's rows).
    """
    image = np.asarray(image)
    labels = np.asarray(label_map)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if labels.shape != image.shape[:2]:
        raise ValueError(f"label_map shape {labels.shape} != image size {image.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    k = len(class_names)
    palette = label_palette(k).astype(np.float64)
    valid = (labels >= 0) & (labels < k) & (labels != ignore_index)
    out = image.astype(np.float64)
    colours = palette[labels[valid].astype(np.int64)]
    out[valid] = (1.0 - alpha) * out[valid] + alpha * colours
    blended = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    present = [int(v) for v in np.unique(labels[valid])]
    names = [class_names[v] for v in present]
    canvas = Image.fromarray(blended)
    if legend:
        canvas = _with_legend(canvas, [(class_names[v], palette[v]) for v in present])
    canvas.save(_ensure_parent(path))
    return names


def _with_legend(image: Image.Image, entries: list[tuple[str, np.ndarray]]) -> Image.Image:
    height = max(image.height, LEGEND_ROW * len(entries) + 8)
    sheet = Image.new("RGB", (image.width + LEGEND_WIDTH, height), (255, 255, 255))
    sheet.paste(image, (0, 0))
    draw = ImageDraw.Draw(sheet)
    font = _font(13)
    x0 = image.width + 8
    for row, (name, colour) in enumerate(entries):
        y = 4 + row * LEGEND_ROW
        fill = tuple(int(c) for c in colour)
        draw.rectangle([x0, y + 2, x0 + 14, y + 16], fill=fill, outline=(0, 0, 0))
        draw.text((x0 + 22, y + 2), name, fill=(0, 0, 0), font=font)
    return sheet


def _to_rgb_uint8(crop: np.ndarray) -> np.ndarray:
    arr = np.asarray(crop)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype != np.uint8:
        raise ValueError(f"crops must be uint8 (or bool masks), got {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"crop must be (H, W), (H, W, 3) or (H, W, 4), got {arr.shape}")
    return arr[:, :, :3]


def contact_sheet(
    crops: Sequence[np.ndarray],
    captions: Sequence[str],
    path: str | Path,
    cols: int = 5,
    cell: int = 160,
) -> Path:
    """Grid of segment crops with captions, saved as PNG.

    Each crop (HW / HWC uint8, RGB or RGBA) is scaled to fit a ``cell``×``cell`` square (aspect
    kept, centred on grey) above a ``CAPTION_HEIGHT`` band with its caption (two lines max,
    truncated with "…"). The sheet is ``cols * cell`` wide and ``rows * (cell + CAPTION_HEIGHT)``
    high, ``rows = ceil(len(crops) / cols)``.
    """
    if len(crops) != len(captions):
        raise ValueError(f"{len(crops)} crops but {len(captions)} captions")
    if not crops:
        raise ValueError("contact_sheet needs at least one crop")
    if cols < 1 or cell < 8:
        raise ValueError(f"need cols >= 1 and cell >= 8, got {cols}, {cell}")
    rows = math.ceil(len(crops) / cols)
    cell_h = cell + CAPTION_HEIGHT
    sheet = Image.new("RGB", (cols * cell, rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = _font(11)
    for i, (crop, caption) in enumerate(zip(crops, captions, strict=True)):
        x, y = (i % cols) * cell, (i // cols) * cell_h
        tile = Image.fromarray(_to_rgb_uint8(crop))
        scale = min(cell / tile.width, cell / tile.height)
        size = (max(1, round(tile.width * scale)), max(1, round(tile.height * scale)))
        tile = tile.resize(size, Image.Resampling.BILINEAR)
        draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=(200, 200, 200))
        sheet.paste(tile, (x + (cell - size[0]) // 2, y + (cell - size[1]) // 2))
        for line_no, line in enumerate(_wrap(draw, caption, font, cell - 6)[:2]):
            draw.text((x + 3, y + cell + 2 + 16 * line_no), line, fill=(0, 0, 0), font=font)
    path = _ensure_parent(path)
    sheet.save(path)
    return path


def _wrap(
    draw: ImageDraw.ImageDraw,
    text: str,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    width: int,
) -> list[str]:
    """Greedy word wrap to ``width`` pixels; a third line's worth is folded into "…"."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        trial = f"{current} {word}".strip()
        if draw.textlength(trial, font=font) <= width or not current:
            current = trial
        else:
            lines.append(current)
            current = word
    if current:
        lines.append(current)
    if len(lines) > 2:
        lines = [lines[0], lines[1] + " …"]
    fitted = []
    for line in lines:
        while draw.textlength(line, font=font) > width and len(line) > 1:
            line = line[:-2] + "…"
        fitted.append(line)
    return fitted
