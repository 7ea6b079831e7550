"""The paper preset: every value the demo changes, back to the USE paper's (§3–4)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from use_core.cli import app
from use_core.config import Params, flatten, load_params, parse_params
from use_core.presets import PAPER, apply_preset, preset_overrides

# The paper's values, read off sections 3-4 (independently of use_core/presets.py).
PAPER_VALUES = {
    "models.profile": "paper",
    "train.encoder": "clip+dinov2",  # §4.2
    "train.use_cls": True,  # Table 5
    "train.epochs": 5,  # §4.2
    "train.batch_size": 32,  # §4.2
    "train.crop_size": 560,  # §4.2
    "train.image_size": 560,  # §4.2: the crop is what the backbones see
    "train.scale_min": 0.5,  # §4.2
    "train.scale_max": 2.0,  # §4.2
    "train.sources": [],  # Table 2: COCO, VG
    "train.feature_cache": False,
    "train.grid": None,  # per-patch pooling (Fig. 5)
    "train.sam_input_size": None,
    "train.dinov2_blocks": 6,  # §4.2
    "train.lr": 0.001,  # §4.2
    "train.poly_power": 0.9,  # §4.2
    "train.weight_decay": 0.01,  # §4.2
    "train.logit_scale": 30.0,  # §4.2
    "ground.box_threshold": 0.05,  # §4.1
    "ground.nms_threshold": 0.7,  # §4.1
    "ground.max_boxes": None,  # §4.1: no cap
    "masks.pred_iou_threshold": 0.6,  # §4.1
    "masks.stability_threshold": 0.6,  # §4.1
    "masks.whole_image_ratio": 0.9,  # §3.1
    "nms.iou_threshold": 0.7,  # §4.1
    "eval.points_per_side": 32,  # §4.3 (SAM's default grid)
    "caption.temperature": 0.8,  # §4.1
    "caption.top_p": 0.4,  # §4.1
    "caption.top_k": 5,  # §4.1
}
EXAMPLE_CAPTION_WORDS = 107  # Figure 3, "Our Prompt"


@pytest.fixture(scope="module")
def demo(repo_root: Path) -> Params:
    return load_params(repo_root / "params.yaml")


def test_paper_preset_holds_the_papers_values(demo: Params) -> None:
    paper = flatten(apply_preset(demo, "paper"))
    assert {k: paper[k] for k in PAPER_VALUES} == PAPER_VALUES
    # enough new tokens for the paper's own example caption (>= 2 tokens per word)
    assert paper["caption.max_new_tokens"] >= 2 * EXAMPLE_CAPTION_WORDS
    assert all(cite for _, cite in PAPER.values())  # every value says where it comes from


def test_paper_preset_reverts_every_demo_choice(demo: Params) -> None:
    """Every key where params.yaml differs from the paper is one the preset sets."""
    demo_flat = flatten(demo)
    changed = {k for k, v in PAPER_VALUES.items() if demo_flat[k] != v}
    assert changed <= set(preset_overrides("paper"))
    switched = {k for k, v in preset_overrides("paper").items() if demo_flat[k] != v}
    assert {
        "train.use_cls",
        "ground.max_boxes",
        "train.image_size",
        "train.feature_cache",
    } <= switched
    assert {"eval.points_per_side", "caption.max_new_tokens", "train.grid"} <= switched
    # what a preset cannot know stays the user's
    paper = apply_preset(demo, "paper")
    assert paper.data.sources == demo.data.sources and paper.eval.benchmarks == demo.eval.benchmarks


def test_params_preset_command_writes_valid_params(tmp_path: Path, repo_root: Path) -> None:
    out = tmp_path / "paper.yaml"
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "params",
            "--params",
            str(repo_root / "params.yaml"),
            "--preset",
            "paper",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    written = parse_params(yaml.safe_load(out.read_text()))
    assert written == apply_preset(load_params(repo_root / "params.yaml"), "paper")
    assert written.models.profile == "paper" and written.train.use_cls is True
    printed = runner.invoke(
        app, ["params", "--params", str(repo_root / "params.yaml"), "--preset", "paper"]
    )
    assert printed.exit_code == 0 and yaml.safe_load(printed.stdout)["train"]["epochs"] == 5
    bad = runner.invoke(
        app, ["params", "--params", str(repo_root / "params.yaml"), "--preset", "x"]
    )
    assert bad.exit_code == 2 and "unknown preset" in bad.output
