"""The paper profile at full size on PyTorch's ``meta`` device: shapes only, no memory or compute.

CLIP ViT-L-14-336-quickgelu (open_clip), DINOv2-L/14 (transformers) and SAM ViT-H (segment-
anything) are built with their libraries' own builders on ``meta`` and run through the
project's backbone adapters, the USE encoder / fusion and the segment head, as the paper
preset configures them (``use params --preset paper``): every shape of the paper profile.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from use_core.config import load_params
from use_core.model import USEModelConfig, create_use_model
from use_core.presets import apply_preset

META = torch.device("meta")
CROP = 560  # paper §4.2
GRID = CROP // 14  # ViT-L/14 at 560: 40 x 40 patches


@pytest.fixture(scope="module")
def paper_params(repo_root: Path):
    return apply_preset(load_params(repo_root / "params.yaml"), "paper")


@pytest.fixture(scope="module")
def clip_l14_336():
    """open_clip's ViT-L-14-336-quickgelu (the paper's CLIP), built at the 560 crop on meta."""
    import open_clip

    # under the meta device context too: with device="meta" alone open_clip first initialises
    # on the CPU (1.7 GB, 5 s) and then moves
    with warnings.catch_warnings(), META:
        warnings.simplefilter("ignore")
        model = open_clip.create_model(
            "ViT-L-14-336-quickgelu", pretrained=None, device=META, force_image_size=CROP
        )
    return model.eval()


@pytest.fixture(scope="module")
def dinov2_large():
    """transformers ``Dinov2Model`` with facebook/dinov2-large's architecture, on meta."""
    from transformers import Dinov2Config, Dinov2Model

    cfg = Dinov2Config(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        patch_size=14,
        image_size=518,
        mlp_ratio=4,
    )
    with META:
        return Dinov2Model(cfg).eval()


def test_paper_architectures_have_the_papers_sizes(clip_l14_336, dinov2_large) -> None:
    visual = clip_l14_336.visual
    assert len(visual.transformer.resblocks) == 24 and visual.transformer.width == 1024
    assert visual.patch_size == (14, 14) and visual.image_size == (CROP, CROP)
    n_clip = sum(p.numel() for p in clip_l14_336.parameters())
    n_dino = sum(p.numel() for p in dinov2_large.parameters())
    assert 427e6 < n_clip < 429e6  # 427.9M at 336 (+ the position embedding of 40x40 patches)
    assert round(n_dino / 1e6, 1) == 304.4
    for module in (clip_l14_336, dinov2_large):
        assert {t.device.type for t in (*module.parameters(), *module.buffers())} == {"meta"}


def test_paper_profile_shapes_through_adapters_encoder_and_head(
    paper_params, clip_l14_336, dinov2_large
) -> None:
    config = USEModelConfig.from_params(paper_params)
    assert config.encoder == "clip+dinov2" and config.use_cls and config.grid_size is None
    assert (
        config.backbone("clip").input_size == CROP and config.backbone("dinov2").input_size == CROP
    )
    model = create_use_model(config, {"clip": clip_l14_336, "dinov2": dinov2_large})
    model.to(META)
    clip, dino = model.backbone_list
    assert (clip.native_grid, dino.native_grid) == (GRID, GRID) and model.grid == (GRID, GRID)
    assert clip.level_dims == [1024] * 24 and clip.cls_dim == 768
    assert dino.level_names == [f"block{b}" for b in range(18, 24)]
    assert dino.level_dims == [1024] * 6 and dino.cls_dim == 1024

    images = torch.empty((2, 3, CROP, CROP), device=META)
    raw_clip, raw_dino = clip(images), dino(images)
    assert [tuple(t.shape) for t in raw_clip.levels] == [(2, 1024, GRID, GRID)] * 24
    assert [tuple(t.shape) for t in raw_dino.levels] == [(2, 1024, GRID, GRID)] * 6
    assert tuple(raw_clip.cls.shape) == (2, 768) and tuple(raw_dino.cls.shape) == (2, 1024)

    feats = model.encode_image(images)
    assert [len(lv) for lv in feats.levels] == [24, 6] and feats.grid == (GRID, GRID)
    d = paper_params.train.feature_dim
    assert feats.glob is not None and tuple(feats.glob.shape) == (2, 2 * d)
    assert model.encoder_head.out_dim == 2 * d + 2 * d  # two fused patch parts + two cls parts

    masks = torch.empty((5, CROP, CROP), dtype=torch.bool, device=META)
    emb = model.embed_segments(feats, masks, image_index=torch.tensor([0, 0, 1, 1, 1], device=META))
    assert tuple(emb.shape) == (5, 768) and model.embed_dim == 768
    text = model.text_encoder.clip.encode_text(torch.zeros((4, 77), dtype=torch.long, device=META))
    assert tuple(text.shape) == (4, 768)


def test_sam_vit_h_image_encoder_shape() -> None:
    """segment-anything's ViT-H (the masks stage's SAM) on meta: 256 x 64 x 64 at 1024."""
    from segment_anything import sam_model_registry

    with META:
        sam = sam_model_registry["vit_h"](checkpoint=None)
    assert round(sum(p.numel() for p in sam.parameters()) / 1e6, 1) == 641.1
    out = sam.image_encoder(torch.empty((1, 3, 1024, 1024), device=META))
    assert tuple(out.shape) == (1, 256, 64, 64)
