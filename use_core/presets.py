"""Params presets as data: named sets of dotted ``section.key`` → value, applied over params.

``paper`` switches back every value the demo changes (each marked "demo:" in ``params.yaml``)
to the USE paper's (Wang et al., CVPR 2024; sections cited per value), so a user with the real
models and data runs what the paper describes::

    use params --preset paper --out params.yaml      # then point data.sources at COCO / VG

What a preset cannot know stays as it is: ``data.sources`` and ``eval.benchmarks`` name the
user's data on disk (COCO captions / Visual Genome; ADE-150/847, PC-59/459, PartImageNet).
"""

from __future__ import annotations

from typing import Any

from use_core.config import Params, parse_params

__all__ = ["PRESETS", "apply_preset", "preset_overrides"]

# The paper's example caption (Figure 3, "Our Prompt") has 107 words; Llama-2's SentencePiece
# tokenizer spends ~1.3–1.5 tokens per English word, so 256 new tokens hold it (≥ 2 per word).
PAPER_CAPTION_TOKENS = 256

# dotted key → (value, where the paper says so)
PAPER: dict[str, tuple[Any, str]] = {
    "models.profile": ("paper", "§4.1–4.2: CLIP ViT-L/14@336, DINOv2 ViT-L/14, SAM ViT-H, G-DINO"),
    "caption.max_new_tokens": (PAPER_CAPTION_TOKENS, "§3.1 / Fig. 3: 107-word example caption"),
    "ground.max_boxes": (None, "§4.1: every box over box threshold 0.05 after NMS 0.7, no cap"),
    "train.encoder": ("clip+dinov2", "§3.2 / §4.2 / Table 4: CLIP + DINOv2"),
    "train.use_cls": (True, "§3.2 / Table 5: the cls tokens are concatenated"),
    "train.image_size": (560, "§4.2: the backbones see the 560×560 training crop"),
    "train.grid": (None, "§3.2 / Fig. 5: segment weights over the backbones' own patches"),
    "train.epochs": (5, "§4.2: 5 epochs"),
    "train.batch_size": (32, "§4.2: batch size 32"),
    "train.crop_size": (560, "§4.2: random crops of 560×560"),
    "train.scale_min": (0.5, "§4.2: random resizing by a factor from 0.5"),
    "train.scale_max": (2.0, "§4.2: ... to 2"),
    "train.sam_input_size": (None, "demo only (MobileSAM as a backbone): back to native 1024"),
    "train.sources": ([], "§4.1 / Table 2: trained on all pairs (COCO, VG)"),
    "train.feature_cache": (False, "§4.2: a fresh random resize + crop at every step"),
    "eval.points_per_side": (32, "§4.3: SAM's regular point grid at its default 32×32"),
    "masks.pred_iou_threshold": (0.6, "§4.1: lowered from SAM's 0.88"),
    "masks.stability_threshold": (0.6, "§4.1: lowered from SAM's 0.95"),
}

PRESETS: dict[str, dict[str, tuple[Any, str]]] = {"paper": PAPER}


def preset_overrides(name: str) -> dict[str, Any]:
    """The dotted ``section.key`` → value mapping of preset ``name`` (KeyError names the known)."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return {key: value for key, (value, _) in PRESETS[name].items()}


def apply_preset(params: Params, name: str) -> Params:
    """``params`` with every value of preset ``name`` set (validated as a new :class:`Params`)."""
    raw = params.model_dump(mode="json")
    for dotted, value in preset_overrides(name).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        if leaf not in node:
            raise KeyError(f"preset {name!r} sets {dotted}, which params do not have")
        node[leaf] = value
    return parse_params(raw)
