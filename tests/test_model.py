"""Tests of the USE model: backbones, fusion, mask pooling head, text cache, loss, checkpoints."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from fuse_first_reference import fuse_first_embed, raw_frozen_features
from safetensors.torch import load_file

from use_core.model import (
    ClipBackboneConfig,
    Dinov2BackboneConfig,
    SamBackboneConfig,
    USEModel,
    USEModelConfig,
    area_weights,
    create_use_model,
    load_use_model,
    pooling_weights,
    save_use_model,
    segment_text_loss,
)
from use_core.model.checkpoint import load_trainable_state
from use_core.model.encoder import pool_first_is_cheaper

FEATURE_DIM = 16
GRID = 8


def tiny_clip(seed: int = 0) -> torch.nn.Module:
    import open_clip

    torch.manual_seed(seed)
    return open_clip.CLIP(
        embed_dim=32,
        vision_cfg={"image_size": 64, "layers": 3, "width": 32, "head_width": 16, "patch_size": 16},
        text_cfg={"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    )


def tiny_dinov2(seed: int = 0) -> torch.nn.Module:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    cfg = Dinov2Config(
        hidden_size=24,
        num_hidden_layers=4,
        num_attention_heads=2,
        mlp_ratio=2,
        patch_size=14,
        image_size=56,
    )
    return Dinov2Model(cfg)


@pytest.fixture(scope="module")
def components() -> dict[str, torch.nn.Module]:
    return {"clip": tiny_clip(), "dinov2": tiny_dinov2()}


def tiny_config(encoder: str, use_cls: bool = True) -> USEModelConfig:
    per_role = {
        "clip": ClipBackboneConfig(),
        "dinov2": Dinov2BackboneConfig(last_blocks=2, input_size=56),
        "sam": SamBackboneConfig(),
    }
    return USEModelConfig(
        backbones=tuple(per_role[r] for r in encoder.split("+")),
        feature_dim=FEATURE_DIM,
        use_cls=use_cls,
        grid_size=GRID,
    )


def build(encoder: str, components: dict, use_cls: bool = True, seed: int = 0) -> USEModel:
    return create_use_model(tiny_config(encoder, use_cls), components, seed=seed)


def two_masks(h: int, w: int) -> torch.Tensor:
    masks = torch.zeros(3, h, w, dtype=torch.bool)
    masks[0, : h // 3, : w // 3] = True
    masks[1, h // 2 :, w // 2 :] = True
    masks[2, h // 4 : h // 2, :] = True
    return masks


@pytest.mark.parametrize("encoder", ["clip", "dinov2", "clip+dinov2"])
@pytest.mark.parametrize("use_cls", [True, False])
def test_shapes_per_encoder_and_cls(encoder: str, use_cls: bool, components: dict) -> None:
    model = build(encoder, components, use_cls)
    n_backbones = len(encoder.split("+"))
    images = torch.rand(2, 3, 48, 80)
    frozen = model.frozen_features(images)
    assert len(frozen.levels) == n_backbones
    for backbone, levels, cls in zip(model.backbone_list, frozen.levels, frozen.cls, strict=True):
        assert [t.shape for t in levels] == [(2, c, GRID, GRID) for c in backbone.level_dims]
        assert cls.shape == (2, backbone.cls_dim)
    if "clip" in encoder:
        assert len(model.backbone_list[0].level_dims) == 3  # every CLIP block
    if "dinov2" in encoder:
        assert model.backbone_list[-1].level_names == ["block2", "block3"]  # the last 2 of 4
    for levels in frozen.levels:  # normalised per cell over channels (LayerNorm without affine)
        for t in levels:
            assert torch.allclose(t.mean(1), torch.zeros(()), atol=1e-4)
            assert torch.allclose(t.var(1, unbiased=False), torch.ones(()), atol=1e-2)
    feats = model.fuse(frozen)
    assert [[t.shape for t in lv] for lv in feats.levels] == [
        [t.shape for t in lv] for lv in frozen.levels
    ]
    if use_cls:
        assert feats.glob is not None and feats.glob.shape == (2, FEATURE_DIM * n_backbones)
    else:
        assert feats.glob is None
    emb = model.embed_segments(feats, two_masks(48, 80), [0, 1, 1])
    assert emb.shape == (3, 32) and emb.dtype == torch.float32
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    assert model.encode_text(["a red circle", "a blue square"]).shape == (2, 32)


def test_uint8_and_float_images_agree(components: dict) -> None:
    model = build("clip", components)
    u8 = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    a = model.encode_image(u8).levels[0]
    b = model.encode_image(u8.float() / 255.0).levels[0]
    assert all(torch.allclose(x, y) for x, y in zip(a, b, strict=True))


def test_area_weights_hand_computed() -> None:
    # 4x4 image, 2x2 grid of 2x2-pixel patches; a mask of 3 pixels inside the top-left patch.
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, 0, 0] = mask[0, 0, 1] = mask[0, 1, 0] = True
    area = area_weights(mask, (2, 2))
    assert torch.allclose(area, torch.tensor([[[0.75, 0.0], [0.0, 0.0]]]))
    assert torch.allclose(pooling_weights(area), torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    # Two patches: 3 pixels top-left and 1 pixel bottom-right → weights 3/4 and 1/4 after norm.
    mask[0, 3, 3] = True
    area = area_weights(mask, (2, 2))
    assert torch.allclose(area, torch.tensor([[[0.75, 0.0], [0.0, 0.25]]]))
    assert torch.allclose(pooling_weights(area), torch.tensor([[0.75, 0.0, 0.0, 0.25]]))


def test_area_weights_non_divisible_split_pixels() -> None:
    # 3x3 image on a 2x2 grid: cells are 1.5 px wide; the centre pixel is split in four.
    mask = torch.zeros(1, 3, 3, dtype=torch.bool)
    mask[0, 1, 1] = True
    area = area_weights(mask, (2, 2))
    assert torch.allclose(area, torch.full((1, 2, 2), 0.25 / 2.25))
    full = area_weights(torch.ones(1, 3, 3), (2, 2))
    assert torch.allclose(full, torch.ones(1, 2, 2))


def test_area_weights_in_chunks_equal_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """Converting masks a few at a time (uneven last chunk) gives the one-pass values."""
    import use_core.model.head as head

    masks = torch.rand(7, 30, 50) > 0.6
    rows = head._overlap_matrix(30, 4, masks.device)
    cols = head._overlap_matrix(50, 4, masks.device)
    expected = torch.einsum("gh,shw,kw->sgk", rows, masks.float(), cols)
    monkeypatch.setattr(head, "AREA_CHUNK_PIXELS", 3 * 30 * 50)  # chunks of 3, 3, 1
    torch.testing.assert_close(area_weights(masks, (4, 4)), expected, atol=1e-6, rtol=1e-5)
    divisible = torch.rand(5, 8, 8) > 0.5
    torch.testing.assert_close(
        area_weights(divisible, (4, 4)), F.avg_pool2d(divisible.float(), 2), atol=0, rtol=0
    )


def test_frozen_levels_are_channels_last_and_normalised(components: dict) -> None:
    """Levels come back channels-last (cells' channels contiguous, what pooling reads), with
    the same values as normalising contiguous levels."""
    model = build("clip+dinov2", components)
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        frozen = model.frozen_features(images)
        raw = raw_frozen_features(model, images)
    for got_levels, raw_levels in zip(frozen.levels, raw.levels, strict=True):
        for got, x in zip(got_levels, raw_levels, strict=True):
            assert got.is_contiguous(memory_format=torch.channels_last)
            ref = F.layer_norm(x.permute(0, 2, 3, 1).contiguous(), (x.shape[1],))
            torch.testing.assert_close(got, ref.permute(0, 3, 1, 2), atol=1e-5, rtol=1e-5)


def test_empty_and_tiny_masks_get_defined_embeddings(components: dict) -> None:
    model = build("clip", components)
    feats = model.encode_image(torch.rand(1, 3, 64, 64))
    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[1, 5, 7] = True  # one pixel: pools from the single cell holding it
    weights = model.segment_weights(masks)
    assert torch.allclose(weights[0], torch.full((GRID * GRID,), 1.0 / (GRID * GRID)))
    assert weights[1].nonzero().flatten().tolist() == [0]
    emb = model.embed_segments(feats, masks)
    assert torch.isfinite(emb).all()


def perturb(model: USEModel, seed: int = 1) -> USEModel:
    """Random trainable parameters (LayerNorm γ ≠ 1, β ≠ 0, scales unequal): a stricter test."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return model


def mixed_masks(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Four masks (the last one empty: uniform weights) over two images, index not sorted."""
    masks = torch.cat([two_masks(h, w), torch.zeros(1, h, w, dtype=torch.bool)])
    return masks, torch.tensor([1, 0, 1, 0])


@pytest.mark.parametrize("encoder", ["clip", "dinov2", "clip+dinov2"])
@pytest.mark.parametrize("use_cls", [True, False])
@pytest.mark.parametrize("order", ["auto", "pool_first", "fuse_first"])
def test_pool_first_equals_the_fuse_first_reference(
    encoder: str, use_cls: bool, order: str, components: dict
) -> None:
    """Pooling the normalised levels before the LLNs is exactly the old per-cell computation."""
    model = perturb(build(encoder, components, use_cls))
    images = torch.rand(2, 3, 40, 48)
    masks, index = mixed_masks(40, 48)
    weights = model.segment_weights(masks)
    assert torch.allclose(weights[3], torch.full((GRID * GRID,), 1.0 / (GRID * GRID)))
    expected = fuse_first_embed(model, raw_frozen_features(model, images), weights, index)
    feats = model.encode_image(images)
    emb = model.embed_segments(feats, masks, index, order=order)  # type: ignore[arg-type]
    assert emb.shape == expected.shape == (4, 32)
    assert torch.allclose(emb, expected, atol=1e-5), (emb - expected).abs().max()
    # The same through precomputed (S, G*G) weights, and one image alone.
    assert torch.allclose(model.embed_segments(feats, weights, index), expected, atol=1e-5)
    one = model.encode_image(images[1:])
    assert torch.allclose(model.embed_segments(one, masks[[0, 2]]), expected[[0, 2]], atol=1e-5)


@pytest.mark.parametrize("encoder", ["clip", "clip+dinov2"])
@pytest.mark.parametrize("use_cls", [True, False])
def test_gradients_are_equal_in_both_orders(encoder: str, use_cls: bool, components: dict) -> None:
    model = perturb(build(encoder, components, use_cls))
    images = torch.rand(2, 3, 40, 40)
    masks, index = mixed_masks(40, 40)
    target = torch.randn(4, 32, generator=torch.Generator().manual_seed(0))
    raw = raw_frozen_features(model, images)
    weights = model.segment_weights(masks)

    def grads(embed: torch.Tensor) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        (embed * target).sum().backward()
        named = {**dict(model.encoder_head.named_parameters(prefix="encoder_head"))}
        named.update(model.segment_head.named_parameters(prefix="segment_head"))
        assert all(p.grad is not None for p in named.values())
        return {k: p.grad.clone() for k, p in named.items() if p.grad is not None}

    reference = grads(fuse_first_embed(model, raw, weights, index))
    assert len(reference) == len(model.trainable_parameters())
    for order in ("pool_first", "fuse_first"):
        got = grads(model.embed_segments(model.encode_image(images), masks, index, order=order))
        for name, g in reference.items():
            assert torch.allclose(got[name], g, atol=1e-5, rtol=1e-4), (order, name)


def test_auto_order_fuses_first_for_many_segments(components: dict) -> None:
    model = perturb(build("clip+dinov2", components))
    cells = GRID * GRID
    dims = model.encoder_head.fusion_list[0].level_dims
    assert pool_first_is_cheaper(8, 1, cells, dims, FEATURE_DIM)  # training-sized: pool first
    assert not pool_first_is_cheaper(200, 1, cells, dims, FEATURE_DIM)  # many: fuse first
    assert pool_first_is_cheaper(200, 32, cells, dims, FEATURE_DIM)  # ... unless many images
    images = torch.rand(1, 3, 40, 40)
    weights = pooling_weights(torch.rand(200, GRID, GRID) * (torch.rand(200, 1, 1) > 0.1))
    expected = fuse_first_embed(model, raw_frozen_features(model, images), weights, [0] * 200)
    feats = model.encode_image(images)
    for order in ("auto", "pool_first"):
        emb = model.embed_segments(feats, weights, order=order)  # type: ignore[arg-type]
        assert torch.allclose(emb, expected, atol=1e-5), order


def test_image_index_is_checked(components: dict) -> None:
    model = build("clip", components)
    feats = model.encode_image(torch.rand(1, 3, 40, 40))
    with pytest.raises(ValueError, match="out of range"):
        model.embed_segments(feats, two_masks(40, 40), [0, 1, 0])
    with pytest.raises(ValueError, match="image_index must be"):
        model.embed_segments(feats, two_masks(40, 40), [0, 0])
    assert model.embed_segments(feats, torch.zeros(0, 40, 40)).shape == (0, 32)


def test_frozen_backbones_get_no_gradient(components: dict) -> None:
    model = build("clip+dinov2", components)
    model.train()
    assert all(not b.training for b in model.backbones) and not model.text_encoder.training
    frozen_before = {
        k: v.clone() for k, v in model.named_parameters() if k.startswith(("backbones", "text"))
    }
    trainable_before = {k: v.clone() for k, v in model.trainable_state().items()}
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    feats = model.encode_image(torch.rand(2, 3, 48, 48))
    seg = model.embed_segments(feats, two_masks(48, 48), [0, 1, 1])
    txt = model.encode_text(["a", "b", "c"])
    loss = segment_text_loss(seg, txt)
    loss.backward()
    for name, p in model.named_parameters():
        if name.startswith(("backbones", "text_encoder")):
            assert p.grad is None, name
            assert not p.requires_grad, name
    assert all(p.grad is not None for p in model.trainable_parameters())
    opt.step()
    for k, v in model.named_parameters():
        if k in frozen_before:
            assert torch.equal(v, frozen_before[k]), k
    after = model.trainable_state()
    assert any(not torch.equal(after[k], trainable_before[k]) for k in after)


def test_text_cache_encodes_each_unique_text_once(components: dict) -> None:
    model = build("clip", components)
    clip = model.text_encoder.clip
    prompts: list[int] = []
    real = clip.encode_text

    def counting(tokens: torch.Tensor, *a, **k):  # the real encoder, counted
        prompts.append(tokens.shape[0])
        return real(tokens, *a, **k)

    clip.encode_text = counting
    try:
        first = model.encode_text(["red circle", "blue square", "red circle"])
        second = model.encode_text(["blue square", "green star"])
    finally:
        del clip.encode_text
    templates = len(model.text_encoder.templates)
    assert templates == 4
    assert sum(prompts) == 3 * templates  # three unique texts, four templates each
    assert model.text_encoder.cache_info() == {"hits": 2, "misses": 3, "size": 3, "disk_hits": 0}
    assert torch.equal(first[0], first[2]) and torch.equal(first[1], second[0])
    # Template average: the mean of the normalised per-template embeddings, normalised.
    tok = model.text_encoder.tokenizer
    with torch.no_grad():
        per = F.normalize(
            real(tok([t.format("green star") for t in model.text_encoder.templates])), dim=-1
        )
    assert torch.allclose(second[1], F.normalize(per.mean(0), dim=0), atol=1e-5)


def eq1_direct(s: torch.Tensor, t: torch.Tensor, tau: float) -> torch.Tensor:
    """Equation (1) written out term by term."""
    k = s.shape[0]
    total = torch.tensor(0.0)
    for i in range(k):
        num = torch.exp(s[i] @ t[i] * tau)
        row = sum(torch.exp(s[i] @ t[j] * tau) for j in range(k))
        col = sum(torch.exp(s[j] @ t[i] * tau) for j in range(k))
        total = total + torch.log(num / row) + torch.log(num / col)
    return -total / (2 * k)


def test_loss_equals_equation_1() -> None:
    torch.manual_seed(0)
    s = F.normalize(torch.randn(5, 8), dim=1)
    t = F.normalize(torch.randn(5, 8), dim=1)
    direct = eq1_direct(s, t, 30.0)
    assert torch.allclose(segment_text_loss(s, t, 30.0), direct, atol=1e-4)
    # With all texts distinct, the duplicate-aware form is eq. (1) too.
    assert torch.allclose(segment_text_loss(s, t, 30.0, torch.arange(5)), direct, atol=1e-4)


def test_loss_with_duplicate_texts_is_multi_positive() -> None:
    torch.manual_seed(1)
    s = F.normalize(torch.randn(3, 8), dim=1)
    u = F.normalize(torch.randn(2, 8), dim=1)
    index = torch.tensor([0, 1, 0])  # segments 0 and 2 share text 0
    logits = 30.0 * s @ u.T
    s2t = -sum(torch.log_softmax(logits[i], 0)[index[i]] for i in range(3)) / 3
    col = torch.log_softmax(logits, 0)
    t2s = -(torch.logsumexp(col[[0, 2], 0], 0) + col[1, 1]) / 2
    assert torch.allclose(segment_text_loss(s, u, 30.0, index), 0.5 * (s2t + t2s), atol=1e-5)


def test_checkpoint_roundtrip_without_pickles(components: dict, tmp_path: Path) -> None:
    model = build("clip+dinov2", components, seed=3)
    with torch.no_grad():
        model.encoder_head.fusions[0].scales.add_(0.5)  # type: ignore[operator]  # differ from any fresh init
    save_use_model(model, tmp_path, {"note": "test"})
    tensors = load_file(str(tmp_path / "model.safetensors"))
    assert set(tensors) == set(model.trainable_state())
    assert not any(k.startswith("backbones") for k in tensors)
    config = json.loads((tmp_path / "model.json").read_text())
    assert config["format"] == "use-model/2" and config["extra"] == {"note": "test"}
    assert USEModelConfig.model_validate(config["config"]) == model.config

    loaded = load_use_model(tmp_path, components)
    images = torch.rand(1, 3, 40, 40)
    masks = two_masks(40, 40)
    with torch.no_grad():
        a = model.embed_segments(model.encode_image(images), masks)
        b = loaded.embed_segments(loaded.encode_image(images), masks)
    assert torch.allclose(a, b)

    other = build("clip", components)
    with pytest.raises(ValueError, match="backbones"):
        load_trainable_state(other, tmp_path)


@pytest.fixture(scope="module")
def mobile_sam(mobile_sam_checkpoint: Path) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mobile_sam import sam_model_registry

        return sam_model_registry["vit_t"](checkpoint=str(mobile_sam_checkpoint)).eval()


@pytest.mark.slow
@pytest.mark.parametrize("encoder", ["sam", "clip+sam"])
def test_sam_encoder_levels(encoder: str, mobile_sam: torch.nn.Module, components: dict) -> None:
    model = build(encoder, {**components, "sam": mobile_sam})
    sam = model.backbone_list[-1]
    assert sam.level_names == ["stage0", "stage1", "stage2", "stage3", "neck"]
    assert sam.level_dims == [128, 160, 320, 320, 256]
    images = torch.rand(1, 3, 96, 128)  # not square: SAM pads, the padding is cropped off
    frozen = model.frozen_features(images)
    assert [t.shape for t in frozen.levels[-1]] == [(1, c, GRID, GRID) for c in sam.level_dims]
    assert frozen.cls[-1].shape == (1, 256)
    raw = sam(images)
    # 96x128 → 768x1024 in SAM's frame: 3/4 of the rows of each grid are valid.
    assert [t.shape[-2:] for t in raw.levels] == [(96, 128), (48, 64), (48, 64), (48, 64), (48, 64)]
    emb = model.embed_segments(model.fuse(frozen), two_masks(96, 128))
    assert emb.shape == (3, 32)
    assert all(p.grad is None and not p.requires_grad for p in sam.parameters())


@pytest.mark.slow
def test_sam_encoder_at_working_resolution(mobile_sam: torch.nn.Module, components: dict) -> None:
    """TinyViT rebuilt for 448 carries the checkpoint's weights and gives S/16 grids; at the
    native 1024 the step-by-step forward equals the stock encoder."""
    from use_core.model.backbones import SamEncoderBackbone

    native = SamEncoderBackbone(mobile_sam)
    assert native.encoder is mobile_sam.image_encoder and native.input_size == (1024, 1024)
    small = SamEncoderBackbone(mobile_sam, input_size=448)
    assert small.spec()["input_size"] == [448, 448]
    reference = mobile_sam.image_encoder.state_dict()
    rebuilt = small.encoder.state_dict()
    assert rebuilt.keys() == reference.keys()
    assert all(torch.equal(rebuilt[k], reference[k]) for k in reference)

    images = torch.rand(1, 3, 112, 112)
    x, _ = native._preprocess(images)
    with torch.no_grad():
        stock = mobile_sam.image_encoder(x)
    assert torch.allclose(native(images).levels[-1], stock.float())

    out = small(images)
    assert [t.shape[-2:] for t in out.levels] == [(56, 56), (28, 28), (28, 28), (28, 28), (28, 28)]
    # The same image at 448 and 1024 gives related, not identical, neck features.
    big = F.interpolate(native(images).levels[-1], size=(28, 28), mode="area")
    assert F.cosine_similarity(out.levels[-1].flatten(), big.flatten(), dim=0) > 0.5
    assert not torch.allclose(out.levels[-1], big)

    config = tiny_config("sam").with_backbone("sam", input_size=448)
    model = create_use_model(config, {**components, "sam": mobile_sam})
    assert model.spec()["backbones"][0]["input_size"] == [448, 448]
    with pytest.raises(ValueError, match="multiple of 16"):
        SamEncoderBackbone(mobile_sam, input_size=450)
