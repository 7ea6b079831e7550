"""The `shapes` stage: the seeded demo corpus (see :mod:`use_core.data.shapes`)."""

from __future__ import annotations

from typing import Any

from use_core.config import Params
from use_core.pipeline.runner import StageIO


def run(params: Params, io: StageIO, show_progress: bool = True) -> dict[str, Any]:
    """Generate ``data.shapes`` scenes into the ``corpus`` output; the corpus statistics."""
    from use_core.data.shapes.scenes import generate_shapes

    stats: dict[str, Any] = generate_shapes(
        io.output("corpus"), show_progress=show_progress, **params.data.shapes.model_dump()
    )
    return stats
