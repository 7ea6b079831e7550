"""Report tables and images: files written, sizes, legend content, exact overlay colours."""

from __future__ import annotations

import math
from pathlib import Path

import imgviz
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from use_core.eval.metrics import semantic_metrics
from use_core.viz import (
    CAPTION_HEIGHT,
    LEGEND_WIDTH,
    contact_sheet,
    label_palette,
    overlay_segmentation,
    per_class_iou_table,
    plot_confusion_matrix,
    plot_per_class_iou,
    save_per_class_iou_csv,
)

NAMES = ["sky", "grass", "red circle", "house"]


@pytest.fixture
def metrics() -> dict:
    gt = np.array([[0, 0, 1, 1], [0, 1, 1, 2], [2, 2, 2, 2]])
    pred = np.array([[0, 1, 1, 1], [0, 1, 1, 2], [2, 2, 0, 2]])
    return semantic_metrics([pred], [gt], num_classes=4)  # class 3 absent → NaN


def test_per_class_table_and_csv(tmp_path: Path, metrics: dict) -> None:
    table = per_class_iou_table(metrics, NAMES)
    assert list(table.columns) == ["class", "iou"]
    assert table["class"].tolist() == NAMES
    assert table["iou"].iloc[0] == pytest.approx(metrics["IoU"][0])
    assert math.isnan(table["iou"].iloc[3])
    path = save_per_class_iou_csv(metrics, NAMES, tmp_path / "plots" / "iou.csv")
    back = pd.read_csv(path)
    assert back["class"].tolist() == NAMES
    assert back["iou"].iloc[1] == pytest.approx(metrics["IoU"][1], abs=1e-4)
    assert math.isnan(back["iou"].iloc[3])
    with pytest.raises(ValueError, match="3 class names"):
        per_class_iou_table(metrics, NAMES[:3])


def test_plots_are_written(tmp_path: Path, metrics: dict) -> None:
    bar = plot_per_class_iou(metrics, NAMES, tmp_path / "bar.png")
    with Image.open(bar) as im:
        assert im.format == "PNG" and im.width == 700 and im.height >= 200
    conf = plot_confusion_matrix(metrics["confusion"], NAMES, tmp_path / "conf.png")
    with Image.open(conf) as im:
        assert im.format == "PNG" and im.width > 300
    with pytest.raises(ValueError, match="does not match 3 classes"):
        plot_confusion_matrix(metrics["confusion"], NAMES[:3], tmp_path / "bad.png")


def test_overlay_colours_legend_and_size(tmp_path: Path) -> None:
    image = np.full((40, 60, 3), 100, dtype=np.uint8)
    image[:, 30:] = 200
    labels = np.full((40, 60), 255, dtype=np.int64)
    labels[:20, :30] = 2  # "red circle" on grey 100
    labels[20:, 30:] = 0  # "sky" on grey 200
    present = overlay_segmentation(image, labels, NAMES, tmp_path / "o.png", alpha=0.5)
    assert present == ["sky", "red circle"]  # label-id order, only classes present
    out = np.asarray(Image.open(tmp_path / "o.png").convert("RGB"))
    assert out.shape == (max(40, 8 + 20 * 2), 60 + LEGEND_WIDTH, 3)
    colours = imgviz.label_colormap()
    expected_2 = np.rint(0.5 * 100 + 0.5 * colours[3].astype(float)).astype(np.uint8)
    expected_0 = np.rint(0.5 * 200 + 0.5 * colours[1].astype(float)).astype(np.uint8)
    np.testing.assert_array_equal(out[5, 5], expected_2)
    np.testing.assert_array_equal(out[30, 50], expected_0)
    np.testing.assert_array_equal(out[30, 5], [100, 100, 100])  # ignore: untouched
    # the legend swatch of the first present class carries its palette colour
    swatch = out[4 + 9, 60 + 8 + 7]
    np.testing.assert_array_equal(swatch, label_palette(4)[0])


def test_overlay_without_legend_keeps_image_size(tmp_path: Path) -> None:
    image = np.zeros((16, 24, 3), dtype=np.uint8)
    labels = np.ones((16, 24), dtype=np.uint8)
    present = overlay_segmentation(image, labels, NAMES, tmp_path / "o.png", 1.0, legend=False)
    assert present == ["grass"]
    out = np.asarray(Image.open(tmp_path / "o.png"))
    assert out.shape == (16, 24, 3)
    assert (out == label_palette(4)[1]).all()
    with pytest.raises(ValueError, match="label_map shape"):
        overlay_segmentation(image, labels[:8], NAMES, tmp_path / "x.png")


def test_palette_covers_large_vocabularies() -> None:
    palette = label_palette(847)
    assert palette.shape == (847, 3) and palette.dtype == np.uint8
    np.testing.assert_array_equal(palette[:254], imgviz.label_colormap()[1:255])


def test_contact_sheet_grid_size(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    crops = [
        rng.integers(0, 256, size=(30, 50, 3), dtype=np.uint8),
        rng.integers(0, 256, size=(80, 20), dtype=np.uint8),  # greyscale
        rng.integers(0, 256, size=(10, 10, 4), dtype=np.uint8),  # RGBA
        np.ones((5, 9), dtype=bool),  # a mask
        rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8),
        rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8),
        rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8),
    ]
    captions = [f"segment {i} with a rather long caption that will wrap" for i in range(7)]
    path = contact_sheet(crops, captions, tmp_path / "sheet.png", cols=3, cell=100)
    with Image.open(path) as im:
        assert im.size == (3 * 100, 3 * (100 + CAPTION_HEIGHT))
    sheet = np.asarray(Image.open(path).convert("RGB"))
    # the 5×9 all-true mask is scaled to 100×56, centred in its cell (row 1, col 0) → white
    top = 100 + CAPTION_HEIGHT
    np.testing.assert_array_equal(sheet[top + 50, 50], [255, 255, 255])
    np.testing.assert_array_equal(sheet[top + 5, 50], [200, 200, 200])  # grey margin
    with pytest.raises(ValueError, match="captions"):
        contact_sheet(crops, captions[:2], tmp_path / "bad.png")
