from pathlib import Path

import pytest
import yaml

from use_core.config import ConfigError, Params, flatten, load_params, parse_params

# params.yaml may differ from the code defaults only in these documented demo choices
# Demo-profile choices that differ from the paper's defaults (each explained in params.yaml).
DEMO_CHOICES = {
    "ground.max_boxes",
    "train.sources",
    "train.use_cls",
    "train.epochs",
    "train.batch_size",
    "train.crop_size",
    "train.scale_min",
    "train.scale_max",
    "train.sam_input_size",
    "train.grid",
}


def test_params_yaml_matches_code_defaults(repo_root: Path) -> None:
    yaml_flat = flatten(load_params(repo_root / "params.yaml"))
    code_flat = flatten(Params())
    assert yaml_flat.keys() == code_flat.keys()
    differ = {k for k in code_flat if yaml_flat[k] != code_flat[k]}
    assert differ <= DEMO_CHOICES, differ
    # the demo's committed results were trained on a 32x32 grid (its native grid is 28)
    assert yaml_flat["train.grid"] == 32 and code_flat["train.grid"] is None


def test_paper_defaults() -> None:
    p = Params()
    assert p.ground.box_threshold == 0.05 and p.ground.nms_threshold == 0.7
    assert p.masks.pred_iou_threshold == 0.6 and p.masks.stability_threshold == 0.6
    assert p.masks.whole_image_ratio == 0.9 and p.nms.iou_threshold == 0.7
    assert p.train.dinov2_blocks == 6 and p.train.logit_scale == 30.0
    assert p.train.lr == 1e-3 and p.train.poly_power == 0.9 and p.train.weight_decay == 0.01
    assert (p.train.epochs, p.train.batch_size, p.train.crop_size) == (5, 32, 560)
    assert (p.train.scale_min, p.train.scale_max) == (0.5, 2.0)
    assert p.train.text_templates == [
        "a photo of {}",
        "This is a photo of {}",
        "There is {} in the scene",
        "a photo of {} in the scene",
    ]
    assert (p.caption.temperature, p.caption.top_p, p.caption.top_k) == (0.8, 0.4, 5)
    assert p.caption.prompt.startswith("Describe this image in detail. In your description,")


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"train": {"lrr": 1}}, "train.lrr: unknown key (allowed here: batch_size"),
        ({"train": {"lr": "fast"}}, "train.lr: Input should be a valid number"),
        (
            {"nms": {"iou_threshold": 1.5}},
            "nms.iou_threshold: Input should be less than or equal to 1",
        ),
        ({"train": {"encoder": "vit"}}, "train.encoder: got 'vit', allowed values: 'clip'"),
        (
            {"models": {"profile": "big"}},
            "models.profile: got 'big', allowed values: 'demo' or 'paper'",
        ),
        (
            {"models": {"overrides": {"clip": {"kind": "open_clip", "name": "x", "foo": 1}}}},
            "models.overrides.clip.foo: unknown key (allowed here: kind, name, pretrained)",
        ),
        (
            {"data": {"sources": [{"name": "a", "kind": "tsv", "images": "i"}]}},
            "data.sources.0.kind: got 'tsv'",
        ),
        ({"train": {"scale_min": 3.0}}, "scale_min must be <= scale_max"),
        ({"train": {"text_templates": ["no slot"]}}, "must contain '{}'"),
        ({"bogus": {}}, "bogus: unknown key (allowed here: caption, checks, data"),
    ],
)
def test_invalid_params_name_the_key(raw: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    assert needle in str(err.value)


def test_mask_filters_can_be_turned_off() -> None:
    p = parse_params({"masks": {"pred_iou_threshold": None, "stability_threshold": None}})
    assert p.masks.pred_iou_threshold is None and p.masks.stability_threshold is None
    with pytest.raises(ConfigError, match="masks.stability_threshold"):
        parse_params({"masks": {"stability_threshold": -0.1}})


def test_overrides_and_flatten(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"train": {"lr": 0.01}}))
    p = load_params(path, overrides={"nms.iou_threshold": 0.5})
    assert p.train.lr == 0.01 and p.nms.iou_threshold == 0.5
    flat = flatten(p)
    assert flat["train.lr"] == 0.01 and flat["models.profile"] == "demo"


def test_missing_file_is_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
