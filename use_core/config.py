"""params.yaml → typed, validated configuration (the one place knobs are defined).

Every section of ``params.yaml`` maps to one model below. Unknown keys, wrong types and
out-of-range values fail with :class:`ConfigError`, whose message names the dotted key and
what is allowed. Defaults follow the USE paper (sections 4.1–4.3); each is cited inline.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Role = Literal["clip", "dinov2", "sam", "grounding", "captioner", "spacy"]

PAPER_CAPTION_PROMPT = (
    "Describe this image in detail. In your description, specifically mention "
    "ALL VISIBLE parts of each object in the image."
)
# Paper §4.2: the four prompt templates used for referring expressions.
PAPER_TEXT_TEMPLATES = [
    "a photo of {}",
    "This is a photo of {}",
    "There is {} in the scene",
    "a photo of {} in the scene",
]
# CLIP's ImageNet-style class-name templates (a compact subset), used at inference (§4.3).
CLASS_TEMPLATES = [
    "a photo of a {}.",
    "a photo of the {}.",
    "a bad photo of a {}.",
    "a good photo of a {}.",
    "a close-up photo of a {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
    "a rendering of a {}.",
    "itap of a {}.",
    "art of the {}.",
]


class ConfigError(ValueError):
    """A params file that cannot be turned into a valid configuration."""


class Strict(BaseModel):
    """Base for config sections: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class ShapesConfig(Strict):
    """The procedural "shapes" demo corpus (exact ground truth, seeded)."""

    train_images: int = Field(200, ge=1, le=1_000_000)
    val_images: int = Field(50, ge=1, le=1_000_000)
    image_size: int = Field(448, ge=64, le=4096)
    min_objects: int = Field(2, ge=1, le=32)
    max_objects: int = Field(5, ge=1, le=32)
    seed: int = 0

    @model_validator(mode="after")
    def _object_range(self) -> ShapesConfig:
        if self.min_objects > self.max_objects:
            raise ValueError("min_objects must be <= max_objects")
        return self


class SourceConfig(Strict):
    """One image source of the curation pipeline (paper §3.1: three kinds of source)."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    kind: Literal["image_folder", "coco_captions", "vg_regions"]
    images: str = Field(min_length=1, description="image root, relative to data.root")
    annotations: str | None = Field(None, description="JSON file, relative to data.root")
    gt_instances: list[str] = Field(
        default_factory=list,
        description="COCO files with ground-truth masks of these images (relative to data.root),"
        " used only to measure the masks stage",
    )


class DataConfig(Strict):
    root: str = "data"
    shard_size: int = Field(16, ge=1, le=100_000)
    max_image_pixels: int = Field(40_000_000, ge=1, description="decompression-bomb limit")
    shapes: ShapesConfig = ShapesConfig()
    sources: list[SourceConfig] = Field(
        default_factory=lambda: [
            SourceConfig(
                name="shapes_coco",
                kind="coco_captions",
                images="shapes/train/images",
                annotations="shapes/train/captions.json",
            ),
            SourceConfig(
                name="shapes_vg",
                kind="vg_regions",
                images="shapes/train/images",
                annotations="shapes/train/regions.json",
                gt_instances=["shapes/train/instances.json", "shapes/train/parts.json"],
            ),
        ]
    )


class CaptionConfig(Strict):
    enabled: bool = True
    prompt: str = PAPER_CAPTION_PROMPT  # paper §3.1, verbatim
    temperature: float = Field(0.8, gt=0.0, le=5.0)  # paper §4.1
    top_p: float = Field(0.4, gt=0.0, le=1.0)  # paper §4.1
    top_k: int = Field(5, ge=1)  # paper §4.1
    max_new_tokens: int = Field(96, ge=1, le=4096)
    batch_size: int = Field(4, ge=1)


class GroundConfig(Strict):
    box_threshold: float = Field(0.05, ge=0.0, le=1.0)  # paper §4.1
    nms_threshold: float = Field(0.7, ge=0.0, le=1.0)  # paper §4.1 (box NMS)
    max_text_tokens: int = Field(256, ge=8)  # Grounding DINO's text limit
    max_boxes: int | None = Field(
        32, ge=1, description="top-scoring boxes kept per caption after NMS (None: every box)"
    )
    batch_size: int = Field(2, ge=1)


class MasksConfig(Strict):
    # paper §4.1 (SAM defaults 0.88 / 0.95); null = no filtering on that score
    pred_iou_threshold: float | None = Field(0.6, ge=0.0, le=1.0)
    stability_threshold: float | None = Field(0.6, ge=0.0, le=1.0)
    whole_image_ratio: float = Field(0.9, gt=0.0, le=1.0)  # paper §3.1: box > 90% → whole image
    min_region_area: int = Field(64, ge=0)  # holes / islands smaller than this are cleaned
    box_chunk: int = Field(32, ge=1)  # boxes per decoder call


class NmsConfig(Strict):
    iou_threshold: float = Field(0.7, ge=0.0, le=1.0)  # paper §4.1 (mask NMS)


class ChecksConfig(Strict):
    max_segments_per_image: int = Field(500, ge=1)
    min_segments_per_image: int = Field(1, ge=0)
    report: str = "reports/checks.json"


class TrainConfig(Strict):
    encoder: Literal["clip", "dinov2", "sam", "clip+dinov2", "clip+sam"] = "clip+sam"
    use_cls: bool = True  # paper Table 5: cls tokens help
    dinov2_blocks: int = Field(6, ge=1, le=64)  # paper §4.2: last 6 DINOv2 blocks
    grid: int | None = Field(
        None,
        ge=1,
        le=512,
        description="side of the common patch grid every level is resampled to"
        " (None: the backbones' native patch grid at image_size, e.g. 40 for ViT-L/14 at 560)",
    )
    grid_resample: Literal["bilinear", "nearest", "area"] = "bilinear"
    feature_dim: int = Field(256, ge=8, le=8192)
    logit_scale: float = Field(30.0, gt=0.0)  # paper §4.2: "τ = 30" multiplies cosine sims
    lr: float = Field(1e-3, gt=0.0, le=1.0)  # paper §4.2
    poly_power: float = Field(0.9, gt=0.0)  # paper §4.2: polynomial decay
    weight_decay: float = Field(0.01, ge=0.0)  # paper §4.2: AdamW
    epochs: int = Field(5, ge=1)  # paper §4.2
    batch_size: int = Field(32, ge=1)  # paper §4.2 (images per batch)
    max_segments_per_image: int = Field(32, ge=1)
    crop_size: int = Field(560, ge=32)  # paper §4.2
    scale_min: float = Field(0.5, gt=0.0)  # paper §4.2
    scale_max: float = Field(2.0, gt=0.0)  # paper §4.2
    image_size: int = Field(448, ge=32, description="backbone input side (demo working size)")
    sam_input_size: int | None = Field(
        None, ge=64, le=4096, description="MobileSAM backbone input side (None: its native 1024)"
    )
    text_templates: list[str] = Field(default_factory=lambda: list(PAPER_TEXT_TEMPLATES))
    sources: list[str] = Field(
        default_factory=list,
        description="train only on texts whose source tag starts with one of these (empty: all)",
    )
    feature_cache: bool = True
    cache_max_gb: float | None = Field(
        200.0,
        gt=0,
        description="refuse a feature cache estimated larger than this (None: disk space only)",
    )
    text_cache_dir: str | None = Field(
        None,
        description="folder of on-disk text embeddings per CLIP text tower (None: per run only)",
    )
    cache_views: int = Field(2, ge=1, le=64)
    cache_batch_views: int = Field(
        2,
        ge=1,
        le=1024,
        description="views per frozen-backbone pass while building the feature cache (memory)",
    )
    seed: int = 0

    @field_validator("text_templates")
    @classmethod
    def _templates_have_slot(cls, v: list[str]) -> list[str]:
        if not v or any("{}" not in t for t in v):
            raise ValueError("every template must contain '{}' and the list must not be empty")
        return v

    @model_validator(mode="after")
    def _scale_range(self) -> TrainConfig:
        if self.scale_min > self.scale_max:
            raise ValueError("scale_min must be <= scale_max")
        return self


class BenchmarkEntry(Strict):
    """One ``eval.benchmarks`` entry written as a mapping: a benchmark with its own folder."""

    name: str = Field(min_length=1)
    root: str | None = None  # the benchmark folder (or a data root above it); None: data.root
    label_order: Literal["ovseg", "detail"] | None = None  # PC-59 where the layout is ambiguous


class EvalConfig(Strict):
    benchmarks: list[str | BenchmarkEntry] = Field(
        default_factory=lambda: list[str | BenchmarkEntry](["shapes", "shapes_parts"])
    )
    points_per_side: int = Field(16, ge=1, le=128)
    proposals: Literal["sam", "oracle"] = "sam"
    class_templates: list[str] = Field(default_factory=lambda: list(CLASS_TEMPLATES))
    max_images: int | None = Field(None, ge=1)
    num_overlays: int = Field(4, ge=0)
    # the same per-benchmark settings keyed by name, for `dvc repro`: DVC's foreach puts
    # ${item} in output paths, which it cannot do for a mapping entry of `benchmarks`
    roots: dict[str, str] = Field(default_factory=dict)
    label_orders: dict[str, Literal["ovseg", "detail"]] = Field(default_factory=dict)

    @field_validator("benchmarks")
    @classmethod
    def _unique_benchmarks(cls, v: list[str | BenchmarkEntry]) -> list[str | BenchmarkEntry]:
        names = [e if isinstance(e, str) else e.name for e in v]
        if len(set(names)) != len(names):
            raise ValueError(f"each benchmark at most once, got {names}")
        return v

    @model_validator(mode="after")
    def _known_keys(self) -> EvalConfig:
        for field in ("roots", "label_orders"):
            unknown = sorted(set(getattr(self, field)) - set(self.benchmark_names))
            if unknown:
                raise ValueError(f"{field}: {unknown} not in benchmarks {self.benchmark_names}")
        return self

    @property
    def benchmark_names(self) -> list[str]:
        """The names of ``benchmarks`` in order."""
        return [e if isinstance(e, str) else e.name for e in self.benchmarks]

    def benchmark_entry(self, name: str) -> BenchmarkEntry:
        """Entry ``name`` of ``benchmarks`` as a :class:`BenchmarkEntry`: a mapping entry's
        ``root`` / ``label_order``, else those of ``roots`` / ``label_orders`` (else None)."""
        entry = BenchmarkEntry(name=name)
        for e in self.benchmarks:
            if not isinstance(e, str) and e.name == name:
                entry = e
        return BenchmarkEntry(
            name=name,
            root=entry.root if entry.root is not None else self.roots.get(name),
            label_order=entry.label_order or self.label_orders.get(name),
        )


class RegisterConfig(Strict):
    model_name: str = Field("use-segment-embedder", min_length=1)
    metric: str = "shapes_mIoU"
    higher_is_better: bool = True
    alias: str = "champion"


class ModelSpec(Strict):
    """One pretrained component: a builder kind and what to load.

    ``name`` is an architecture name, hub id, local directory or package name;
    ``pretrained`` an open_clip tag or a checkpoint file. ``{cache}`` expands to models.cache_dir.
    """

    kind: Literal[
        "open_clip",
        "hf_dinov2",
        "sam",
        "mobile_sam",
        "hf_grounding_dino",
        "hf_owlv2",
        "hf_captioner",
        "spacy",
    ]
    name: str = Field(min_length=1)
    pretrained: str | None = None


class ModelsConfig(Strict):
    profile: Literal["demo", "paper"] = "demo"
    cache_dir: str = ".cache/models"
    overrides: dict[Role, ModelSpec] = Field(default_factory=dict)


class RuntimeConfig(Strict):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    half_precision_on_gpu: bool = True
    num_threads: int = Field(0, ge=0, description="torch threads; 0 = torch's default")
    task_runner: Literal["threads", "dask", "ray"] = "threads"
    dask_address: str | None = None
    dask_workers: int = Field(2, ge=1)
    retain_freed_memory: bool = Field(
        True,
        description="glibc malloc keeps freed memory for reuse (use_core.malloc)",
    )
    seed: int = 0
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "use"
    schedule_cron: str = "0 3 * * *"


with warnings.catch_warnings():
    # pydantic warns that the field name "register" shadows ABCMeta.register; it is harmless.
    warnings.simplefilter("ignore", UserWarning)

    class Params(Strict):
        """The whole params.yaml."""

        data: DataConfig = DataConfig()
        caption: CaptionConfig = CaptionConfig()
        ground: GroundConfig = GroundConfig()
        masks: MasksConfig = MasksConfig()
        nms: NmsConfig = NmsConfig()
        checks: ChecksConfig = ChecksConfig()
        train: TrainConfig = TrainConfig()
        eval: EvalConfig = EvalConfig()
        register: RegisterConfig = RegisterConfig()
        models: ModelsConfig = ModelsConfig()
        runtime: RuntimeConfig = RuntimeConfig()


def _describe(err: dict[str, Any], model: type[BaseModel]) -> str:
    key = ".".join(str(p) for p in err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, err["loc"][:-1])
        return f"{key}: unknown key (allowed here: {', '.join(allowed)})"
    ctx = err.get("ctx") or {}
    if kind == "literal_error":
        return f"{key}: got {err.get('input')!r}, allowed values: {ctx.get('expected')}"
    return f"{key}: {err['msg']} (got {err.get('input')!r})"


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    current: Any = model
    for part in loc:
        field = current.model_fields.get(part) if current is not None else None
        if field is None:
            continue  # a list index or a dict key: stay on the container's item model
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        current = next(
            (a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None
        )
    return sorted(current.model_fields) if current is not None else []


def parse_params(raw: dict[str, Any] | None) -> Params:
    """Validate a params mapping; raise :class:`ConfigError` naming every bad key."""
    try:
        return Params.model_validate(raw or {})
    except ValidationError as exc:
        lines = [_describe(e, Params) for e in exc.errors()]  # type: ignore[arg-type]
        raise ConfigError("invalid params:\n  " + "\n  ".join(lines)) from None


def load_params(
    path: str | Path = "params.yaml", overrides: dict[str, Any] | None = None
) -> Params:
    """Load ``params.yaml`` (plus dotted-key ``overrides``) into a validated :class:`Params`."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"params file not found: {path}")
    with path.open() as fh:
        raw = yaml.safe_load(fh) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return parse_params(raw)


def flatten(params: Params) -> dict[str, Any]:
    """Flat ``section.key`` → value mapping (for MLflow params and hashing)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = value

    walk("", params.model_dump(mode="json"))
    return out
