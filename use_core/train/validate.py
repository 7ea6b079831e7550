"""Validation during training: segment→text retrieval and zero-shot classification of segments.

* Retrieval: every held-out segment ranks all unique texts of the held-out set (embedded with the
  training templates); a hit at k when any of the segment's own texts is among the top k.
* Zero-shot: segments whose ``class_name`` is in the class vocabulary (shapes: the
  ``colour_shape`` list, "red circle"...) are classified among the vocabulary embedded with the
  class templates; top-1 accuracy, and split by attribute — colour right (every word but the
  last matches) and shape right (the last word matches).
* Loss: eq. (1) on the held-out segments, each with its first text.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from use_core.model.loss import segment_text_loss
from use_core.model.use_model import USEModel
from use_core.train.dataset import SegmentTextDataset
from use_core.train.views import ViewFeatures

SEGMENTS_PER_CHUNK = 4096


@torch.no_grad()
def embed_views(model: USEModel, views: Sequence[ViewFeatures]) -> tuple[torch.Tensor, np.ndarray]:
    """Segment embeddings ``(N, E)`` of all segments of ``views`` and their pairs rows ``(N,)``."""
    embs, rows = [], []
    for view in views:
        if len(view.rows) == 0:
            continue
        feats = model.fuse(view.frozen)
        embs.append(model.embed_segments(feats, view.weights))
        rows.append(view.rows)
    if not embs:
        return torch.zeros((0, model.embed_dim)), np.zeros(0, dtype=np.int64)
    return torch.cat(embs), np.concatenate(rows)


def _split_attr(name: str) -> tuple[str, str]:
    words = name.split()
    return " ".join(words[:-1]), words[-1] if words else ""


@torch.no_grad()
def validate(
    model: USEModel,
    dataset: SegmentTextDataset,
    views: Sequence[ViewFeatures],
    logit_scale: float,
    class_names: Sequence[str] | None = None,
    class_templates: Sequence[str] | None = None,
    topk: Sequence[int] = (1, 5),
) -> dict[str, float]:
    """Metrics (``val/...``) of ``model`` on precomputed validation ``views`` of ``dataset``."""
    was_training = model.training
    model.eval()
    try:
        seg, rows = embed_views(model, views)
        metrics: dict[str, float] = {"val/segments": float(len(rows))}
        if len(rows) == 0:
            return metrics
        texts_per_row = [dataset.texts[r] for r in rows]
        vocab = sorted({t for ts in texts_per_row for t in ts})
        index = {t: i for i, t in enumerate(vocab)}
        txt = model.encode_text(vocab)
        sims = seg @ txt.T
        kmax = min(max(topk), len(vocab))
        top = sims.topk(kmax, dim=1).indices.cpu().numpy()
        for k in topk:
            hits = [
                bool({index[t] for t in ts} & set(top[i, : min(k, kmax)].tolist()))
                for i, ts in enumerate(texts_per_row)
            ]
            metrics[f"val/retrieval_top{k}"] = float(np.mean(hits))
        first = torch.as_tensor([index[ts[0]] for ts in texts_per_row], device=seg.device)
        used, text_index = torch.unique(first, return_inverse=True)
        metrics["val/loss"] = float(segment_text_loss(seg, txt[used], logit_scale, text_index))
        metrics.update(_zero_shot(model, dataset, seg, rows, class_names, class_templates))
        return metrics
    finally:
        model.train(was_training)


def _zero_shot(
    model: USEModel,
    dataset: SegmentTextDataset,
    seg: torch.Tensor,
    rows: np.ndarray,
    class_names: Sequence[str] | None,
    class_templates: Sequence[str] | None,
) -> dict[str, float]:
    if not class_names or "class_name" not in dataset.pairs.columns:
        return {}
    labels = dataset.pairs["class_name"].to_numpy()[rows]
    class_index = {c: i for i, c in enumerate(class_names)}
    sel = [i for i, lab in enumerate(labels) if isinstance(lab, str) and lab in class_index]
    if not sel:
        return {"val/zero_shot_segments": 0.0}
    cls_emb = model.encode_text(list(class_names), class_templates)
    pred = (seg[sel] @ cls_emb.T).argmax(dim=1).cpu().numpy()
    gt = [labels[i] for i in sel]
    predicted = [class_names[p] for p in pred]
    pairs = [(_split_attr(g), _split_attr(p)) for g, p in zip(gt, predicted, strict=True)]
    return {
        "val/zero_shot_segments": float(len(sel)),
        "val/zero_shot_top1": float(np.mean([g == p for g, p in zip(gt, predicted, strict=True)])),
        "val/zero_shot_colour": float(np.mean([g[0] == p[0] for g, p in pairs])),
        "val/zero_shot_shape": float(np.mean([g[1] == p[1] for g, p in pairs])),
    }
