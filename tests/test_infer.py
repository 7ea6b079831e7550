"""Inference building blocks: classification softmax, pixel aggregation, part filter, segment."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from use_core.infer.classify import class_probabilities, class_text_embeddings
from use_core.infer.embed import embed_masks
from use_core.infer.parts import part_predictions, part_vocabulary, select_part_segments
from use_core.infer.predict import predict_segments
from use_core.infer.segment import segment_image
from use_core.infer.semantic import semantic_map
from use_core.model import USEModel, USEModelConfig, create_use_model
from use_core.ops.rle import decode_rle


def tiny_model() -> USEModel:
    import open_clip

    torch.manual_seed(0)
    clip = open_clip.CLIP(
        embed_dim=32,
        vision_cfg={"image_size": 64, "layers": 2, "width": 32, "head_width": 16, "patch_size": 16},
        text_cfg={"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    )
    return create_use_model(
        USEModelConfig(backbones=["clip"], feature_dim=16, grid_size=8), {"clip": clip}, seed=0
    )


@pytest.fixture(scope="module")
def model() -> USEModel:
    return tiny_model()


# ------------------------------------------------------------------ classify


def test_probabilities_are_softmax_of_scaled_cosines() -> None:
    seg = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.1, 0.99]]), dim=1)
    txt = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=1)
    probs = class_probabilities(seg, txt, logit_scale=30.0)
    assert probs.shape == (2, 3)
    assert torch.allclose(probs.sum(1), torch.ones(2))
    expected = torch.softmax(30.0 * seg @ txt.T, dim=1)
    assert torch.allclose(probs, expected)
    # The scale matters: a smaller one gives a flatter distribution.
    flat = class_probabilities(seg, txt, logit_scale=1.0)
    assert flat.max() < probs.max()
    assert int(probs[0].argmax()) == 0 and int(probs[1].argmax()) == 1
    with pytest.raises(ValueError, match="widths"):
        class_probabilities(seg, torch.ones(3, 4))


def test_class_text_embeddings_use_templates(model: USEModel) -> None:
    a = class_text_embeddings(model, ["red circle", "house"], ["a photo of a {}."])
    b = class_text_embeddings(model, ["red circle", "house"], ["art of the {}."])
    assert a.shape == (2, 32) and torch.allclose(a.norm(dim=1), torch.ones(2), atol=1e-5)
    assert not torch.allclose(a, b)


# ------------------------------------------------------------------ semantic map


def test_pixel_aggregation_hand_case() -> None:
    # 1×5 image. Segment A covers pixels 0-2, segment B pixels 2-3, pixel 4 is uncovered.
    masks = np.zeros((2, 1, 5), dtype=bool)
    masks[0, 0, 0:3] = True
    masks[1, 0, 2:4] = True
    probs = np.array([[0.6, 0.4, 0.0], [0.0, 0.7, 0.3]], dtype=np.float32)
    fallback = np.array([0.1, 0.2, 0.7], dtype=np.float32)
    labels = semantic_map(masks, probs, fallback_probs=fallback)
    # pixel 2: A + B = [0.6, 1.1, 0.3] → class 1; pixel 4: whole-image segment → class 2
    assert labels.dtype == np.int32
    assert labels.tolist() == [[0, 0, 1, 1, 2]]
    assert semantic_map(masks, probs, unassigned=255).tolist() == [[0, 0, 1, 1, 255]]


def test_semantic_map_chunks_agree_with_dense(monkeypatch: pytest.MonkeyPatch) -> None:
    import use_core.infer.semantic as semantic

    rng = np.random.default_rng(0)
    masks = rng.random((6, 17, 23)) > 0.6
    probs = rng.dirichlet(np.ones(4), size=6).astype(np.float32)
    votes = np.einsum("sc,shw->chw", probs, masks.astype(np.float32))
    expected = np.where(masks.any(0), votes.argmax(0), 3)
    monkeypatch.setattr(semantic, "PIXEL_CHUNK", 50)  # many chunks, one ragged
    got = semantic_map(masks, probs, fallback_probs=np.array([0, 0, 0, 1.0]))
    assert np.array_equal(got, expected)
    assert semantic_map(np.zeros((0, 3, 3), bool), np.zeros((0, 4)), np.eye(4)[1]).max() == 1


# ------------------------------------------------------------------ parts


def test_part_filter_keeps_only_part_top_segments() -> None:
    vocab = part_vocabulary(["house roof", "house door"], ["sky", "house", "house door", "grass"])
    assert vocab == ["house roof", "house door", "sky", "house", "grass"]
    probs = np.array(
        [
            [0.7, 0.1, 0.1, 0.1, 0.0],  # roof → kept, score 0.7
            [0.2, 0.1, 0.6, 0.1, 0.0],  # sky → dropped
            [0.1, 0.5, 0.0, 0.4, 0.0],  # door → kept, score 0.5
            [0.3, 0.3, 0.0, 0.0, 0.4],  # grass → dropped although parts sum to 0.6
        ],
        dtype=np.float32,
    )
    seg, part, score = select_part_segments(probs, num_parts=2)
    assert seg.tolist() == [0, 2] and part.tolist() == [0, 1]
    assert np.allclose(score, [0.7, 0.5])
    masks = np.zeros((4, 6, 6), dtype=bool)
    for k in range(4):
        masks[k, k, :] = True
    preds = part_predictions(masks, probs, 2, image_id=7, category_ids=[10, 11])
    assert [(p["image_id"], p["category_id"]) for p in preds] == [(7, 10), (7, 11)]
    assert [round(p["score"], 5) for p in preds] == [0.7, 0.5]
    assert np.array_equal(decode_rle(preds[1]["segmentation"]), masks[2])


# ------------------------------------------------------------------ embedding and segment


def test_embed_masks_appends_whole_image(model: USEModel) -> None:
    image = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    masks = np.zeros((2, 40, 56), dtype=bool)
    masks[0, :20] = True
    masks[1, 20:] = True
    emb = embed_masks(model, image, masks, whole_image=True)
    assert emb.shape == (3, 32)
    full = embed_masks(model, image, np.ones((1, 40, 56), dtype=bool))
    assert torch.allclose(emb[2], full[0], atol=1e-5)
    assert embed_masks(model, image, masks[:0]).shape == (0, 32)


def test_predict_segments_shapes_and_whole_image_fallback(model: USEModel) -> None:
    image = np.random.default_rng(1).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    masks = np.zeros((2, 40, 56), dtype=bool)
    masks[0, :20, :28] = True
    masks[1, 20:] = True  # the top-right quarter is uncovered
    vocab = ["red thing", "blue thing", "green thing"]
    pred = predict_segments(model, image, masks, None, vocab, logit_scale=30.0)
    emb = embed_masks(model, image, masks, whole_image=True)
    probs = class_probabilities(emb, class_text_embeddings(model, vocab), 30.0)
    assert pred.embeddings.shape == (2, 32) and pred.embeddings.dtype == np.float32
    assert np.allclose(pred.embeddings, emb[:2].numpy(), atol=1e-6)
    assert np.allclose(pred.image_embedding, emb[2].numpy(), atol=1e-6)
    assert pred.probabilities is not None and pred.probabilities.shape == (2, 3)
    assert pred.scores is not None and pred.classes is not None
    assert np.allclose(pred.scores, probs[:2].max(dim=1).values.numpy(), atol=1e-6)
    assert pred.labels == [vocab[int(c)] for c in probs[:2].argmax(dim=1)]
    labels = pred.semantic_map()
    assert labels.shape == (40, 56)
    assert (labels[:20, 28:] == int(probs[2].argmax())).all()  # whole-image segment's class
    assert (labels[20:] == int(probs[1].argmax())).all()
    bare = predict_segments(model, image, masks, None, None)
    assert bare.labels is None and bare.scores is None and np.array_equal(bare.masks, masks)
    with pytest.raises(ValueError, match="SAM model or masks"):
        predict_segments(model, image, None, None, vocab)


def test_segment_image_with_user_masks(model: USEModel, tmp_path: Path) -> None:
    image = np.zeros((48, 64, 3), dtype=np.uint8)
    image[:, 32:] = (200, 30, 30)
    Image.fromarray(image).save(tmp_path / "img.png")
    label_map = np.zeros((48, 64), dtype=np.uint8)
    label_map[:, 32:] = 1
    label_map[:10, :10] = 2
    Image.fromarray(label_map).save(tmp_path / "seg.png")
    doc = segment_image(
        model,
        None,
        tmp_path / "img.png",
        ["red thing", "black thing"],
        tmp_path / "out.png",
        tmp_path / "out.json",
        user_masks=tmp_path / "seg.png",
        show_progress=False,
    )
    assert (tmp_path / "out.png").is_file()
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved == doc
    assert len(doc["segments"]) == 2  # values 1 and 2; 0 is background
    for seg in doc["segments"]:
        assert seg["label"] in ("red thing", "black thing") and 0 < seg["score"] <= 1
        mask = decode_rle(seg["rle"])
        assert mask.sum() == seg["area"]
    assert doc["segments"][0]["bbox"] == [32.0, 0.0, 32.0, 48.0]
    with Image.open(tmp_path / "out.png") as im:
        assert im.size[1] == 48 and im.size[0] > 64  # legend panel on the right
