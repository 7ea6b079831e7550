"""Open-vocabulary segmentation of one image: proposals → embeddings → classes → map + JSON."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from use_core.data.images import load_rgb
from use_core.infer.classify import DEFAULT_LOGIT_SCALE
from use_core.infer.given_masks import load_user_masks
from use_core.infer.predict import predict_segments
from use_core.infer.proposals import Proposals
from use_core.ops.rle import encode_masks, rle_bbox_xywh
from use_core.viz import overlay_segmentation

log = logging.getLogger(__name__)


def segment_image(
    model: Any,
    sam: Any,
    image_path: str | Path,
    vocab: Sequence[str],
    out_png: str | Path,
    out_json: str | Path,
    points_per_side: int = 16,
    class_templates: Sequence[str] | None = None,
    logit_scale: float = DEFAULT_LOGIT_SCALE,
    user_masks: str | Path | None = None,
    max_pixels: int = 40_000_000,
    show_progress: bool = True,
    **proposal_kwargs: Any,
) -> dict[str, Any]:
    """Segment ``image_path`` into the classes of ``vocab``.

    Proposals come from SAM on a ``points_per_side²`` grid (extra keyword arguments go to
    :func:`use_core.infer.proposals.generate_proposals`; ``sam`` may be ``None`` with
    ``user_masks``) or from a user's masks file (:func:`load_user_masks`); embedding and
    classification are :func:`use_core.infer.predict.predict_segments`. Writes ``out_png``
    (overlay with a legend of the classes present) and ``out_json``::

        {"image": ..., "height": H, "width": W, "vocab": [...], "seconds": ...,
         "segments": [{"id", "label", "score", "bbox": [x, y, w, h], "area", "rle"}, ...]}

    where ``label``/``score`` are each segment's most probable class and its probability.
    Returns the JSON document.
    """
    if not vocab:
        raise ValueError("vocab must hold at least one class name")
    start = time.perf_counter()
    image = load_rgb(image_path, max_pixels)
    h, w = image.shape[:2]
    proposals: Proposals | None = None
    if user_masks is not None:
        proposals = load_user_masks(user_masks, (h, w))
        for index, reason in proposals.rejected:
            log.warning("user mask %d not used: %s", index, reason)
    elif sam is None:
        raise ValueError("either a SAM model or user_masks is needed")
    pred = predict_segments(
        model,
        image,
        proposals.masks if proposals is not None else None,
        sam,
        vocab,
        points_per_side=points_per_side,
        class_templates=class_templates,
        logit_scale=logit_scale,
        show_progress=show_progress,
        **proposal_kwargs,
    )
    assert pred.labels is not None and pred.scores is not None
    overlay_segmentation(image, pred.semantic_map(), list(vocab), out_png)
    segments = []
    for k, rle in enumerate(encode_masks(pred.masks)):
        segments.append(
            {
                "id": k,
                "label": pred.labels[k],
                "score": float(pred.scores[k]),
                "bbox": rle_bbox_xywh(rle),
                "area": int(pred.masks[k].sum()),
                "rle": dict(rle),
            }
        )
    doc = {
        "image": str(image_path),
        "height": h,
        "width": w,
        "vocab": list(vocab),
        "proposals": proposals.source if proposals is not None else "sam",
        "seconds": round(time.perf_counter() - start, 3),
        "segments": segments,
    }
    out_json = Path(out_json)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(doc))
    return doc
