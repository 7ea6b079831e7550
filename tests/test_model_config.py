"""The model factory: USEModelConfig (from params, saved as JSON), create_use_model /
load_use_model, and the registry loaders on ``runtime.device``."""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

import pydantic
import pytest
import torch

from use_core.config import Params, TrainConfig
from use_core.model import (
    ClipBackboneConfig,
    Dinov2BackboneConfig,
    SamBackboneConfig,
    USEModel,
    USEModelConfig,
    create_use_model,
    load_backbones,
    load_use_model,
    read_model_config,
    save_use_model,
)
from use_core.model.config import DEFAULT_GRID

ENCODERS = typing.get_args(TrainConfig.model_fields["encoder"].annotation)


def demo_params(models_cache: Path, **train: Any) -> Params:
    params = Params()
    params.models.cache_dir = str(models_cache)
    params.runtime.device = "cpu"
    params.train = TrainConfig(
        **{"encoder": "clip", "image_size": 64, "feature_dim": 16, **train}  # type: ignore[arg-type]
    )
    return params


def perturbed(model: USEModel) -> USEModel:
    """Trainable weights unlike any fresh initialisation."""
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


def embed(model: USEModel) -> torch.Tensor:
    images = torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(3, 48, 64, dtype=torch.bool)
    masks[0, :20, :30] = True
    masks[1, 24:, 32:] = True
    masks[2, 10:30, :] = True
    with torch.no_grad():
        return model.embed_segments(model.encode_image(images), masks, [0, 1, 1])


# ------------------------------------------------------------------------------ the config


@pytest.mark.parametrize("encoder", ENCODERS)
def test_from_params_maps_every_train_encoder(encoder: str) -> None:
    params = Params()
    params.train = TrainConfig(
        encoder=encoder,  # type: ignore[arg-type]
        image_size=320,
        sam_input_size=256,
        dinov2_blocks=3,
        feature_dim=48,
        use_cls=False,
        grid_resample="area",
        text_templates=["a {}", "one {} here"],
    )
    config = USEModelConfig.from_params(params)
    assert config.encoder == encoder
    assert [b.role for b in config.backbones] == encoder.split("+")
    assert config.roles == sorted({"clip", *encoder.split("+")})
    expected = {
        "clip": ClipBackboneConfig(blocks=None, input_size=320),
        "dinov2": Dinov2BackboneConfig(last_blocks=3, input_size=320),
        "sam": SamBackboneConfig(levels=None, input_size=256),
    }
    assert list(config.backbones) == [expected[r] for r in encoder.split("+")]
    assert (config.feature_dim, config.use_cls, config.grid_resample) == (48, False, "area")
    assert config.text_templates == ("a {}", "one {} here")
    assert config.grid_size is None  # train.grid's default: the backbones' native grid
    # the train loop's overrides: its grid and MobileSAM side arguments
    over = USEModelConfig.from_params(params, grid_size=8, sam_input_size=512)
    assert over.grid_size == 8
    if "sam" in encoder:
        assert over.backbone("sam").input_size == 512


def test_from_params_keeps_sam_native_side_when_unset() -> None:
    params = Params()
    params.train = TrainConfig(encoder="clip+sam", sam_input_size=None)
    assert USEModelConfig.from_params(params).backbone("sam").input_size is None


def test_config_json_round_trip_and_validation() -> None:
    config = USEModelConfig(
        backbones=(
            ClipBackboneConfig(blocks=(0, 2), input_size=96),
            SamBackboneConfig(levels=("stage1", "neck"), input_size=448),
        ),
        use_cls=False,
        feature_dim=24,
        grid_size=12,
        grid_resample="nearest",
        text_templates=("a {}",),
    )
    again = USEModelConfig.model_validate_json(config.model_dump_json())
    assert again == config and again.backbone("sam").levels == ("stage1", "neck")
    assert USEModelConfig.model_validate(json.loads(json.dumps(config.model_dump(mode="json"))))
    with pytest.raises(pydantic.ValidationError):
        config.feature_dim = 32  # type: ignore[misc]  # frozen
    with pytest.raises(pydantic.ValidationError, match="extra"):
        USEModelConfig.model_validate({**config.model_dump(), "dropout": 0.1})
    with pytest.raises(pydantic.ValidationError, match="each once"):
        USEModelConfig(backbones=(ClipBackboneConfig(), ClipBackboneConfig()))
    with pytest.raises(pydantic.ValidationError, match="unknown backbones"):
        USEModelConfig(backbones=["clip", "vit"])  # type: ignore[list-item]
    assert USEModelConfig(backbones=["dinov2"]).backbones == (Dinov2BackboneConfig(),)  # type: ignore[list-item]
    changed = config.with_backbone("clip", input_size=None)
    assert changed.backbone("clip") == ClipBackboneConfig(blocks=(0, 2))
    assert changed.backbone("sam") == config.backbone("sam")
    with pytest.raises(KeyError, match="dinov2"):
        config.with_backbone("dinov2", last_blocks=2)


# ------------------------------------------------------------------------- build, save, load


def test_model_refuses_backbones_other_than_its_config(
    models_cache: Path, demo_models: Any
) -> None:
    params = demo_params(models_cache)
    comps = load_backbones(params)
    model = create_use_model(USEModelConfig.from_params(params), comps)
    with pytest.raises(ValueError, match="do not match"):
        USEModel(USEModelConfig(backbones=["dinov2"]), model.backbone_list, model.text_encoder)  # type: ignore[list-item]


def test_create_save_load_gives_identical_embeddings(
    models_cache: Path, demo_models: Any, tmp_path: Path
) -> None:
    params = demo_params(models_cache, use_cls=True)
    config = USEModelConfig.from_params(params, grid_size=6)
    model = perturbed(create_use_model(config, load_backbones(params, config), seed=0)).eval()
    save_use_model(model, tmp_path, {"note": "x"})

    stored = json.loads((tmp_path / "model.json").read_text())
    assert stored["format"] == "use-model/2"
    assert USEModelConfig.model_validate(stored["config"]) == config == read_model_config(tmp_path)

    # The checkpoint's own architecture is rebuilt, whatever params.train says now.
    later = demo_params(models_cache, image_size=96, feature_dim=32, encoder="clip")
    loaded = load_use_model(tmp_path, params=later).eval()
    assert loaded.config == config and loaded.spec() == model.spec()
    assert torch.equal(embed(loaded), embed(model))
    fresh = create_use_model(config, load_backbones(params, config), seed=0).eval()
    assert not torch.allclose(embed(fresh), embed(model))  # the weights did come from disk

    with pytest.raises(TypeError, match="components or the params"):
        load_use_model(tmp_path)


def test_old_format_checkpoint_still_loads(
    models_cache: Path, demo_models: Any, tmp_path: Path
) -> None:
    params = demo_params(models_cache)
    config = USEModelConfig.from_params(params, grid_size=6)
    model = perturbed(create_use_model(config, load_backbones(params, config))).eval()
    save_use_model(model, tmp_path)
    path = tmp_path / "model.json"
    stored = json.loads(path.read_text())
    v1 = {"format": "use-model/1", "encoder": "clip", "spec": stored["spec"], "extra": {}}
    path.write_text(json.dumps(v1))

    old = read_model_config(tmp_path)
    assert old.encoder == "clip" and old.grid_size == 6 and old.feature_dim == 16
    assert old.backbone("clip").input_size == 64
    loaded = load_use_model(tmp_path, params=params).eval()
    assert torch.equal(embed(loaded), embed(model))

    path.write_text(json.dumps({**v1, "format": "use-model/0"}))
    with pytest.raises(ValueError, match="unsupported format 'use-model/0'"):
        load_use_model(tmp_path, params=params)


# ---------------------------------------------------------------------------- the loaders


def test_loaders_follow_runtime_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """load_pretrained / load_backbones pass runtime.device and the fp16 switch on (with a CUDA
    device reported present, so a loader ignoring runtime.device would pick it)."""
    import use_core.pretrained.registry as registry

    calls: list[tuple[str, torch.device | None, bool, int | None]] = []

    def spy(role: str, spec: Any, device: Any = None, **kw: Any) -> str:
        dev = None if device is None else torch.device(device)
        calls.append((role, dev, kw["half_precision"], kw["image_size"]))
        return role

    monkeypatch.setattr(registry, "load_spec", spy)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    params = Params()
    params.train = TrainConfig(encoder="clip+sam", image_size=320)
    params.runtime.device = "cpu"
    params.runtime.half_precision_on_gpu = False
    assert load_backbones(params) == {"clip": "clip", "sam": "sam"}
    assert registry.load_pretrained("grounding", params) == "grounding"
    cpu = torch.device("cpu")
    assert calls == [
        ("clip", cpu, False, 320),
        ("sam", cpu, False, None),
        ("grounding", cpu, False, None),
    ]
    calls.clear()
    params.runtime.device = "auto"
    params.runtime.half_precision_on_gpu = True
    registry.load_pretrained("sam", params)
    assert calls == [("sam", torch.device("cuda"), True, None)]


def test_backbones_load_on_cpu_in_float32(
    models_cache: Path, demo_models: Any, mobile_sam_checkpoint: Path
) -> None:
    """runtime.device 'cpu': every module on the CPU, and half precision (on) not applied."""
    from use_core.pretrained.registry import load_pretrained

    params = demo_params(models_cache, encoder="clip+dinov2")
    params.runtime.half_precision_on_gpu = True
    comps = load_backbones(params)
    assert sorted(comps) == ["clip", "dinov2"]
    modules = [comps["clip"].model, comps["dinov2"].model, load_pretrained("sam", params)]
    for module in modules:
        tensors = [*module.parameters(), *module.buffers()]
        assert tensors and {t.device.type for t in tensors} == {"cpu"}
        assert {t.dtype for t in tensors if t.is_floating_point()} == {torch.float32}
    assert comps["clip"].dtype == comps["dinov2"].dtype == torch.float32
    model = create_use_model(USEModelConfig.from_params(params, grid_size=4), comps)
    assert model.device.type == "cpu"
    assert model.backbone_list[0].input_size == (64, 64)  # CLIP built at train.image_size


def test_grid_follows_train_grid_and_defaults_to_native(demo_models, models_cache: Path) -> None:
    """``train.grid`` sets the common grid; ``None`` is the finest native backbone grid."""
    params = demo_params(models_cache, encoder="clip+dinov2", image_size=112)
    comps = load_backbones(params)
    native = create_use_model(USEModelConfig.from_params(params), comps)
    # tiny CLIP: patch 16 -> 112 / 16 = 7; tiny DINOv2: patch 14 -> 112 / 14 = 8
    assert [b.native_grid for b in native.backbone_list] == [7, 8]
    assert native.grid == (8, 8) and native.spec()["grid_size"] == 8
    feats = native.encode_image(torch.rand(1, 3, 112, 112))
    assert all(t.shape[-2:] == (8, 8) for lv in feats.levels for t in lv)
    params.train.grid = 5
    assert create_use_model(USEModelConfig.from_params(params), comps).grid == (5, 5)
    assert USEModelConfig.from_params(params, grid_size=3).grid_size == 3
    assert USEModelConfig.model_fields["grid_size"].default == DEFAULT_GRID
