"""``use_core.runtime.run_split``: whole pieces of work per thread, torch single-threaded inside."""

from __future__ import annotations

import threading

import pytest
import torch

from use_core.runtime import run_split


def test_every_index_once_in_contiguous_parts_with_one_torch_thread_each() -> None:
    seen: list[tuple[int, int, int, str]] = []
    lock = threading.Lock()
    both_running = threading.Barrier(2, timeout=10)  # fails unless the parts run at once

    def run(start: int, stop: int) -> None:
        with lock:
            seen.append((start, stop, torch.get_num_threads(), threading.current_thread().name))
        both_running.wait()

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run_split(run, 7)
        assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(before)
    parts = sorted(seen)
    assert [(a, b) for a, b, _, _ in parts] in ([(0, 4), (4, 7)], [(0, 3), (3, 7)])
    assert all(t == 1 for _, _, t, _ in parts)
    assert len({name for *_, name in parts}) == 2


def test_one_thread_one_part_or_a_gpu_runs_inline() -> None:
    names: list[str] = []
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run_split(lambda a, b: names.append(threading.current_thread().name), 5, parts=1)
        run_split(lambda a, b: names.append(threading.current_thread().name), 1)
        # work on a GPU is fed from one thread (a device object is enough: nothing runs on it)
        run_split(
            lambda a, b: names.append(threading.current_thread().name),
            5,
            device=torch.device("cuda"),
        )
    finally:
        torch.set_num_threads(before)
    assert names == [threading.current_thread().name] * 3


def test_worker_errors_propagate_and_modes_carry_over() -> None:
    modes: list[bool] = []

    def run(start: int, stop: int) -> None:
        modes.append(torch.is_inference_mode_enabled())
        if start > 0:
            raise RuntimeError("piece failed")

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.inference_mode(), pytest.raises(RuntimeError, match="piece failed"):
            run_split(run, 4)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert modes == [True, True]
