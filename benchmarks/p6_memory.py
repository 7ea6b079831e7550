"""P6: peak resident memory of a small ``make repro``-like run (demo profile) and the training
text-embedding cache hit rate.

Each pipeline stage runs as its own child process through the ``use`` CLI, exactly the command
``dvc.yaml`` gives it (``use shapes``, ``use caption``, ``use ground``, ``use masks``,
``use nms``, ``use train --no-track``), in a temporary project folder with a smaller shapes corpus
and fewer epochs. The peak RSS of every child comes from ``wait4`` (see
``benchmarks.common.run_child``); the figure is the largest (stages run one after another, as
DVC runs them). The text-cache hit rate is the train stage's own ``text_cache_hit_rate`` metric.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import models_cache, result, run_child

ID = "P6"
WHAT = "peak RSS of a small repro run (demo profile, stages as child processes)"
TARGET = "<= 4 GiB; text-cache hit rate reported"


def use_cli() -> list[str]:
    """The ``use`` console script of this interpreter's environment (``python -m`` fallback)."""
    script = Path(sys.executable).parent / "use"
    return [str(script)] if script.exists() else [sys.executable, "-m", "use_core.cli"]


def project_params(root: Path, train_images: int, epochs: int) -> Path:
    params = {
        "data": {
            "root": str(root / "data"),
            "shapes": {"train_images": train_images, "val_images": max(2, train_images // 4)},
        },
        "train": {"epochs": epochs},
        "models": {"cache_dir": str(models_cache())},
    }
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def run(quick: bool = False) -> dict[str, Any]:
    train_images, epochs = (4, 1) if quick else (4, 3)
    stages = [
        ["shapes"],
        ["caption"],
        ["ground"],
        ["masks"],
        ["nms"],
        ["train", "--no-track"],
    ]
    children: dict[str, dict[str, Any]] = {}
    hit_rate = None
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        params = project_params(root, train_images, epochs)
        for args in stages:
            cmd = [*use_cli(), args[0], "--params", str(params), *args[1:]]
            out = run_child(cmd, cwd=root)
            children[args[0]] = {
                "seconds": round(out["seconds"], 2),
                "peak_rss_mib": round(out["peak_rss_mib"], 1),
                "returncode": out["returncode"],
            }
            if out["returncode"] != 0:
                children[args[0]]["stderr_tail"] = out["stderr_tail"]
                break
        metrics = root / "metrics" / "train.json"
        if metrics.exists():
            hit_rate = json.loads(metrics.read_text()).get("text_cache_hit_rate")
    ok = all(c["returncode"] == 0 for c in children.values()) and len(children) == len(stages)
    hit = "n/a" if hit_rate is None else f"{hit_rate:.1%}"
    peak_gib = max(c["peak_rss_mib"] for c in children.values()) / 1024.0
    return result(
        ID,
        WHAT,
        peak_gib,
        TARGET,
        ok and peak_gib <= 4.0,
        figure=f"{peak_gib:.2f} GiB, text-cache hit {hit}",
        peak_rss_gib=round(peak_gib, 3),
        text_cache_hit_rate=hit_rate,
        all_stages_ok=ok,
        train_images=train_images,
        epochs=epochs,
        stages=children,
    )


if __name__ == "__main__":
    print(json.dumps(run(quick=True), indent=2))
