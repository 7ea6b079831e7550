"""USE checkpoints: trainable tensors in safetensors + the architecture in JSON. No pickles.

A checkpoint directory holds::

    model.safetensors   encoder_head.* and segment_head.* tensors (float32)
    model.json          {"format": "use-model/2", "config": {...}, "spec": {...}, "extra": {...}}

``config`` is the model's :class:`~use_core.model.config.USEModelConfig` as-is (what
:func:`load_use_model` rebuilds it from); ``spec`` what the built model was (backbone kinds,
level names and widths, input sides), checked on load so a mismatch is refused instead of
silently mis-wiring weights. The frozen backbones are not stored: they come from the model
registry (``use_core.pretrained``). A ``use-model/1`` checkpoint (``encoder`` + ``spec``, no
``config``) still loads: its config is read off its spec
(:meth:`~use_core.model.config.USEModelConfig.from_spec`).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from use_core.model.config import USEModelConfig
from use_core.model.factory import create_use_model, load_backbones
from use_core.model.use_model import USEModel

if TYPE_CHECKING:
    from use_core.config import Params

FORMAT = "use-model/2"
FORMAT_V1 = "use-model/1"  # encoder + spec, no config: read, never written
WEIGHTS = "model.safetensors"
CONFIG = "model.json"


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def save_use_model(
    model: USEModel, out_dir: str | Path, extra: Mapping[str, Any] | None = None
) -> Path:
    """Write ``model.safetensors`` + ``model.json`` into ``out_dir`` (atomically per file).

    Arguments:
      model: the model whose trainable tensors are saved (its ``config`` goes to model.json).
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
        "config": model.config.model_dump(mode="json"),
        "spec": model.spec(),
        "extra": dict(extra or {}),
    }
    _atomic_write_text(out / CONFIG, json.dumps(config, indent=2, sort_keys=True))
    return out


def read_use_config(ckpt_dir: str | Path) -> dict[str, Any]:
    """The ``model.json`` of a checkpoint (format checked: ``use-model/2`` or ``/1``)."""
    path = Path(ckpt_dir) / CONFIG
    if not path.exists():
        raise FileNotFoundError(f"no {CONFIG} in {ckpt_dir}: not a USE checkpoint")
    config = json.loads(path.read_text())
    if config.get("format") not in (FORMAT, FORMAT_V1):
        raise ValueError(
            f"{path}: unsupported format {config.get('format')!r} (want {FORMAT} or {FORMAT_V1})"
        )
    return config


def read_model_config(ckpt_dir: str | Path) -> USEModelConfig:
    """The :class:`USEModelConfig` a checkpoint was saved with (of a ``use-model/1`` one: read
    off its spec)."""
    stored = read_use_config(ckpt_dir)
    if stored["format"] == FORMAT_V1:
        return USEModelConfig.from_spec(stored["encoder"], stored["spec"])
    return USEModelConfig.model_validate(stored["config"])


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
    ckpt_dir: str | Path,
    components: Mapping[str, Any] | None = None,
    *,
    params: Params | None = None,
    tokenizer: Any = None,
) -> USEModel:
    """Rebuild the :class:`USEModel` saved in ``ckpt_dir`` and load its trainable weights.

    The architecture is the checkpoint's own config. The frozen components are ``components``
    (role → loaded model, as :func:`~use_core.model.factory.load_backbones` returns them) or,
    when not given, loaded for that config from the registry under ``params`` (``models``,
    ``runtime.device``, ``runtime.half_precision_on_gpu``).
    """
    config = read_model_config(ckpt_dir)
    if components is None:
        if params is None:
            raise TypeError("load_use_model needs the loaded components or the params to load them")
        components = load_backbones(params, config)
    model = create_use_model(config, components, tokenizer=tokenizer, seed=None)
    return load_trainable_state(model, ckpt_dir)
