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
``config``              :class:`USEModelConfig`: the architecture as data (backbones, grid, ...)
``use_model``           :class:`USEModel` tying them together
``factory``             :func:`create_use_model` (config + components), :func:`load_backbones`
``checkpoint``          safetensors + JSON checkpoints of the trainable part,
                        :func:`load_use_model` (the other way to get a model)
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
from use_core.model.checkpoint import (
    load_trainable_state,
    load_use_model,
    read_model_config,
    save_use_model,
)
from use_core.model.config import (
    ClipBackboneConfig,
    Dinov2BackboneConfig,
    SamBackboneConfig,
    USEModelConfig,
)
from use_core.model.factory import create_use_model, load_backbones
from use_core.model.features import FrozenFeatures, ImageFeatures
from use_core.model.head import area_weights, pooling_weights
from use_core.model.loss import segment_text_loss
from use_core.model.text import TextEncoder
from use_core.model.use_model import USEModel

__all__ = [
    "BACKBONES",
    "Backbone",
    "BackboneOutput",
    "ClipBackboneConfig",
    "ClipVisualBackbone",
    "Dinov2Backbone",
    "Dinov2BackboneConfig",
    "FrozenFeatures",
    "ImageFeatures",
    "SamBackboneConfig",
    "SamEncoderBackbone",
    "TextEncoder",
    "USEModel",
    "USEModelConfig",
    "area_weights",
    "build_backbones",
    "create_use_model",
    "load_backbones",
    "load_trainable_state",
    "load_use_model",
    "pooling_weights",
    "read_model_config",
    "save_use_model",
    "segment_text_loss",
]
