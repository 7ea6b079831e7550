"""Tests of USE training: GT pairs, augmentation, feature cache, steps, resume, validation."""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fuse_first_reference import fuse_first_embed, raw_frozen_features
from safetensors.torch import load_file

from use_core.config import Params
from use_core.data.pairs import validate_pairs_frame
from use_core.data.shapes.gt import pairs_from_shapes_gt, shapes_class_names
from use_core.model import USEModel, USEModelConfig, create_use_model
from use_core.train import train_use_model
from use_core.train.augment import random_scale_crop
from use_core.train.dataset import SegmentTextDataset, rng_for
from use_core.train.feature_cache import CACHE_FORMAT, build_feature_cache
from use_core.train.loop import _train_step
from use_core.train.metrics_log import JsonlMetricsLogger
from use_core.train.views import ViewFeatures, augmented_view_maker, compute_view_features

GRID = 8


def tiny_clip(seed: int = 0) -> torch.nn.Module:
    """A small random open_clip CLIP (64 px input, 3 blocks, 32-d joint space)."""
    import open_clip

    torch.manual_seed(seed)
    return open_clip.CLIP(
        embed_dim=32,
        vision_cfg={"image_size": 64, "layers": 3, "width": 32, "head_width": 16, "patch_size": 16},
        text_cfg={"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    )


@pytest.fixture(scope="module")
def clip() -> torch.nn.Module:
    return tiny_clip()


def tiny_model(clip: torch.nn.Module) -> USEModel:
    config = USEModelConfig(backbones=["clip"], feature_dim=16, grid_size=GRID)
    return create_use_model(config, {"clip": clip}, seed=0)


def small_params(**train: object) -> Params:
    params = Params()
    settings = {
        "encoder": "clip",
        "epochs": 2,
        "batch_size": 4,
        "crop_size": 160,
        "feature_dim": 16,
        "cache_views": 2,
        "max_segments_per_image": 6,
        **train,
    }
    for key, value in settings.items():
        setattr(params.train, key, value)
    return params


def test_pairs_from_shapes_gt_fit_the_pairs_schema(shapes_small: Path) -> None:
    df = pairs_from_shapes_gt(shapes_small, "train")
    validate_pairs_frame(df)
    assert df["texts"].map(len).min() >= 1
    assert set(df["image_path"].map(lambda p: (shapes_small / p).exists())) == {True}
    val = pairs_from_shapes_gt(shapes_small, "val", with_class_name=True)
    classes = set(shapes_class_names(shapes_small))
    named = val["class_name"].dropna()
    assert len(named) and named.isin(classes).any()
    ds = SegmentTextDataset(val, shapes_small)
    image, masks = ds.load(0)
    assert image.dtype == np.uint8 and masks.shape == (len(ds.images[0].rows), *image.shape[:2])
    assert int(masks[0].sum()) == int(val.loc[ds.images[0].rows[0], "area"])


def test_random_scale_crop_moves_masks_with_pixels() -> None:
    image = np.zeros((100, 120, 3), dtype=np.uint8)
    masks = np.zeros((3, 100, 120), dtype=bool)
    image[20:50, 30:70] = (255, 0, 0)
    masks[0, 20:50, 30:70] = True  # the red block
    masks[1, 95:, 115:] = True  # a corner speck: usually cropped away
    masks[2] = True  # whole image
    for seed in range(10):
        view = random_scale_crop(image, masks, rng_for(seed), 64, 0.5, 2.0)
        assert view.image.shape == (3, 64, 64) and view.masks.shape[1:] == (64, 64)
        again = random_scale_crop(image, masks, rng_for(seed), 64, 0.5, 2.0)
        assert torch.equal(view.image, again.image) and np.array_equal(view.kept, again.kept)
        if 0 in view.kept:
            red = view.masks[list(view.kept).index(0)]
            inside = view.image[0][red]
            assert inside.numel() and float(inside.min()) > 0.5  # mask pixels are red
        for k, seg in zip(view.kept, view.masks, strict=True):
            assert seg.any(), f"segment {k} kept although empty"
    dropped = random_scale_crop(image, masks, np.random.default_rng(0), 32, 2.0, 2.0)
    assert len(dropped.kept) < 3  # at 2x, a 32 px crop cannot hold all three


def test_a_few_steps_lower_the_loss(shapes_small: Path, clip: torch.nn.Module) -> None:
    pairs = pairs_from_shapes_gt(shapes_small, "train")
    ds = SegmentTextDataset(pairs, shapes_small)
    model = tiny_model(clip)
    maker = augmented_view_maker(ds, 0, 160, 1.0, 1.0, stream=0)
    views = compute_view_features(model, ds, [(i, maker(i, 0)) for i in range(4)])
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    losses = []
    for step in range(20):
        result = _train_step(model, opt, ds, views, rng_for(0, step), 64, 30.0)
        assert result is not None
        losses.append(result[0])
    # One text is sampled per segment and step, so the loss is noisy; its trend is clear.
    assert losses[-1] < 0.6 * losses[0], losses
    assert np.mean(losses[-5:]) < np.mean(losses[:5]), losses


def test_training_steps_match_the_fuse_first_reference(
    shapes_small: Path, clip: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The product training step (pool first) gives the old per-cell path's loss history."""
    pairs = pairs_from_shapes_gt(shapes_small, "train")
    ds = SegmentTextDataset(pairs, shapes_small)
    maker = augmented_view_maker(ds, 0, 160, 1.0, 1.0, stream=0)
    items = [(i, maker(i, 0)) for i in range(4)]

    def fresh() -> Any:
        return tiny_model(clip)

    model, ref = fresh(), fresh()
    views = compute_view_features(model, ds, items)
    raw_views = [
        ViewFeatures(raw_frozen_features(ref, view.image[None]), v.weights, v.rows)
        for (_, view), v in zip(items, views, strict=True)
    ]
    monkeypatch.setattr(ref, "fuse", lambda frozen: frozen)
    monkeypatch.setattr(ref, "embed_segments", partial(fuse_first_embed, ref))
    histories = []
    for m, vs in ((model, views), (ref, raw_views)):
        opt = torch.optim.AdamW(m.trainable_parameters(), lr=1e-2)
        steps = [_train_step(m, opt, ds, vs, rng_for(0, step), 5, 30.0) for step in range(8)]
        histories.append([r[0] for r in steps if r is not None])
    assert len(histories[0]) == 8
    assert np.allclose(histories[0], histories[1], rtol=1e-4, atol=1e-5), histories
    got, want = model.trainable_state(), ref.trainable_state()
    for key in want:
        assert torch.allclose(got[key], want[key], atol=1e-4), key


@pytest.mark.slow
def test_feature_cache_is_deterministic_and_rebuilt_on_change(
    shapes_small: Path, clip: torch.nn.Module, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pairs = pairs_from_shapes_gt(shapes_small, "train")
    ds = SegmentTextDataset(pairs, shapes_small)
    model = tiny_model(clip)
    maker = augmented_view_maker(ds, 0, 160, 0.5, 2.0, stream=0)
    a = build_feature_cache(tmp_path / "a", "k1", model, ds, 2, maker, shard_images=3)
    assert "estimated" in capsys.readouterr().err
    b = build_feature_cache(tmp_path / "b", "k1", model, ds, 2, maker, shard_images=3)
    va, vb = a.get(5, 1), b.get(5, 1)
    assert va.frozen.levels[0][0].dtype == torch.float16
    assert torch.equal(va.frozen.levels[0][2], vb.frozen.levels[0][2])
    assert torch.equal(va.weights, vb.weights) and np.array_equal(va.rows, vb.rows)
    fresh = compute_view_features(model, ds, [(5, maker(5, 1))])[0]
    assert torch.allclose(va.frozen.cls[0].float(), fresh.frozen.cls[0], atol=1e-2)
    assert sorted(p.name for p in (tmp_path / "a").iterdir())[:1] == ["cache.json"]
    shard = tmp_path / "a" / "shard_00000.safetensors"
    mtime = shard.stat().st_mtime_ns
    build_feature_cache(tmp_path / "a", "k1", model, ds, 2, maker, shard_images=3)
    assert shard.stat().st_mtime_ns == mtime  # reused
    build_feature_cache(tmp_path / "a", "k2", model, ds, 2, maker, shard_images=3)
    assert shard.stat().st_mtime_ns != mtime  # another key: rebuilt
    # Stored levels are normalised per cell; a cache of raw levels (format 1) is rebuilt.
    level = va.frozen.levels[0][0].float()
    assert torch.allclose(level.mean(1), torch.zeros(()), atol=1e-2)
    manifest_path = tmp_path / "a" / "cache.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["format"] == CACHE_FORMAT == 2
    manifest_path.write_text(json.dumps({**manifest, "format": 1}))
    mtime = shard.stat().st_mtime_ns
    build_feature_cache(tmp_path / "a", "k2", model, ds, 2, maker, shard_images=3)
    assert shard.stat().st_mtime_ns != mtime
    assert json.loads(manifest_path.read_text())["format"] == CACHE_FORMAT


class Interrupt(Exception):
    pass


class InterruptingLogger(JsonlMetricsLogger):
    """Writes like the default logger, then raises at a given step (a crash mid-epoch)."""

    def __init__(self, path: Path, at_step: int) -> None:
        super().__init__(path)
        self.at_step = at_step

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        super().log_metrics(metrics, step)
        if step == self.at_step:
            raise Interrupt


@pytest.mark.slow
@pytest.mark.parametrize("feature_cache", [True, False])
def test_resume_equals_uninterrupted(
    feature_cache: bool, shapes_small: Path, clip: torch.nn.Module, tmp_path: Path
) -> None:
    params = small_params(feature_cache=feature_cache)
    train = pairs_from_shapes_gt(shapes_small, "train")
    val = pairs_from_shapes_gt(shapes_small, "val", with_class_name=True)
    classes = shapes_class_names(shapes_small)
    kwargs: dict[str, Any] = dict(class_names=classes, grid_size=GRID, show_progress=False)
    comps = {"clip": clip}

    full = train_use_model(params, train, val, shapes_small, tmp_path / "a", comps, **kwargs)
    assert full.epochs_run == 2 and full.resumed_from_epoch is None

    with pytest.raises(Interrupt):  # 8 images / batch 4 = 2 steps per epoch; die at step 3
        train_use_model(
            params,
            train,
            val,
            shapes_small,
            tmp_path / "b",
            comps,
            InterruptingLogger(tmp_path / "b" / "steps.jsonl", at_step=3),
            **kwargs,
        )
    assert [p.name for p in (tmp_path / "b" / "checkpoints").iterdir()] == ["epoch_001"]
    resumed = train_use_model(params, train, val, shapes_small, tmp_path / "b", comps, **kwargs)
    assert resumed.resumed_from_epoch == 1 and resumed.epochs_run == 1

    wa = load_file(str(tmp_path / "a" / "model" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "model" / "model.safetensors"))
    assert set(wa) == set(wb)
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key

    def untimed(history: list[dict]) -> list[dict]:
        return [{k: v for k, v in h.items() if not k.endswith("time_s")} for h in history]

    assert untimed(resumed.history) == untimed(full.history)  # same losses and val metrics

    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    for key in (
        "val/retrieval_top1",
        "val/retrieval_top5",
        "val/zero_shot_top1",
        "untrained/zero_shot_top1",
        "val/zero_shot_colour",
        "val/zero_shot_shape",
    ):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert (tmp_path / "a" / "epochs.csv").read_text().count("\n") == 4  # header + epochs 0..2
    steps = [json.loads(x) for x in (tmp_path / "b" / "steps.jsonl").read_text().splitlines()]
    # The interrupted run logged step 3 before dying; the resumed run dropped it and re-ran it.
    assert [s["step"] for s in steps if "train/lr" in s] == [1, 2, 3, 4]
    ckpt = tmp_path / "a" / "checkpoints" / "epoch_002"
    opt = load_file(str(ckpt / "optimizer.safetensors"))
    assert any(k.endswith("exp_avg") for k in opt)
    state = json.loads((ckpt / "train_state.json").read_text())
    assert state["epoch"] == 2 and state["global_step"] == 4


@pytest.mark.slow
def test_cached_training_never_runs_a_backbone(
    shapes_small: Path, clip: Any, tmp_path: Path
) -> None:
    params = small_params(feature_cache=True, epochs=1, text_cache_dir=str(tmp_path / "text"))
    train = pairs_from_shapes_gt(shapes_small, "train")
    val = pairs_from_shapes_gt(shapes_small, "val")
    calls: list[int] = []
    real = clip.visual.forward_intermediates

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    clip.visual.forward_intermediates = counting
    try:
        kwargs: dict[str, Any] = dict(
            grid_size=GRID, show_progress=False, cache_dir=tmp_path / "cache"
        )
        train_use_model(params, train, val, shapes_small, tmp_path / "r1", {"clip": clip}, **kwargs)
        assert calls  # the cache was built
        calls.clear()
        result = train_use_model(
            params, train, val, shapes_small, tmp_path / "r2", {"clip": clip}, **kwargs
        )
        assert calls == []  # second run: features from the cache only
        assert result.text_cache["misses"] == result.text_cache["size"]
        # and its texts from the on-disk text store the first run filled
        assert result.text_cache["disk_hits"] == result.text_cache["size"] > 0
        head_only = small_params(feature_cache=True, epochs=1, use_cls=False, feature_dim=8)
        train_use_model(
            head_only, train, val, shapes_small, tmp_path / "r3", {"clip": clip}, **kwargs
        )
        assert calls == []  # other head settings: the same frozen features, the same cache
    finally:
        del clip.visual.forward_intermediates
    with pytest.raises(ValueError, match="different run"):
        other = small_params(feature_cache=True, epochs=1, lr=5e-4)
        train_use_model(other, train, val, shapes_small, tmp_path / "r1", {"clip": clip}, **kwargs)


def test_cache_batch_views_sets_the_backbone_batch(
    shapes_small: Path, clip: Any, tmp_path: Path
) -> None:
    """``train.cache_batch_views`` is the batch of every backbone pass that fills the caches
    (the train stage's memory peak on a CPU), and the batch does not change what is stored."""
    train = pairs_from_shapes_gt(shapes_small, "train")
    val = pairs_from_shapes_gt(shapes_small, "val")
    batches: list[int] = []
    real = clip.visual.forward_intermediates

    def counting(x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        batches.append(int(x.shape[0]))
        return real(x, *args, **kwargs)

    clip.visual.forward_intermediates = counting
    try:
        params = small_params(feature_cache=True, epochs=1, cache_batch_views=3)
        kwargs: dict[str, Any] = dict(
            grid_size=GRID, show_progress=False, cache_dir=tmp_path / "cache"
        )
        train_use_model(params, train, val, shapes_small, tmp_path / "r", {"clip": clip}, **kwargs)
    finally:
        del clip.visual.forward_intermediates
    assert max(batches) == 3 and sum(batches) > 3

    ds = SegmentTextDataset(train, shapes_small)
    model = tiny_model(clip)
    maker = augmented_view_maker(ds, 0, 160, 0.5, 2.0, stream=0)
    one = build_feature_cache(tmp_path / "one", "k", model, ds, 2, maker, batch_views=1)
    three = build_feature_cache(tmp_path / "three", "k", model, ds, 2, maker, batch_views=3)
    for i, v in [(0, 0), (2, 1), (len(ds) - 1, 1)]:
        a, b = one.get(i, v), three.get(i, v)
        for x, y in zip(a.frozen.levels[0], b.frozen.levels[0], strict=True):
            torch.testing.assert_close(x.float(), y.float(), atol=2e-3, rtol=1e-3)
        assert torch.equal(a.weights, b.weights) and np.array_equal(a.rows, b.rows)


def test_a_feature_cache_over_its_limit_is_refused_with_both_sizes(
    shapes_small: Path, clip: Any, tmp_path: Path
) -> None:
    from use_core.train.feature_cache import FeatureCacheTooLarge, check_cache_space

    params = small_params(feature_cache=True, epochs=1, cache_max_gb=1e-6)  # 1 kB
    train = pairs_from_shapes_gt(shapes_small, "train")
    with pytest.raises(FeatureCacheTooLarge, match=r"train.cache_max_gb 0.0 GB.*feature_cache"):
        train_use_model(
            params,
            train,
            None,
            shapes_small,
            tmp_path / "run",
            {"clip": clip},
            grid_size=GRID,
            show_progress=False,
            cache_dir=tmp_path / "cache",
        )
    assert not list((tmp_path / "cache").rglob("shard_*.safetensors"))  # nothing written
    with pytest.raises(FeatureCacheTooLarge, match="free"):  # larger than the disk
        check_cache_space(tmp_path, 10**18, None)
    check_cache_space(tmp_path, 10**3, None)  # a small one passes
