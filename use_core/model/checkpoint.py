"""USE checkpoints: trainable tensors in safetensors + the architecture in JSON. No pickles.

A checkpoint directory holds::

    model.safetensors   encoder_head.* and segment_head.* tensors (float32)
    model.json          {"format": "use-model/1", "encoder": "clip+sam", "spec": {...}, ...}

The frozen backbones are not stored: they come from the model registry (``use_core.pretrained``),
and ``model.json`` records what they were (kind, level names and widths) so loading can refuse a
mismatch instead of silently mis-wiring weights.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from use_core.model.use_model import DEFAULT_GRID, USEModel, build_use_model

FORMAT = "use-model/1"
WEIGHTS = "model.safetensors"
CONFIG = "model.json"


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def save_use_model(
    model: USEModel, out_dir: str | Path, encoder: str, extra: Mapping[str, Any] | None = None
) -> Path:
    """Write ``model.safetensors`` + ``model.json`` into ``out_dir`` (atomically per file).

    Arguments:
      model: the model whose trainable tensors are saved.
      encoder: the encoder string it was built with (``"clip+sam"``...), needed to rebuild it.
      extra: JSON-able metadata stored under ``"extra"`` (e.g. the component specs, metrics).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {
        k: v.detach().to("cpu", torch.float32).contiguous()
        for k, v in model.trainable_state().items()
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{WEIGHTS}.", dir=out)
    os.close(fd)
    save_file(tensors, tmp, metadata={"format": FORMAT})
    os.replace(tmp, out / WEIGHTS)
    config = {
        "format": FORMAT,
        "encoder": encoder,
        "spec": model.spec(),
        "extra": dict(extra or {}),
    }
    _atomic_write_text(out / CONFIG, json.dumps(config, indent=2, sort_keys=True))
    return out


def read_use_config(ckpt_dir: str | Path) -> dict[str, Any]:
    """The ``model.json`` of a checkpoint (validated format)."""
    path = Path(ckpt_dir) / CONFIG
    if not path.exists():
        raise FileNotFoundError(f"no {CONFIG} in {ckpt_dir}: not a USE checkpoint")
    config = json.loads(path.read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"{path}: unsupported format {config.get('format')!r} (want {FORMAT})")
    return config


def load_trainable_state(model: USEModel, ckpt_dir: str | Path) -> USEModel:
    """Load a checkpoint's trainable tensors into ``model`` (names and shapes must match)."""
    config = read_use_config(ckpt_dir)
    want, have = config["spec"], model.spec()
    if want["backbones"] != have["backbones"]:
        raise ValueError(
            f"checkpoint {ckpt_dir} was trained on backbones {want['backbones']}, "
            f"the model has {have['backbones']}"
        )
    tensors = load_file(str(Path(ckpt_dir) / WEIGHTS), device=str(model.device))
    expected = model.trainable_state()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in expected if k in tensors and tensors[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(
            f"checkpoint {ckpt_dir} does not fit the model: missing {missing}, "
            f"unexpected {unexpected}, wrong shape {wrong}"
        )
    for prefix, module in model.trainable_modules().items():
        sub = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
        module.load_state_dict(sub, strict=True)
    return model


def load_use_model(
    ckpt_dir: str | Path, components: Mapping[str, Any], tokenizer: Any = None
) -> USEModel:
    """Rebuild a :class:`USEModel` from ``model.json`` and loaded components, then load weights.

    ``components`` maps roles (``clip``, ``dinov2``, ``sam``) to loaded models, as returned by
    the model registry.
    """
    config = read_use_config(ckpt_dir)
    spec = config["spec"]
    dinov2 = [b for b in spec["backbones"] if b["kind"] == "dinov2"]
    sam = [b for b in spec["backbones"] if b["kind"] == "sam"]
    model = build_use_model(
        config["encoder"],
        components,
        feature_dim=spec["feature_dim"],
        use_cls=spec["use_cls"],
        dinov2_blocks=len(dinov2[0]["levels"]) if dinov2 else 6,
        image_size=int(dinov2[0]["input_size"][0]) if dinov2 else 448,
        sam_input_size=int(sam[0]["input_size"][0]) if sam else None,
        grid_size=int(spec.get("grid_size", DEFAULT_GRID)),
        grid_resample=spec["grid_resample"],
        text_templates=spec["text_templates"],
        tokenizer=tokenizer,
        seed=None,
    )
    return load_trainable_state(model, ckpt_dir)
