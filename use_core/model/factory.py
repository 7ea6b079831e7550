"""Building a USE model: :func:`create_use_model` (config + loaded components) and
:func:`load_backbones` (the components a config needs, from the model registry).

A trained model is rebuilt from its checkpoint by :func:`use_core.model.checkpoint.load_use_model`,
which goes through :func:`create_use_model` too: there is no other way to build a
:class:`~use_core.model.use_model.USEModel`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from use_core.model.backbones import build_backbones, unwrap_component
from use_core.model.config import USEModelConfig
from use_core.model.text import TextEncoder
from use_core.model.use_model import USEModel

if TYPE_CHECKING:
    from use_core.config import Params


def create_use_model(
    config: USEModelConfig,
    backbones: Mapping[str, Any],
    *,
    tokenizer: Any = None,
    seed: int | None = 0,
) -> USEModel:
    """A :class:`USEModel` of architecture ``config`` on loaded components.

    Arguments:
      config: the architecture.
      backbones: role → module or registry bundle (as ``load_component`` / :func:`load_backbones`
        return them): ``"clip"`` always (it is the text encoder) and every role of
        ``config.backbones``.
      tokenizer: CLIP's tokenizer (default: the CLIP bundle's).
      seed: seeds the initialisation of the trainable parameters (``None``: torch's RNG).

    The frozen adapters and the text encoder are built first, then the trainable heads (under
    ``seed`` in a forked RNG, so the caller's RNG state is left as it was).
    """
    if "clip" not in backbones:
        raise KeyError("a 'clip' component is required: it encodes the texts")
    adapters = build_backbones(config, backbones)
    clip_model, _ = unwrap_component(backbones["clip"])
    tokenizer = tokenizer or getattr(backbones["clip"], "tokenizer", None)
    text = TextEncoder(clip_model, tokenizer=tokenizer, templates=config.text_templates)
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return USEModel(config, adapters, text)
    return USEModel(config, adapters, text)


def load_backbones(params: Params, config: USEModelConfig | None = None) -> dict[str, Any]:
    """The pretrained components ``config`` needs (default: ``params.train``'s architecture),
    from the model registry on ``runtime.device`` (see
    :func:`use_core.pretrained.registry.load_pretrained`).

    CLIP is always loaded (it encodes the texts), at its backbone's ``input_size`` when it is
    one of the backbones; DINOv2 and SAM at their checkpoints' own architecture (their input
    sides are applied by the adapters).
    """
    from use_core.pretrained.registry import load_pretrained

    cfg = config if config is not None else USEModelConfig.from_params(params)
    clip_side = next((b.input_size for b in cfg.backbones if b.role == "clip"), None)
    return {
        role: load_pretrained(
            role,  # type: ignore[arg-type]
            params,
            image_size=clip_side if role == "clip" else None,
        )
        for role in cfg.roles
    }
