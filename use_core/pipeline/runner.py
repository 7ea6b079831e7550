"""Run a stage of the table by name: the one entry the CLI, DVC and Prefect share.

:func:`run` imports ``use_core.pipeline.<name>`` only when asked, so a process running one
stage loads that stage's code and nothing of the others (what keeps each stage's ``deps`` in
``dvc.yaml`` exact), and hands it a :class:`StageIO` with the table's paths.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from use_core.config import Params
from use_core.pipeline.table import StageSpec, stage


class StageFailed(RuntimeError):
    """A stage refused its input (e.g. the pairs gate); the message is the readable report."""


@dataclass(frozen=True)
class StageIO:
    """The paths of one stage instance (``item`` for a foreach stage), relative to the
    project folder DVC runs in."""

    spec: StageSpec
    item: str | None = None

    def output(self, key: str) -> Path:
        """Output ``key`` of the stage (see :class:`~use_core.pipeline.table.Output`)."""
        return Path(self.spec.output(key, self.item))

    def input(self, key: str) -> Path:
        """The input path whose last part is ``key``."""
        return Path(self.spec.input(key, self.item))


def run(name: str, params: Params, item: str | None = None, **options: Any) -> dict[str, Any]:
    """Run stage ``name`` (once for ``item`` of a foreach stage); its result as a dict.

    ``options`` go to the stage's ``run`` (e.g. ``track=False``, ``show_progress=False``).
    """
    spec = stage(name)
    if spec.foreach and item is None:
        raise ValueError(f"stage {name!r} runs once per {spec.foreach} entry: give the item")
    if not spec.foreach and item is not None:
        raise ValueError(f"stage {name!r} takes no item (got {item!r})")
    module = importlib.import_module(spec.module)
    result: dict[str, Any] = module.run(params, StageIO(spec, item), **options)
    return result
