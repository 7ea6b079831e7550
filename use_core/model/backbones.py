"""Frozen backbone adapters: each turns a batch of images into multi-level patch grids + a cls.

Paper §3.2 (Figure 5, left): CLIP patch tokens from *every* transformer block, DINOv2 patch
tokens from the *last l* blocks, and each backbone's global (cls) embedding. The demo adds
MobileSAM's TinyViT encoder as a third kind of backbone (its stage outputs and its neck).

Contract shared by every adapter (:class:`Backbone`):

* input: ``images`` float tensor ``(B, 3, H, W)``, RGB, values in ``[0, 1]``, any ``H, W``
  (one size per batch). Each adapter resizes and normalises by itself:

  - CLIP and DINOv2 resize the whole image (aspect not kept) to their square input side, so
    their patch grid spans the image exactly;
  - SAM follows ``Sam.preprocess``: resize the longest side to its input side ``S`` (1024,
    the checkpoint's, unless ``input_size`` asks for another multiple of 16; TinyViT is then
    rebuilt for ``S`` with the same weights), normalise with SAM's pixel mean/std, pad
    bottom/right to ``S×S``; the padded cells are cropped off the feature grids again (rounded
    up to whole cells, i.e. < 1 cell of padding may remain on non-square images).

* output: :class:`BackboneOutput` with ``levels`` — one ``(B, C_i, h_i, w_i)`` float32 grid per
  selected level, covering the image — and ``cls`` ``(B, C_cls)`` float32.

Adapters put their module in eval mode with ``requires_grad=False`` and run it under
``torch.no_grad()``; inputs are cast to the module's dtype (fp16 on a GPU is fine), outputs
are returned as float32.

One module for the three adapters on purpose: they share the contract above and its helpers,
and reading them side by side is how a new backbone kind is added (≈130 lines each).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from use_core.model.config import (
    ClipBackboneConfig,
    Dinov2BackboneConfig,
    SamBackboneConfig,
    USEModelConfig,
)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SAM_MEAN_255 = (123.675, 116.28, 103.53)
SAM_STD_255 = (58.395, 57.12, 57.375)


@dataclass
class BackboneOutput:
    """Frozen features of one backbone for a batch of ``B`` images.

    ``levels[i]``: ``(B, C_i, h_i, w_i)`` float32 patch grid of level ``i`` (row-major, covering
    the whole image); ``cls``: ``(B, C_cls)`` float32 global embedding.
    """

    levels: list[torch.Tensor]
    cls: torch.Tensor


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and ``requires_grad=False`` on every parameter; returns ``module``."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def _module_dtype_device(module: nn.Module) -> tuple[torch.dtype, torch.device]:
    p = next(module.parameters())
    return p.dtype, p.device


def _normalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - m) / s


def _check_images(images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be float in [0, 1], got dtype {images.dtype}")


class Backbone(nn.Module):
    """Base class of the frozen adapters. Subclasses set the attributes below.

    Attributes:
      kind: registry name (``"clip"``, ``"dinov2"``, ``"sam"``).
      level_names: one name per selected level (e.g. ``"block3"``, ``"neck"``).
      level_dims: channel count ``C_i`` of each selected level.
      cls_dim: channel count of the global embedding.
      input_size: ``(H, W)`` the backbone itself runs at.
      native_grid: side of its own patch-token grid at ``input_size`` (ViT: side // patch).
    """

    kind: str = ""
    input_size: tuple[int, int]
    native_grid: int
    level_names: list[str]
    level_dims: list[int]
    cls_dim: int

    def spec(self) -> dict[str, Any]:
        """JSON-able description (what a checkpoint needs to check it is rebuilt the same)."""
        return {
            "kind": self.kind,
            "levels": list(self.level_names),
            "level_dims": list(self.level_dims),
            "cls_dim": int(self.cls_dim),
            "input_size": [int(v) for v in self.input_size],
        }

    def train(self, mode: bool = True) -> Backbone:
        """Backbones stay in eval mode whatever the caller asks (they are frozen)."""
        super().train(False)
        return self

    def forward(self, images: torch.Tensor) -> BackboneOutput:  # pragma: no cover - abstract
        raise NotImplementedError


class ClipVisualBackbone(Backbone):
    """open_clip ``VisionTransformer``: patch tokens of every block (or ``blocks``) + image emb.

    Arguments:
      clip_model: an open_clip ``CLIP`` (its ``.visual`` is used) or the ``VisionTransformer``.
      blocks: indices of the blocks to take (default: all, as in the paper).
      mean, std: RGB normalisation for pixels in [0, 1] (default OpenAI CLIP's).

    The cls embedding is CLIP's image embedding (``ln_post`` of the final cls token, projected):
    the vector CLIP itself aligns with text.
    """

    kind = "clip"

    def __init__(
        self,
        clip_model: nn.Module,
        blocks: Sequence[int] | None = None,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
    ) -> None:
        super().__init__()
        self.mean, self.std = tuple(mean), tuple(std)
        visual: Any = getattr(clip_model, "visual", clip_model)
        if not hasattr(visual, "forward_intermediates"):
            raise TypeError(f"expected an open_clip VisionTransformer, got {type(visual).__name__}")
        self.visual: Any = freeze(visual)
        num_blocks = len(visual.transformer.resblocks)
        self.blocks = list(range(num_blocks)) if blocks is None else [int(b) for b in blocks]
        if not self.blocks or any(not 0 <= b < num_blocks for b in self.blocks):
            raise ValueError(f"CLIP blocks must be in [0, {num_blocks}), got {self.blocks}")
        size = visual.image_size
        self.input_size = (int(size[0]), int(size[1])) if isinstance(size, tuple) else (size, size)
        width = visual.transformer.width
        patch = visual.patch_size
        self.native_grid = self.input_size[0] // int(
            patch[0] if isinstance(patch, tuple) else patch
        )
        self.level_names = [f"block{b}" for b in self.blocks]
        self.level_dims = [int(width)] * len(self.blocks)
        proj = getattr(visual, "proj", None)
        self.cls_dim = int(proj.shape[1]) if proj is not None else int(width)
        self.eval()

    def forward(self, images: torch.Tensor) -> BackboneOutput:
        _check_images(images)
        dtype, device = _module_dtype_device(self.visual)
        x = F.interpolate(
            images.to(device=device, dtype=torch.float32),
            size=self.input_size,
            mode="bicubic",
            align_corners=False,
            antialias=True,
        ).clamp_(0.0, 1.0)
        x = _normalise(x, self.mean, self.std).to(dtype)
        with torch.no_grad():
            out = self.visual.forward_intermediates(x, indices=self.blocks, output_fmt="NCHW")
        levels = [t.float() for t in out["image_intermediates"]]
        return BackboneOutput(levels=levels, cls=out["image_features"].float())


class Dinov2Backbone(Backbone):
    """transformers ``Dinov2Model``: patch tokens of the last ``last_blocks`` blocks + cls.

    Arguments:
      hf_model: a ``Dinov2Model`` (no register tokens).
      last_blocks: ``l`` of the paper (6 for ViT-L/14).
      input_size: square input side; rounded down to a multiple of the patch size (the model
        interpolates its position embeddings, so any multiple works).
      mean, std: RGB normalisation for pixels in [0, 1] (default ImageNet's).

    The cls embedding is ``pooler_output`` (the final layer-normed cls token).
    """

    kind = "dinov2"

    def __init__(
        self,
        hf_model: nn.Module,
        last_blocks: int = 6,
        input_size: int = 448,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.mean, self.std = tuple(mean), tuple(std)
        cfg: Any = hf_model.config
        num_blocks = int(cfg.num_hidden_layers)
        if not 1 <= last_blocks <= num_blocks:
            raise ValueError(f"dinov2 last_blocks must be in [1, {num_blocks}], got {last_blocks}")
        self.model: Any = freeze(hf_model)
        self.patch = int(cfg.patch_size)
        side = max(self.patch, (int(input_size) // self.patch) * self.patch)
        self.input_size = (side, side)
        self.native_grid = side // self.patch
        self.last_blocks = int(last_blocks)
        first = num_blocks - last_blocks
        self.level_names = [f"block{b}" for b in range(first, num_blocks)]
        self.level_dims = [int(cfg.hidden_size)] * last_blocks
        self.cls_dim = int(cfg.hidden_size)
        self.eval()

    def forward(self, images: torch.Tensor) -> BackboneOutput:
        _check_images(images)
        dtype, device = _module_dtype_device(self.model)
        x = F.interpolate(
            images.to(device=device, dtype=torch.float32),
            size=self.input_size,
            mode="bicubic",
            align_corners=False,
            antialias=True,
        ).clamp_(0.0, 1.0)
        x = _normalise(x, self.mean, self.std).to(dtype)
        with torch.no_grad():
            out = self.model(pixel_values=x, output_hidden_states=True)
        gh, gw = self.input_size[0] // self.patch, self.input_size[1] // self.patch
        levels = []
        # hidden_states[0] is the embedding output; [k] the output of block k-1.
        for hidden in out.hidden_states[-self.last_blocks :]:
            tokens = hidden[:, 1:, :]  # drop the cls token (first)
            b, n, c = tokens.shape
            if n != gh * gw:
                raise RuntimeError(f"DINOv2 returned {n} patch tokens, expected {gh}x{gw}")
            levels.append(tokens.reshape(b, gh, gw, c).permute(0, 3, 1, 2).float())
        return BackboneOutput(levels=levels, cls=out.pooler_output.float())


def tinyvit_at_resolution(encoder: nn.Module, img_size: int) -> nn.Module:
    """A MobileSAM ``TinyViT`` like ``encoder`` but built for ``img_size`` input, same weights.

    TinyViT bakes its token grid sizes into its blocks (``input_resolution``), not into any
    parameter, so the encoder's state dict loads strictly into a copy built for another size.
    The architecture (dims, depths, heads, windows, ratios) is read off ``encoder``'s modules.
    """
    from mobile_sam.modeling import TinyViT

    enc: Any = encoder
    if int(getattr(enc, "img_size", -1)) == img_size:
        return encoder
    layers: list[Any] = list(enc.layers)
    attn_layers = layers[1:]
    first_block = attn_layers[0].blocks[0]
    mbconv = layers[0].blocks[0]
    rebuilt = TinyViT(
        img_size=img_size,
        in_chans=int(enc.patch_embed.in_chans),
        num_classes=int(enc.num_classes),
        embed_dims=[int(layer.dim) for layer in layers],
        depths=[int(layer.depth) for layer in layers],
        num_heads=[int(layers[1].blocks[0].num_heads)]
        + [int(layer.blocks[0].num_heads) for layer in attn_layers],
        window_sizes=[int(first_block.window_size)]
        + [int(layer.blocks[0].window_size) for layer in attn_layers],
        mlp_ratio=float(enc.mlp_ratio),
        drop_rate=0.0,
        drop_path_rate=0.0,
        mbconv_expand_ratio=mbconv.conv1.c.out_channels / mbconv.conv1.c.in_channels,
        local_conv_size=int(first_block.local_conv.c.kernel_size[0]),
    )
    p = next(encoder.parameters())
    rebuilt.load_state_dict(encoder.state_dict(), strict=True)
    return rebuilt.to(device=p.device, dtype=p.dtype)


class SamEncoderBackbone(Backbone):
    """MobileSAM's TinyViT image encoder: its stage outputs and its neck as levels.

    Arguments:
      sam: a ``Sam`` (its ``image_encoder``, ``pixel_mean``/``pixel_std`` are used) or the
        TinyViT encoder itself (SAM's default mean/std then apply).
      levels: names among ``"stage0".."stage{n-1}"`` and ``"neck"`` (default: all).
      input_size: side ``S`` the encoder runs at (multiple of 16; default the checkpoint's
        1024). Another side rebuilds TinyViT for it with the same weights
        (:func:`tinyvit_at_resolution`): 448 costs ~1/8 of 1024 on a CPU.

    TinyViT stage outputs are flattened ``(B, N, C)`` tokens; each is reshaped to its square grid
    (``S/8`` for stage 0, ``S/16`` after: 128 / 64 at 1024, 56 / 28 at 448). The neck runs on
    the last stage's grid. The global token is the spatial mean of the neck output over the
    valid (unpadded) cells.
    """

    kind = "sam"

    def __init__(
        self, sam: nn.Module, levels: Sequence[str] | None = None, input_size: int | None = None
    ) -> None:
        super().__init__()
        encoder: Any = getattr(sam, "image_encoder", sam)
        if not hasattr(encoder, "layers") or not hasattr(encoder, "neck"):
            raise TypeError(f"expected a MobileSAM TinyViT encoder, got {type(encoder).__name__}")
        native = int(getattr(encoder, "img_size", 1024))
        side = native if input_size is None else int(input_size)
        if side < 64 or side % 16:
            raise ValueError(f"SAM input_size must be a multiple of 16 and >= 64, got {side}")
        self.encoder: Any = freeze(tinyvit_at_resolution(encoder, side))
        mean = getattr(sam, "pixel_mean", None)
        std = getattr(sam, "pixel_std", None)
        self.mean_255 = tuple(mean.flatten().tolist()) if mean is not None else SAM_MEAN_255
        self.std_255 = tuple(std.flatten().tolist()) if std is not None else SAM_STD_255
        self.img_size = side
        self.input_size = (side, side)
        self.native_grid = side // 16  # the neck's grid (TinyViT stages after the first: S/16)
        available = [f"stage{i}" for i in range(len(encoder.layers))] + ["neck"]
        self.level_names = list(available if levels is None else levels)
        unknown = [n for n in self.level_names if n not in available]
        if unknown or not self.level_names:
            raise ValueError(f"unknown SAM levels {unknown}; available: {available}")
        dims = {f"stage{i}": self._stage_dim(layer) for i, layer in enumerate(encoder.layers)}
        neck_convs = [m for m in encoder.neck.modules() if isinstance(m, nn.Conv2d)]
        dims["neck"] = int(neck_convs[-1].out_channels)
        self.level_dims = [dims[n] for n in self.level_names]
        self.cls_dim = dims["neck"]
        self.eval()

    @staticmethod
    def _stage_dim(layer: Any) -> int:
        down = getattr(layer, "downsample", None)
        if down is not None and hasattr(down, "out_dim"):
            return int(down.out_dim)
        return int(layer.dim)

    def _preprocess(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Resize longest side to ``img_size``, normalise, pad; returns the batch and (h', w')."""
        from mobile_sam.utils.transforms import ResizeLongestSide

        resized = ResizeLongestSide(self.img_size).apply_image_torch(images * 255.0)
        rh, rw = resized.shape[-2:]
        x = _normalise(resized, self.mean_255, self.std_255)
        x = F.pad(x, (0, self.img_size - rw, 0, self.img_size - rh))
        return x, (rh, rw)

    def _encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """TinyViT's ``forward_features`` step by step (it hard-codes the 1024 grid before the
        neck): stage outputs ``(B, N_i, C_i)`` tokens and the neck ``(B, 256, g, g)``."""
        out: dict[str, torch.Tensor] = {}
        t = self.encoder.patch_embed(x)
        for i, layer in enumerate(self.encoder.layers):
            t = layer(t)
            out[f"stage{i}"] = t
        out["neck"] = self.encoder.neck(self._square(t).to(t.dtype))
        return out

    @staticmethod
    def _square(tokens: torch.Tensor) -> torch.Tensor:
        """``(B, N, C)`` tokens of a square grid → ``(B, C, g, g)``."""
        b, n, c = tokens.shape
        g = math.isqrt(n)
        if g * g != n:
            raise RuntimeError(f"SAM stage output has {n} tokens, not a square grid")
        return tokens.reshape(b, g, g, c).permute(0, 3, 1, 2)

    def forward(self, images: torch.Tensor) -> BackboneOutput:
        _check_images(images)
        dtype, device = _module_dtype_device(self.encoder)
        x, (rh, rw) = self._preprocess(images.to(device=device, dtype=torch.float32))
        with torch.no_grad():
            captured = self._encode(x.to(dtype))
        levels = [self._valid_grid(captured[n], rh, rw) for n in self.level_names]
        neck = self._valid_grid(captured["neck"], rh, rw)
        return BackboneOutput(levels=levels, cls=neck.mean(dim=(2, 3)))

    def _valid_grid(self, feat: torch.Tensor, rh: int, rw: int) -> torch.Tensor:
        """``(B, N, C)`` tokens or ``(B, C, g, g)`` map → ``(B, C, gh, gw)`` unpadded, float32."""
        if feat.ndim == 3:
            feat = self._square(feat)
        g = feat.shape[-1]
        gh = math.ceil(rh * g / self.img_size)
        gw = math.ceil(rw * g / self.img_size)
        return feat[:, :, :gh, :gw].float()


BackboneBuilder = Callable[[Any, Any], Backbone]


def unwrap_component(component: Any) -> tuple[nn.Module, dict[str, Any]]:
    """A registry bundle (``.model`` + ``.preprocess_cfg``) or a bare module → (module, cfg)."""
    if isinstance(component, nn.Module):
        return component, {}
    model = getattr(component, "model", None)
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch module or a model bundle, got {type(component)}")
    return model, dict(getattr(component, "preprocess_cfg", {}) or {})


def _norm_kwargs(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {k: tuple(cfg[k]) for k in ("mean", "std") if k in cfg}


def _build_clip(component: Any, cfg: ClipBackboneConfig) -> Backbone:
    model, pp = unwrap_component(component)
    return ClipVisualBackbone(model, blocks=cfg.blocks, **_norm_kwargs(pp))


def _build_dinov2(component: Any, cfg: Dinov2BackboneConfig) -> Backbone:
    model, pp = unwrap_component(component)
    return Dinov2Backbone(
        model, last_blocks=cfg.last_blocks, input_size=cfg.input_size, **_norm_kwargs(pp)
    )


def _build_sam(component: Any, cfg: SamBackboneConfig) -> Backbone:
    model, _ = unwrap_component(component)
    return SamEncoderBackbone(model, levels=cfg.levels, input_size=cfg.input_size)


# role → builder from the role's loaded component and its backbone config.
BACKBONES: dict[str, BackboneBuilder] = {
    "clip": _build_clip,
    "dinov2": _build_dinov2,
    "sam": _build_sam,
}


def build_backbones(config: USEModelConfig, components: Mapping[str, Any]) -> list[Backbone]:
    """One frozen adapter per entry of ``config.backbones``, in order, from loaded ``components``.

    ``components`` maps role → module or registry bundle (``ClipBundle``/``DinoBundle`` also
    give their ``preprocess_cfg`` mean/std). For ``"sam"`` the component may be a ``Sam`` or
    its image encoder.
    """
    out = []
    for cfg in config.backbones:
        if cfg.role not in components:
            raise KeyError(f"encoder {config.encoder!r} needs a loaded {cfg.role!r} component")
        out.append(BACKBONES[cfg.role](components[cfg.role], cfg))
    return out
