"""The USE model (paper §3.2, Figure 5): frozen backbones → trainable encoder → segment head.

Expensive work once, cheap work many times::

    feats = model.encode_image(images)                 # backbones + per-cell norm, once per image
    emb = model.embed_segments(feats, masks, index)    # pool, LLNs and Linear per segment
    txt = model.encode_text(["a red circle", ...])      # cached per unique text

``encode_image`` = ``fuse(frozen_features(images))``: :meth:`USEModel.frozen_features` runs only
frozen work — the backbones, the grid resampling and the parameter-free normalisation of each
level's LayerNorm (what the training feature cache stores) —, :meth:`USEModel.fuse` the per-image
trainable work (the cls LLNs). :meth:`USEModel.embed_segments` pools the normalised levels per
segment and only then applies the per-level LLNs and scales to the ``(S, C)`` means, which is
exactly the paper's "LLN on every cell, then weighted mean" because everything after the
normalisation is affine and each segment's weights sum to 1 (:mod:`use_core.model.encoder`; for
very many segments per image the cells are fused first, also exact).

Common grid. Backbones have different patch grids (tiny CLIP 14×14, DINOv2 32×32 at 448,
MobileSAM 128/64 per stage at 1024, 56/28 at 448); every level is resampled
(``grid_resample``) to one fixed ``grid_size × grid_size`` grid before its normalisation
(``train.grid``; ``None``: the finest native grid of the backbones, 40 for the paper's ViT-L/14
pair at 560, so no level is resampled). The demo's 32 gives ~14 px cells on a 448 image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from use_core.model.backbones import Backbone
from use_core.model.config import DEFAULT_GRID, USEModelConfig
from use_core.model.encoder import ImageEncoderHead, PoolOrder, resample_grid
from use_core.model.features import FrozenFeatures, ImageFeatures
from use_core.model.head import SegmentHead, area_weights, pooling_weights
from use_core.model.text import TextEncoder

__all__ = ["DEFAULT_GRID", "USEModel", "images_to_float"]


def images_to_float(images: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` uint8 in [0, 255] or float in [0, 1] → float32 in [0, 1]."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W) RGB, got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    if not images.is_floating_point():
        raise ValueError(f"images must be uint8 or float, got {images.dtype}")
    return images.float()


class USEModel(nn.Module):
    """Universal segment embedder. Build one with :func:`use_core.model.factory.create_use_model`
    or :func:`use_core.model.checkpoint.load_use_model`.

    Arguments:
      config: the architecture (``feature_dim``, ``use_cls``, grid, ...); kept as ``config``.
      backbones: frozen adapters built for ``config.backbones`` (same roles, same order).
      text_encoder: frozen CLIP text side (defines ``embed_dim``).

    Only ``encoder_head`` (LLNs and level scales) and ``segment_head`` (the Linear) train;
    backbones and the text encoder are frozen and always in eval mode.
    """

    def __init__(
        self, config: USEModelConfig, backbones: Sequence[Backbone], text_encoder: TextEncoder
    ) -> None:
        super().__init__()
        kinds = [b.kind for b in backbones]
        if kinds != [b.role for b in config.backbones]:
            raise ValueError(f"backbones {kinds} do not match the config's {config.encoder!r}")
        self.config = config
        self.backbones = nn.ModuleList(backbones)
        self.backbone_list: list[Backbone] = list(backbones)
        self.text_encoder = text_encoder
        side = config.grid_size
        if side is None:  # native: the finest of the backbones' own patch grids
            side = max(int(b.native_grid) for b in backbones)
        self.grid = (int(side), int(side))
        self.grid_resample = config.grid_resample
        self.feature_dim = int(config.feature_dim)
        self.use_cls = bool(config.use_cls)
        self.encoder_head = ImageEncoderHead(
            [b.level_dims for b in backbones],
            [b.cls_dim for b in backbones],
            self.feature_dim,
            self.use_cls,
        )
        self.embed_dim = text_encoder.embed_dim
        self.segment_head = SegmentHead(self.encoder_head.out_dim, self.embed_dim)

    # -- description ---------------------------------------------------------------------------
    def spec(self) -> dict[str, Any]:
        """JSON-able architecture description (stored beside checkpoints, checked on load)."""
        return {
            "backbones": [b.spec() for b in self.backbone_list],
            "feature_dim": self.feature_dim,
            "embed_dim": int(self.embed_dim),
            "use_cls": self.use_cls,
            "grid_size": self.grid[0],
            "grid_resample": self.grid_resample,
            "text_templates": list(self.text_encoder.templates),
        }

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"encoder_head": self.encoder_head, "segment_head": self.segment_head}

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Every trainable tensor by name (``encoder_head.*``, ``segment_head.*``)."""
        return {
            f"{prefix}.{k}": v
            for prefix, module in self.trainable_modules().items()
            for k, v in module.state_dict().items()
        }

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.trainable_modules().values() for p in m.parameters()]

    def train(self, mode: bool = True) -> USEModel:
        """Only the trainable heads change mode; backbones and text encoder stay in eval."""
        self.training = mode
        for module in self.trainable_modules().values():
            module.train(mode)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.segment_head.parameters()).device

    def place(self, device: torch.device | str, half_backbones: bool = False) -> USEModel:
        """Move everything to ``device``; frozen backbones in fp16 if ``half_backbones``.

        The trainable heads and the text encoder stay float32 (backbone outputs are cast to
        float32 before their normalisation).
        """
        self.to(device)
        if half_backbones:
            for backbone in self.backbone_list:
                backbone.half()
        return self

    # -- image side ----------------------------------------------------------------------------
    def frozen_features(self, images: torch.Tensor) -> FrozenFeatures:
        """Run the frozen part (no grad): images → every level on the common grid, normalised.

        Arguments:
          images: ``(B, 3, H, W)`` RGB, uint8 in [0, 255] or float in [0, 1].
        Each level is resampled to the grid, cast to float32 and normalised per cell over its
        channels (the parameter-free part of its LayerNorm); levels come back in channels-last
        memory format (shape ``(B, C, G, G)`` as always).
        """
        x = images_to_float(images)
        levels, cls = [], []
        with torch.no_grad():
            for backbone in self.backbone_list:
                out = backbone(x)
                # channels-last: resampling keeps it, and the per-cell LayerNorm then reads
                # each cell's channels contiguously (no transposed copies; 3.7x less time
                # per ViT-B level, same values)
                levels.append(
                    [
                        resample_grid(
                            t.contiguous(memory_format=torch.channels_last),
                            self.grid,
                            self.grid_resample,
                        ).float()
                        for t in out.levels
                    ]
                )
                cls.append(out.cls)
            levels = self.encoder_head.normalize(levels)
        return FrozenFeatures(levels=levels, cls=cls)

    def fuse(self, frozen: FrozenFeatures) -> ImageFeatures:
        """Per-image trainable part of the encoder (the cls LLNs), features to float32."""
        if frozen.grid != self.grid:
            raise ValueError(f"features on grid {frozen.grid}, model expects {self.grid}")
        return self.encoder_head(frozen.to(device=self.device, dtype=torch.float32))

    def encode_image(self, images: torch.Tensor) -> ImageFeatures:
        """``(B, 3, H, W)`` images (uint8 or float in [0, 1]) → :class:`ImageFeatures`."""
        return self.fuse(self.frozen_features(images))

    # -- segments and texts --------------------------------------------------------------------
    def segment_weights(self, masks: torch.Tensor) -> torch.Tensor:
        """``(S, H, W)`` masks in image coordinates → ``(S, G*G)`` pooling weights (sum 1)."""
        return pooling_weights(area_weights(masks, self.grid))

    def embed_segments(
        self,
        features: ImageFeatures,
        masks: torch.Tensor,
        image_index: torch.Tensor | Sequence[int] | None = None,
        order: PoolOrder = "auto",
    ) -> torch.Tensor:
        """Embed ``S`` segments of already encoded images (the training step's path too).

        Arguments:
          features: :meth:`encode_image` output for ``B`` images.
          masks: ``(S, H, W)`` bool/float masks, in the coordinates of the images given to
            :meth:`encode_image` (all of one size); or ``(S, G*G)`` precomputed pooling weights.
          image_index: ``(S,)`` image of each segment in ``0..B-1`` (default all 0).
          order: ``auto`` (the cheaper exact order) / ``pool_first`` / ``fuse_first``, see
            ``ImageEncoderHead.pool_segments``.
        Returns:
          ``(S, embed_dim)`` float32, unit L2 norm.
        """
        masks = masks.to(self.device)
        weights = masks.float() if masks.ndim == 2 else self.segment_weights(masks)
        s = weights.shape[0]
        if image_index is None:
            index = torch.zeros(s, dtype=torch.long, device=self.device)
        else:
            index = torch.as_tensor(image_index, dtype=torch.long, device=self.device)
        if index.shape != (s,):
            raise ValueError(f"image_index must be ({s},), got {tuple(index.shape)}")
        on_meta = index.device.type == "meta"  # shapes only (no values to check)
        if s and not on_meta and (int(index.min()) < 0 or int(index.max()) >= features.batch_size):
            raise ValueError(f"image_index out of range for a batch of {features.batch_size}")
        pooled = self.encoder_head.pool_segments(features, weights, index, order)
        return self.segment_head(pooled)

    def encode_text(
        self, texts: Sequence[str], templates: Sequence[str] | None = None
    ) -> torch.Tensor:
        """``T`` texts → ``(T, embed_dim)`` float32 unit-norm (templates averaged, cached)."""
        return self.text_encoder(list(texts), templates).to(self.device)
