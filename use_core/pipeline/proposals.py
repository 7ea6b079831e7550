"""The `proposals` stage: SAM's grid proposals, once, for every configured benchmark's images.

They go to a content-addressed :class:`~use_core.infer.proposal_store.ProposalStore` (the
``store`` output), so re-training never re-runs SAM and benchmarks on the same images share the
work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from use_core.config import Params
from use_core.pipeline.runner import StageIO


def run(params: Params, io: StageIO) -> dict[str, Any]:
    """The stage: the proposals into the ``store`` output, the summary into ``metrics``."""
    return run_proposals_stage(params, io.output("store"), io.output("metrics"))


def proposal_settings(params: Params) -> dict[str, Any]:
    """What identifies a SAM proposal besides the image and the grid (part of the store key)."""
    from use_core.pretrained.profiles import resolve_spec

    return {"sam": resolve_spec("sam", params.models).model_dump(mode="json")}


def run_proposals_stage(params: Params, out_dir: Path, metrics_path: Path) -> dict[str, Any]:
    """Compute the SAM proposals of every configured benchmark's images (skipping cached ones).

    Writes ``metrics_path``: images, computed, cached, mean proposals per image and
    seconds per computed image. Does nothing but report when ``eval.proposals`` is ``oracle``.
    """
    import time

    from tqdm import tqdm

    from use_core.data.images import load_rgb
    from use_core.data.metrics_json import write_metrics_json
    from use_core.eval.datasets import entry_root, load_benchmark
    from use_core.infer.proposal_store import ProposalStore, sam_proposal_masks

    paths: dict[str, Path] = {}
    if params.eval.proposals == "sam":
        for name in params.eval.benchmark_names:
            entry = params.eval.benchmark_entry(name)
            root = entry_root(name, entry.root, params.data.root)
            bench = load_benchmark(name, root, label_order=entry.label_order)
            samples = bench.samples[: params.eval.max_images] if params.eval.max_images else None
            for sample in samples if samples is not None else bench.samples:
                paths.setdefault(str(sample.image_path.resolve()), sample.image_path)
    store = ProposalStore(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sam = None
    settings = proposal_settings(params)
    computed = cached = segments = 0
    seconds = 0.0
    for path in tqdm(list(paths.values()), desc="proposals"):
        image = load_rgb(path, params.data.max_image_pixels)
        if sam is None:
            from use_core.pretrained.registry import load_pretrained

            sam = load_pretrained("sam", params)
        start = time.perf_counter()
        masks, hit = sam_proposal_masks(
            sam,
            image,
            path,
            params.eval.points_per_side,
            params.nms.iou_threshold,
            store,
            settings,
        )
        if hit:
            cached += 1
        else:
            computed += 1
            seconds += time.perf_counter() - start
        segments += int(masks.shape[0])
    metrics = {
        "proposals_images": len(paths),
        "proposals_computed": computed,
        "proposals_cached": cached,
        "proposals_per_image": segments / len(paths) if paths else 0.0,
        "proposals_seconds_per_image": seconds / computed if computed else 0.0,
    }
    write_metrics_json(metrics, metrics_path)
    return metrics
