"""The USE model (paper §3.2, Figure 5).

======================  =====================================================================
module                  what it holds
======================  =====================================================================
``backbones``           frozen adapters: CLIP (all blocks), DINOv2 (last l blocks), MobileSAM
``encoder``             per-cell level normalisation (frozen), LLNs + level scales applied per
                        segment after pooling (exact reorder), cls LLNs; grid resampling
``head``                mask-area weights per patch (sum 1), Linear → segment embedding
``text``                frozen CLIP text encoder, prompt templates, per-run cache
``loss``                symmetric segment-text InfoNCE (eq. 1)
``use_model``           :class:`USEModel` tying them together, :func:`build_use_model`
``checkpoint``          safetensors + JSON checkpoints of the trainable part
======================  =====================================================================
"""

from use_core.model.backbones import (
    BACKBONES,
    Backbone,
    BackboneOutput,
    ClipVisualBackbone,
    Dinov2Backbone,
    SamEncoderBackbone,
    build_backbones,
)
from use_core.model.checkpoint import load_trainable_state, load_use_model, save_use_model
from use_core.model.features import FrozenFeatures, ImageFeatures
from use_core.model.head import area_weights, pooling_weights
from use_core.model.loss import segment_text_loss
from use_core.model.text import TextEncoder
from use_core.model.use_model import USEModel, build_use_model

__all__ = [
    "BACKBONES",
    "Backbone",
    "BackboneOutput",
    "ClipVisualBackbone",
    "Dinov2Backbone",
    "FrozenFeatures",
    "ImageFeatures",
    "SamEncoderBackbone",
    "TextEncoder",
    "USEModel",
    "area_weights",
    "build_backbones",
    "build_use_model",
    "load_trainable_state",
    "load_use_model",
    "pooling_weights",
    "save_use_model",
    "segment_text_loss",
]
