"""The training stage (§3.2 "Training and Loss", §4.2): :func:`train_use_model`.

Per step: a batch of ``batch_size`` images, each with all its (augmentation-surviving) segments
up to ``max_segments_per_image`` (a random subset beyond that); one text sampled at random per
segment from its list; symmetric segment-text loss (eq. 1, duplicate texts as shared
positives); AdamW; polynomial LR decay (power 0.9) stepped per iteration to zero at the end.

Determinism. Every random choice comes from a generator keyed by (seed, purpose, epoch, step or
image): the image order of an epoch, the segments and texts of a step, the augmentation of an
image in an epoch (uncached) or of a cached view. So a run resumed from the checkpoint of epoch
``e`` replays epochs ``e+1..`` exactly as an uninterrupted run (on the CPU; GPU kernels may add
nondeterminism), and only model, optimizer and scheduler state are checkpointed.

Outputs under ``out_dir``::

    checkpoints/epoch_XXX/   resumable epoch checkpoints (``use_core.train.state``)
    model/                   final trainable weights + model.json (``use_core.model.checkpoint``)
    metrics.json             final validation metrics, train loss, wall time (DVC metrics)
    epochs.csv               one row per epoch (epoch 0 = untrained head) (DVC plots)
    steps.jsonl              per-step metrics of the default logger
    feature_cache/           cached frozen features (when ``train.feature_cache``)

The module is long because :func:`train_use_model` is one loop read top to bottom (resume,
epochs, validation, checkpoints, logging); its steps already live in ``use_core.train.*``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from use_core.config import Params
from use_core.malloc import release_freed_memory
from use_core.model.checkpoint import save_use_model
from use_core.model.config import USEModelConfig
from use_core.model.factory import create_use_model
from use_core.model.features import FrozenFeatures
from use_core.model.loss import segment_text_loss
from use_core.model.text_store import TextStore
from use_core.model.use_model import USEModel
from use_core.train.dataset import SegmentTextDataset, rng_for
from use_core.train.feature_cache import build_feature_cache, cache_key
from use_core.train.metrics_log import JsonlMetricsLogger, MetricsLogger
from use_core.train.state import (
    TrainState,
    latest_checkpoint,
    load_checkpoint,
    read_train_state,
    save_checkpoint,
)
from use_core.train.validate import validate
from use_core.train.views import (
    ViewFeatures,
    augmented_view_maker,
    compute_view_features,
    identity_view_maker,
)

log = logging.getLogger(__name__)

# Streams of the per-purpose random generators.
_ORDER, _STEP, _CACHED_VIEWS, _LIVE_VIEWS = 11, 12, 0, 1


@dataclass
class TrainResult:
    """What a training run produced."""

    out_dir: Path
    model_dir: Path
    metrics: dict[str, float]
    history: list[dict[str, float]]
    epochs_run: int
    resumed_from_epoch: int | None
    wall_time_s: float
    text_cache: dict[str, int] = field(default_factory=dict)


def resolve_device(device: str | torch.device | None, runtime_device: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU."""
    name = str(device) if device is not None else runtime_device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _train_step(
    model: USEModel,
    optimizer: torch.optim.Optimizer,
    dataset: SegmentTextDataset,
    views: Sequence[ViewFeatures],
    rng: np.random.Generator,
    max_segments: int,
    logit_scale: float,
) -> tuple[float, int] | None:
    """One optimisation step on ``views``; returns (loss, segments) or None if no segment."""
    weights, index, rows = [], [], []
    for b, view in enumerate(views):
        k = len(view.rows)
        if k == 0:
            continue
        pick = np.arange(k)
        if k > max_segments:
            pick = np.sort(rng.choice(k, size=max_segments, replace=False))
        weights.append(view.weights[pick])
        rows.append(view.rows[pick])
        index.append(torch.full((len(pick),), b, dtype=torch.long))
    if not rows:
        return None
    all_rows = np.concatenate(rows)
    texts = [
        dataset.texts[r][int(rng.integers(len(dataset.texts[r])))]
        if len(dataset.texts[r]) > 1
        else dataset.texts[r][0]
        for r in all_rows
    ]
    unique = list(dict.fromkeys(texts))
    position = {t: i for i, t in enumerate(unique)}
    device = model.device
    text_index = torch.as_tensor([position[t] for t in texts], dtype=torch.long, device=device)
    txt = model.encode_text(unique)
    feats = model.fuse(FrozenFeatures.cat([v.frozen for v in views]))
    seg = model.embed_segments(feats, torch.cat(weights), torch.cat(index))
    loss = segment_text_loss(seg, txt, logit_scale, text_index)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach()), len(all_rows)


def _write_outputs(out_dir: Path, history: list[dict[str, float]], metrics: dict[str, Any]) -> None:
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    keys = sorted({k for h in history for k in h}, key=lambda k: (k != "epoch", k))
    with (out_dir / "epochs.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)


def train_use_model(
    params: Params,
    pairs: pd.DataFrame,
    val_pairs: pd.DataFrame | None,
    data_root: str | Path,
    out_dir: str | Path,
    components: Mapping[str, Any],
    logger: MetricsLogger | None = None,
    *,
    class_names: Sequence[str] | None = None,
    device: str | torch.device | None = None,
    grid_size: int | None = None,
    sam_input_size: int | None = None,
    cache_dir: str | Path | None = None,
    resume: bool | Literal["same_run"] = True,
    show_progress: bool = True,
) -> TrainResult:
    """Train the USE head on segment-text pairs (the ``train`` stage).

    Arguments:
      params: the whole config; ``params.train`` drives training, ``params.eval.class_templates``
        the zero-shot validation, ``params.runtime`` device / threads / fp16, ``params.data``
        the image pixel limit.
      pairs, val_pairs: pairs tables (``use_core.data.pairs`` columns); ``val_pairs`` may carry
        a ``class_name`` column for zero-shot validation against ``class_names``.
      data_root: folder the tables' ``image_path`` values are relative to.
      out_dir: run folder (layout in the module docstring); a run there resumes from its last
        epoch checkpoint if the run fingerprint (config, model spec, data) matches.
      components: loaded models by role (``clip`` always; ``dinov2`` / ``sam`` as the encoder
        needs), modules or registry bundles.
      logger: receives per-step and per-epoch metrics (default: ``out_dir/steps.jsonl``).
      grid_size: side of the common patch grid (``None``: ``params.train.grid``).
      sam_input_size: MobileSAM's input side (``None``: ``params.train.sam_input_size``).
      cache_dir: where the feature cache lives (default ``out_dir/feature_cache``).
      resume: False deletes existing checkpoints in ``out_dir`` and starts over; True resumes
        and fails if they belong to another run (config, model or data changed);
        ``"same_run"`` resumes the same run and starts over for another (the DVC stage's mode).
    """
    started = time.perf_counter()
    cfg = params.train
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if params.runtime.num_threads:
        torch.set_num_threads(params.runtime.num_threads)
    dev = resolve_device(device, params.runtime.device)
    train_ds = SegmentTextDataset(pairs, data_root, params.data.max_image_pixels)
    val_ds = (
        SegmentTextDataset(val_pairs, data_root, params.data.max_image_pixels)
        if val_pairs is not None and len(val_pairs)
        else None
    )
    config = USEModelConfig.from_params(params, grid_size=grid_size, sam_input_size=sam_input_size)
    model = create_use_model(config, components, seed=cfg.seed).place(
        dev, half_backbones=dev.type == "cuda" and params.runtime.half_precision_on_gpu
    )
    if cfg.text_cache_dir:
        model.text_encoder.store = TextStore(cfg.text_cache_dir, model.text_encoder.clip)
    # The run's whole vocabulary, encoded once in a canonical order, so that a text's embedding
    # does not depend on the batch it first appears in (exact resume; TextEncoder.warm).
    model.text_encoder.warm(
        [t for ds in (train_ds, val_ds) if ds is not None for texts in ds.texts for t in texts]
    )
    fingerprint = cache_key(
        {
            "train": cfg.model_dump(mode="json"),
            "spec": model.spec(),
            "data": train_ds.fingerprint(),
            "val": val_ds.fingerprint() if val_ds else None,
            "class_names": list(class_names or []),
        }
    )

    steps_per_epoch = math.ceil(len(train_ds) / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(
        model.trainable_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.PolynomialLR(
        optimizer, total_iters=total_steps, power=cfg.poly_power
    )

    state = TrainState(epoch=0, global_step=0, fingerprint=fingerprint)
    resumed_from: int | None = None
    last = latest_checkpoint(out)
    if last is not None and not resume:
        shutil.rmtree(out / "checkpoints")
        last = None
    if last is not None:
        stored = read_train_state(last)
        if stored.fingerprint != fingerprint and resume != "same_run":
            raise ValueError(
                f"{out} holds checkpoints of a different run (config, model or data changed): "
                "use another out_dir, or resume=False to start over"
            )
        if stored.fingerprint != fingerprint:  # resume="same_run": another run starts over
            log.info("checkpoints in %s are of another run: starting over", out)
            shutil.rmtree(out / "checkpoints")
            last = None
        else:
            state = load_checkpoint(last, model, optimizer, scheduler)
            resumed_from = state.epoch
            log.info("resuming from %s (epoch %d, step %d)", last, state.epoch, state.global_step)

    if logger is None:
        jsonl = JsonlMetricsLogger(out / "steps.jsonl")
        if resumed_from is None:
            jsonl.path.unlink(missing_ok=True)
        else:
            jsonl.truncate_after(state.global_step)
        logger = jsonl

    cache_root = Path(cache_dir) if cache_dir is not None else out / "feature_cache"
    spec_json = frozen_spec(model.spec())
    cached = None
    live_views = None
    if cfg.feature_cache:
        key = cache_key(
            {
                "spec": spec_json,
                "data": train_ds.fingerprint(),
                "seed": cfg.seed,
                "aug": [cfg.crop_size, cfg.scale_min, cfg.scale_max],
            }
        )
        cached = build_feature_cache(
            cache_root / "train",
            key,
            model,
            train_ds,
            cfg.cache_views,
            augmented_view_maker(
                train_ds, cfg.seed, cfg.crop_size, cfg.scale_min, cfg.scale_max, _CACHED_VIEWS
            ),
            batch_views=cfg.cache_batch_views,
            show_progress=show_progress,
            max_bytes=_cache_max_bytes(cfg.cache_max_gb),
        )
    else:
        live_views = augmented_view_maker(
            train_ds, cfg.seed, cfg.crop_size, cfg.scale_min, cfg.scale_max, _LIVE_VIEWS
        )
    val_views = _validation_views(
        model,
        val_ds,
        cfg.feature_cache,
        cache_root,
        spec_json,
        show_progress,
        cfg.cache_batch_views,
        _cache_max_bytes(cfg.cache_max_gb),
    )

    # The cache build's backbone batches were this stage's largest allocations; glibc keeps
    # that heap for reuse (use_core.malloc), but the training steps never need it again.
    release_freed_memory()

    def run_validation() -> dict[str, float]:
        if val_ds is None:
            return {}
        return validate(
            model,
            val_ds,
            val_views,
            cfg.logit_scale,
            class_names=class_names,
            class_templates=params.eval.class_templates,
        )

    if resumed_from is None:
        initial = {"epoch": 0.0, **run_validation()}
        state.history.append(initial)
        logger.log_metrics({k: v for k, v in initial.items() if k != "epoch"}, 0)

    model.train()
    bar = tqdm(
        total=total_steps,
        initial=state.global_step,
        desc="train",
        unit="step",
        disable=not show_progress,
    )
    try:
        for epoch in range(state.epoch + 1, cfg.epochs + 1):
            order = rng_for(cfg.seed, _ORDER, epoch).permutation(len(train_ds))
            losses, seg_count, t0 = [], 0, time.perf_counter()
            for step in range(steps_per_epoch):
                batch = order[step * cfg.batch_size : (step + 1) * cfg.batch_size].tolist()
                rng = rng_for(cfg.seed, _STEP, epoch, step)
                t_step = time.perf_counter()
                if cached is not None:
                    views = [cached.get(i, int(rng.integers(cached.views))) for i in batch]
                else:
                    assert live_views is not None
                    views = compute_view_features(
                        model, train_ds, [(i, live_views(i, epoch)) for i in batch]
                    )
                result = _train_step(
                    model,
                    optimizer,
                    train_ds,
                    views,
                    rng,
                    cfg.max_segments_per_image,
                    cfg.logit_scale,
                )
                scheduler.step()
                state.global_step += 1
                dt = max(time.perf_counter() - t_step, 1e-9)
                if result is not None:
                    loss, n = result
                    losses.append(loss)
                    seg_count += n
                    logger.log_metrics(
                        {
                            "train/loss": loss,
                            "train/lr": float(scheduler.get_last_lr()[0]),
                            "train/segments": n,
                            "train/segments_per_s": n / dt,
                        },
                        state.global_step,
                    )
                    bar.set_postfix(loss=f"{loss:.3f}", seg_s=f"{n / dt:.0f}")
                bar.update(1)
            record = {
                "epoch": float(epoch),
                "train/loss": float(np.mean(losses)) if losses else float("nan"),
                "train/segments": float(seg_count),
                "train/epoch_time_s": time.perf_counter() - t0,
                **run_validation(),
            }
            state.history.append(record)
            logger.log_metrics({k: v for k, v in record.items() if k != "epoch"}, state.global_step)
            state.epoch = epoch
            save_checkpoint(out, model, optimizer, scheduler, state)
    finally:
        bar.close()

    model_dir = save_use_model(
        model, out / "model", {"epochs": state.epoch, "fingerprint": fingerprint}
    )
    wall = time.perf_counter() - started
    metrics = {**state.history[-1], "wall_time_s": wall}
    # Epoch 0 is the untrained head: keep its validation numbers beside the final ones.
    metrics.update(
        {f"untrained/{k[4:]}": v for k, v in state.history[0].items() if k.startswith("val/")}
    )
    _write_outputs(out, state.history, metrics)
    return TrainResult(
        out_dir=out,
        model_dir=model_dir,
        metrics=metrics,
        history=state.history,
        epochs_run=state.epoch - (resumed_from or 0),
        resumed_from_epoch=resumed_from,
        wall_time_s=wall,
        text_cache=model.text_encoder.cache_info(),
    )


def _cache_max_bytes(max_gb: float | None) -> int | None:
    return None if max_gb is None else int(max_gb * 1e9)


def frozen_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a model spec that decides the frozen features (the feature cache key).

    Backbones (kinds, levels, input sizes) and the common grid; not the trainable head's
    ``feature_dim`` / ``use_cls`` / text side, so head settings reuse one cache.
    """
    return {k: spec[k] for k in ("backbones", "grid_size", "grid_resample")}


def _validation_views(
    model: USEModel,
    val_ds: SegmentTextDataset | None,
    use_cache: bool,
    cache_root: Path,
    spec_json: dict[str, Any],
    show_progress: bool,
    batch_views: int,
    max_bytes: int | None = None,
) -> list[ViewFeatures]:
    """Frozen features of every validation image (un-augmented), computed once per run."""
    if val_ds is None:
        return []
    maker = identity_view_maker(val_ds)
    if use_cache:
        key = cache_key({"spec": spec_json, "data": val_ds.fingerprint(), "view": "identity"})
        cache = build_feature_cache(
            cache_root / "val",
            key,
            model,
            val_ds,
            1,
            maker,
            batch_views=batch_views,
            show_progress=show_progress,
            max_bytes=max_bytes,
        )
        return [cache.get(i, 0) for i in range(len(val_ds))]
    views = []
    for i in range(len(val_ds)):
        view = compute_view_features(model, val_ds, [(i, maker(i, 0))])[0]
        # fp16 like the cache, so validation does not depend on the cache switch.
        views.append(ViewFeatures(view.frozen.to(dtype=torch.float16), view.weights, view.rows))
    return views
