"""One image → segments → embeddings → labels: the predict path every entry point shares.

``use segment`` (:func:`use_core.infer.segment.segment_image`), the served MLflow model
(:class:`use_core.tracking.pyfunc.USEPyfunc`), ``use index``
(:mod:`use_core.infer.query`) and the evaluation
(:func:`use_core.eval.evaluate.evaluate_benchmark`) all call :func:`predict_segments`, so the
same image, masks and vocabulary give the same segments, labels and scores everywhere.

Whole-image convention (the evaluation's): the image is always embedded with one extra
full-image segment after the ``S`` segments (``embed_masks(..., whole_image=True)``). Its
embedding and class probabilities are kept apart (:attr:`Prediction.image_embedding`,
:attr:`Prediction.image_probabilities`) and only serve as the fallback class of pixels no
segment covers (:meth:`Prediction.semantic_map`); ``embeddings``, ``labels`` and ``scores`` are
those of the ``S`` segments. The benchmark numbers are computed this way, so the served model
and the CLI label an image as the benchmarked model does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from use_core.infer.classify import DEFAULT_LOGIT_SCALE, class_probabilities, class_text_embeddings
from use_core.infer.embed import embed_masks
from use_core.infer.semantic import semantic_map


@dataclass(frozen=True)
class Prediction:
    """Segments of one ``H × W`` image and what the model makes of them.

    ``masks``: ``(S, H, W)`` bool (SAM proposals sorted by predicted IoU, or the given masks);
    ``embeddings``: ``(S, E)`` float32 unit-norm segment embeddings;
    ``image_embedding``: ``(E,)`` float32 unit-norm embedding of the whole-image segment;
    ``vocab``: the class names, or ``None`` (then the four fields below are ``None``);
    ``probabilities``: ``(S, C)`` float32 class probabilities (rows sum to 1);
    ``image_probabilities``: ``(C,)`` float32 class probabilities of the whole-image segment;
    ``classes``: ``(S,)`` int64 most probable class of each segment (ties: lowest index);
    ``scores``: ``(S,)`` float32 its probability.
    """

    masks: np.ndarray
    embeddings: np.ndarray
    image_embedding: np.ndarray
    vocab: list[str] | None = None
    probabilities: np.ndarray | None = None
    image_probabilities: np.ndarray | None = None
    classes: np.ndarray | None = None
    scores: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    @property
    def labels(self) -> list[str] | None:
        """The class name of each segment (``None`` without a vocabulary)."""
        if self.vocab is None or self.classes is None:
            return None
        return [self.vocab[int(c)] for c in self.classes]

    def semantic_map(self) -> np.ndarray:
        """``(H, W)`` int32 label map (:func:`use_core.infer.semantic.semantic_map`): per pixel
        the class with the largest summed probability of the covering segments, the
        whole-image segment's class where none covers."""
        if self.probabilities is None or self.image_probabilities is None:
            raise ValueError("a semantic map needs a vocabulary")
        return semantic_map(self.masks, self.probabilities, fallback_probs=self.image_probabilities)


def predict_segments(
    model: Any,
    image: np.ndarray,
    masks: np.ndarray | None,
    sam: Any,
    vocab: Sequence[str] | None,
    *,
    points_per_side: int = 16,
    class_templates: Sequence[str] | None = None,
    logit_scale: float = DEFAULT_LOGIT_SCALE,
    mask_nms_iou: float = 0.7,
    text_embeddings: torch.Tensor | None = None,
    show_progress: bool = False,
    **proposal_kwargs: Any,
) -> Prediction:
    """Embed the segments of ``image`` and, with a ``vocab``, classify them.

    Arguments:
      model: a :class:`use_core.model.USEModel` in eval mode.
      image: ``(H, W, 3)`` uint8 RGB.
      masks: ``(N, H, W)`` bool segments, or ``None`` for SAM proposals of ``sam`` on a
        ``points_per_side²`` grid, ``mask_nms_iou`` mask NMS (other
        :func:`use_core.infer.proposals.generate_proposals` arguments in ``proposal_kwargs``).
      vocab: class names; ``None`` → embeddings only.
      class_templates: text templates averaged per class (``eval.class_templates``).
      logit_scale: softmax temperature (``train.logit_scale``).
      text_embeddings: ``(C, E)`` precomputed ``class_text_embeddings(model, vocab,
        class_templates)`` (a benchmark encodes its classes once).
    Returns:
      a :class:`Prediction`; segments in the order of ``masks`` (or of the proposals). The
      whole-image segment is always embedded (module docstring) and kept apart.
    """
    if masks is None:
        from use_core.infer.proposals import generate_proposals

        if sam is None:
            raise ValueError("either a SAM model or masks are needed")
        masks = generate_proposals(
            sam,
            image,
            points_per_side,
            mask_nms_iou=mask_nms_iou,
            show_progress=show_progress,
            **proposal_kwargs,
        ).masks
    masks = np.asarray(masks, dtype=bool)
    emb = embed_masks(model, image, masks, whole_image=True)
    embeddings = emb[:-1].numpy().astype(np.float32, copy=False)
    image_embedding = emb[-1].numpy().astype(np.float32, copy=False)
    if vocab is None:
        return Prediction(masks, embeddings, image_embedding)
    names = list(vocab)
    if not names:
        raise ValueError("vocab must hold at least one class name")
    if text_embeddings is None:
        text_embeddings = class_text_embeddings(model, names, class_templates)
    if text_embeddings.shape[0] != len(names):
        raise ValueError(f"{text_embeddings.shape[0]} text embeddings for {len(names)} classes")
    probs = class_probabilities(emb, text_embeddings, logit_scale)
    seg_probs = probs[:-1]
    if len(seg_probs):
        score, top = seg_probs.max(dim=1)
    else:
        score, top = torch.zeros(0), torch.zeros(0, dtype=torch.long)
    return Prediction(
        masks=masks,
        embeddings=embeddings,
        image_embedding=image_embedding,
        vocab=names,
        probabilities=seg_probs.numpy().astype(np.float32, copy=False),
        image_probabilities=probs[-1].numpy().astype(np.float32, copy=False),
        classes=top.numpy().astype(np.int64),
        scores=score.numpy().astype(np.float32, copy=False),
    )
