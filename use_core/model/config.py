"""The USE architecture as data: :class:`USEModelConfig`.

One config says everything needed to rebuild a model from the pretrained components: which
frozen backbones in which order (role, selected blocks / levels, input side), the cls switch,
the common grid, the LLN width and the text templates. It is built from ``params.yaml``'s
``train`` section (:meth:`USEModelConfig.from_params`), given to
:func:`use_core.model.factory.create_use_model`, and stored as-is in a checkpoint's
``model.json`` (:mod:`use_core.model.checkpoint`), from which
:func:`use_core.model.checkpoint.load_use_model` rebuilds the same model.

Example (``train.encoder: clip+sam``, ``image_size: 448``, ``sam_input_size: 448``)::

    {"backbones": [{"role": "clip", "blocks": null, "input_size": 448},
                   {"role": "sam", "levels": null, "input_size": 448}],
     "use_cls": false, "feature_dim": 256, "grid_size": 32, "grid_resample": "bilinear",
     "text_templates": ["a photo of {}", ...]}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from use_core.config import PAPER_TEXT_TEMPLATES

if TYPE_CHECKING:
    from use_core.config import Params

DEFAULT_GRID = 32
Resample = Literal["bilinear", "nearest", "area"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClipBackboneConfig(_Frozen):
    """open_clip ViT: patch tokens of ``blocks`` (``None``: every block, as in the paper).

    ``input_size``: the side the registry builds the ViT at (open_clip interpolates the
    position embeddings; ``None``: the checkpoint's own side). A component handed to
    :func:`~use_core.model.factory.create_use_model` is used at whatever side it was built.
    """

    role: Literal["clip"] = "clip"
    blocks: tuple[int, ...] | None = None
    input_size: int | None = Field(None, ge=16)


class Dinov2BackboneConfig(_Frozen):
    """DINOv2: patch tokens of its ``last_blocks`` blocks (paper: 6), images resized to
    ``input_size`` (rounded down to a multiple of the patch size)."""

    role: Literal["dinov2"] = "dinov2"
    last_blocks: int = Field(6, ge=1, le=64)
    input_size: int = Field(448, ge=14)


class SamBackboneConfig(_Frozen):
    """MobileSAM TinyViT encoder: ``levels`` among ``stage0..`` and ``neck`` (``None``: all),
    run at ``input_size`` (multiple of 16; ``None``: the checkpoint's 1024)."""

    role: Literal["sam"] = "sam"
    levels: tuple[str, ...] | None = None
    input_size: int | None = Field(None, ge=64)


BackboneConfig = Annotated[
    ClipBackboneConfig | Dinov2BackboneConfig | SamBackboneConfig, Field(discriminator="role")
]
BACKBONE_CONFIGS: dict[str, type[ClipBackboneConfig | Dinov2BackboneConfig | SamBackboneConfig]] = {
    "clip": ClipBackboneConfig,
    "dinov2": Dinov2BackboneConfig,
    "sam": SamBackboneConfig,
}


class USEModelConfig(_Frozen):
    """Architecture of a :class:`~use_core.model.use_model.USEModel` (frozen, JSON-able).

    Fields:
      backbones: the frozen backbones in fusion order, at most one per role.
      use_cls: concatenate each backbone's cls embedding to ``z`` (paper Table 5).
      feature_dim: width of each level's LayerNorm + Linear (LLN).
      grid_size: side of the common patch grid every level is resampled to (``None``: the
        backbones' native grid, :attr:`~use_core.model.backbones.Backbone.native_grid`, the
        finest when they differ: 40 for ViT-L/14 CLIP and DINOv2 at 560).
      grid_resample: how levels reach the grid.
      text_templates: prompt templates averaged by the text encoder (CLIP, always loaded).
    """

    backbones: tuple[BackboneConfig, ...]
    use_cls: bool = True
    feature_dim: int = Field(256, ge=1)
    grid_size: int | None = Field(DEFAULT_GRID, ge=1)
    grid_resample: Resample = "bilinear"
    text_templates: tuple[str, ...] = tuple(PAPER_TEXT_TEMPLATES)

    @field_validator("backbones")
    @classmethod
    def _one_per_role(cls, v: tuple[Any, ...]) -> tuple[Any, ...]:
        roles = [b.role for b in v]
        if not roles or len(set(roles)) != len(roles):
            raise ValueError(f"backbones must name at least one role, each once; got {roles}")
        return v

    @field_validator("text_templates")
    @classmethod
    def _templates_have_slot(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v or any("{}" not in t for t in v):
            raise ValueError("every template must contain '{}' and the list must not be empty")
        return v

    # -- views ---------------------------------------------------------------------------------
    @property
    def encoder(self) -> str:
        """The backbones as ``train.encoder`` spells them (``"clip+sam"``)."""
        return "+".join(b.role for b in self.backbones)

    @property
    def roles(self) -> list[str]:
        """Registry roles the model needs: its backbones' and ``clip`` (the text encoder)."""
        return sorted({"clip", *(b.role for b in self.backbones)})

    def backbone(self, role: str) -> ClipBackboneConfig | Dinov2BackboneConfig | SamBackboneConfig:
        """The config of the backbone with ``role`` (KeyError if the model has none)."""
        for b in self.backbones:
            if b.role == role:
                return b
        raise KeyError(f"the model has no {role!r} backbone (backbones: {self.encoder})")

    def with_backbone(self, role: str, **changes: Any) -> USEModelConfig:
        """A copy with fields of the ``role`` backbone changed (validated)."""
        old = self.backbone(role)
        new = type(old).model_validate({**old.model_dump(), **changes})
        return self.model_copy(
            update={"backbones": tuple(new if b.role == role else b for b in self.backbones)}
        )

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_params(
        cls, params: Params, *, grid_size: int | None = None, sam_input_size: int | None = None
    ) -> USEModelConfig:
        """The architecture ``params.train`` describes.

        ``train.encoder`` names the backbones; ``train.image_size`` is CLIP's and DINOv2's
        input side, ``train.dinov2_blocks`` DINOv2's last blocks, ``train.sam_input_size``
        (or ``sam_input_size`` when given) MobileSAM's side. CLIP takes every block, SAM
        every level. The grid is ``train.grid`` (``None``: native) unless ``grid_size`` is given.
        """
        t = params.train
        sam_side = sam_input_size if sam_input_size is not None else t.sam_input_size
        per_role: dict[str, Any] = {
            "clip": ClipBackboneConfig(input_size=t.image_size),
            "dinov2": Dinov2BackboneConfig(last_blocks=t.dinov2_blocks, input_size=t.image_size),
            "sam": SamBackboneConfig(input_size=sam_side),
        }
        return cls(
            backbones=tuple(per_role[name] for name in t.encoder.split("+")),
            use_cls=t.use_cls,
            feature_dim=t.feature_dim,
            grid_size=grid_size if grid_size is not None else t.grid,
            grid_resample=t.grid_resample,
            text_templates=tuple(t.text_templates),
        )

    @classmethod
    def from_spec(cls, encoder: str, spec: Mapping[str, Any]) -> USEModelConfig:
        """The config of a ``use-model/1`` checkpoint (``encoder`` + model spec, no config)."""
        backbones: list[Any] = []
        for b, role in zip(spec["backbones"], encoder.split("+"), strict=True):
            if b["kind"] != role:
                raise ValueError(f"spec backbone {b['kind']!r} does not match encoder {encoder!r}")
            side = int(b["input_size"][0])
            if role == "clip":
                blocks = tuple(int(n.removeprefix("block")) for n in b["levels"])
                backbones.append(ClipBackboneConfig(blocks=blocks, input_size=side))
            elif role == "dinov2":
                backbones.append(
                    Dinov2BackboneConfig(last_blocks=len(b["levels"]), input_size=side)
                )
            else:
                backbones.append(SamBackboneConfig(levels=tuple(b["levels"]), input_size=side))
        return cls(
            backbones=tuple(backbones),
            use_cls=spec["use_cls"],
            feature_dim=spec["feature_dim"],
            grid_size=int(spec.get("grid_size", DEFAULT_GRID)),
            grid_resample=spec["grid_resample"],
            text_templates=tuple(spec["text_templates"]),
        )

    @model_validator(mode="before")
    @classmethod
    def _backbones_by_name(cls, data: Any) -> Any:
        """``backbones`` may be given as role names (``["clip", "sam"]``): defaults each."""
        if isinstance(data, Mapping) and isinstance(data.get("backbones"), Sequence):
            items = data["backbones"]
            if not isinstance(items, str) and any(isinstance(b, str) for b in items):
                unknown = [b for b in items if isinstance(b, str) and b not in BACKBONE_CONFIGS]
                if unknown:
                    raise ValueError(
                        f"unknown backbones {unknown}; known: {sorted(BACKBONE_CONFIGS)}"
                    )
                data = {
                    **data,
                    "backbones": [
                        BACKBONE_CONFIGS[b]() if isinstance(b, str) else b for b in items
                    ],
                }
        return data
