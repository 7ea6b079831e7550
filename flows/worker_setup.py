"""Dask worker preload of the project's LocalCluster (``distributed.worker.preload``).

A curation worker ends with a few hundred thousand Python objects (torch, transformers, spaCy,
Prefect, Dask). At exit the interpreter's final garbage collection walks all of them, which took
about 2.6 s per worker process here, a fixed cost of every flow run. By then the objects are
about to be freed with the process, so the teardown moves them out of the collector's reach
(``gc.freeze``); the process exits without that walk.
"""

from __future__ import annotations

import gc
from typing import Any


def dask_teardown(worker: Any) -> None:
    """Called by Dask when the worker closes, before its process exits."""
    gc.freeze()
