"""P3: mask NMS on 1,000 masks of 512×512 — pairwise reference loop / ``mask_nms``.

The reference is the textbook greedy loop: visit masks by score, and for each kept mask compute
its IoU with every still-alive mask one pair at a time (``&``, ``|``, ``count_nonzero``).
``use_core.ops.nms.mask_nms`` bit-packs each mask's bounding box once, prunes the pairs
whose IoU cannot pass the threshold (boxes, areas), and counts the remaining intersections of
each kept mask in one vectorised AND + popcount step. Both must return the same groups. Growth
of ``mask_nms`` is measured at 100 / 1,000 / 3,000 masks (the candidate-pair matrix is
quadratic but cheap; the counted pairs grow with the overlaps). Both sides run three
interleaved rounds, each timed run right after an untimed one of the same side (steady state,
``benchmarks.common.interleaved``); the ratio is of the medians.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np

from benchmarks.common import interleaved, median, result, rounded, timed
from use_core.ops.nms import mask_nms

ID = "P3"
WHAT = "mask NMS, 1,000 masks at 512x512: pairwise reference loop / mask_nms"
TARGET = ">= 50x"
IOU = 0.7


def synthetic_masks(n: int, side: int = 512, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(n, side, side)`` bool masks + ``(n,)`` float64 scores.

    About a third are base ellipses; the rest are copies of a base shifted by a few pixels (so
    NMS has real duplicates to suppress, as with boxes of one object from several captions).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side]
    n_base = max(1, n // 3)
    params = []
    for _ in range(n_base):
        cy, cx = rng.uniform(0.1, 0.9, 2) * side
        ry, rx = rng.uniform(0.03, 0.25, 2) * side
        params.append((cy, cx, ry, rx))
    masks = np.empty((n, side, side), dtype=bool)
    for i in range(n):
        cy, cx, ry, rx = params[i % n_base]
        if i >= n_base:
            cy, cx = cy + rng.normal(0, 0.08 * ry), cx + rng.normal(0, 0.08 * rx)
        masks[i] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    return masks, rng.random(n)


def reference_nms(masks: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[list[int]]:
    """Greedy mask NMS with one IoU computation per pair (same contract as ``mask_nms``)."""
    n = masks.shape[0]
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    flat = masks.reshape(n, -1)
    area = np.count_nonzero(flat, axis=1)
    alive = np.ones(n, dtype=bool)
    groups: list[list[int]] = []
    for pos, i in enumerate(order):
        if not alive[i]:
            continue
        alive[i] = False
        group = [int(i)]
        for j in order[pos + 1 :]:
            if not alive[j]:
                continue
            inter = np.count_nonzero(flat[i] & flat[j])
            union = area[i] + area[j] - inter
            if union > 0 and inter / union > iou_threshold:
                alive[j] = False
                group.append(int(j))
        groups.append(group)
    return groups


def run(quick: bool = False) -> dict[str, Any]:
    n, side = (120, 128) if quick else (1000, 512)
    masks, scores = synthetic_masks(n, side)
    times, last = interleaved(
        {
            "reference_loop": lambda: reference_nms(masks, scores, IOU),
            "mask_nms": lambda: mask_nms(masks, scores, IOU),
        },
        repeats=3 if not quick else 2,
        warmup=0 if not quick else 1,
        warm_each=True,  # mask_nms right after the 5 s loop: 0.14-0.17 s; warm: 0.08-0.10 s
    )
    same = last["reference_loop"] == last["mask_nms"]
    ratio = median(times["reference_loop"]) / median(times["mask_nms"])

    growth: dict[str, float] = {}
    for count in (100, 300) if quick else (100, 1000, 3000):
        if count == n:
            growth[str(count)] = round(median(times["mask_nms"]), 4)
            continue
        m, s = synthetic_masks(count, side, seed=1)
        growth[str(count)] = round(timed(partial(mask_nms, m, s, IOU))[0], 4)
        del m
    counts = sorted(int(k) for k in growth)
    exponent = float(np.polyfit(np.log(counts), np.log([growth[str(c)] for c in counts]), 1)[0])
    return result(
        ID,
        WHAT,
        ratio,
        TARGET,
        ratio >= 50 and same,
        masks=n,
        side=side,
        kept=len(last["mask_nms"]),
        same_groups=same,
        times=rounded(times),
        mask_nms_growth_s=growth,
        growth_exponent=round(exponent, 2),
        note="growth exponent: log-log slope of mask_nms seconds vs masks (2 = quadratic)",
    )


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick=True), indent=2))
