"""Run the performance benchmarks and write ``benchmarks/results.json``.

Usage::

    python -m benchmarks.run_all [--quick] [--only P1,P3] [--out benchmarks/results.json]

Each benchmark module exposes ``run(quick) -> dict`` (``id``, ``what``, ``ratio``, ``target``,
``met``, details). A benchmark that raises is recorded with its error and the others still run.
The results file also records the machine (cores, torch threads, load average).
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks.common import machine_info, quiet_env, self_peak_rss_mib

MODULES: dict[str, str] = {
    "P1": "benchmarks.p1_segment_embedding",
    "P2": "benchmarks.p2_box_masks",
    "P3": "benchmarks.p3_mask_nms",
    "P4": "benchmarks.p4_feature_cache",
    "P5": "benchmarks.p5_dask_curation",
    "P6": "benchmarks.p6_memory",
    "P7": "benchmarks.p7_proposals",
}
DEFAULT_OUT = Path(__file__).resolve().parent / "results.json"


def run_benchmarks(ids: list[str], quick: bool = False) -> list[dict[str, Any]]:
    """Run the named benchmarks in order; failures become ``{"id", "error", "met": False}``."""
    out = []
    for bench_id in ids:
        start = time.perf_counter()
        try:
            res = importlib.import_module(MODULES[bench_id]).run(quick=quick)
        except Exception as exc:  # one failing benchmark must not hide the others
            res = {
                "id": bench_id,
                "what": MODULES[bench_id],
                "ratio": None,
                "target": "",
                "met": False,
                "figure": "error",
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc()[-3000:],
            }
        res["bench_seconds"] = round(time.perf_counter() - start, 1)
        out.append(res)
        print(f"{bench_id}: {res.get('figure')} (met={res['met']}, {res['bench_seconds']} s)")
    return out


def print_table(results: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="USE performance benchmarks")
    for col in ("id", "what", "measured", "target", "met", "s"):
        table.add_column(col)
    for r in results:
        table.add_row(
            r["id"],
            str(r.get("what", "")),
            str(r.get("figure", r.get("ratio"))),
            str(r.get("target", "")),
            "[green]yes[/green]" if r["met"] else "[red]no[/red]",
            str(r.get("bench_seconds", "")),
        )
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    from use_core.malloc import retain_freed_memory

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke run)")
    parser.add_argument("--only", default="", help="comma-separated ids, e.g. P1,P3")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    quiet_env()
    ids = [i.strip().upper() for i in args.only.split(",") if i.strip()] or list(MODULES)
    unknown = [i for i in ids if i not in MODULES]
    if unknown:
        parser.error(f"unknown benchmark ids {unknown}; known: {', '.join(MODULES)}")
    # the process setup of a `use` command (runtime.retain_freed_memory, on by default): the
    # product paths measured here run in such processes; off, SAM's encoder page-faults its
    # activations and runs ~1.4x slower, which flatters ratios with an encoder in them (P2)
    machine = {**machine_info(), "malloc_retains_freed_memory": retain_freed_memory()}
    started = time.time()
    results = run_benchmarks(ids, quick=args.quick)
    doc = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": args.quick,
        "total_seconds": round(time.time() - started, 1),
        "machine": machine,
        "machine_after": {"load_average": machine_info().get("load_average")},
        "runner_peak_rss_mib": round(self_peak_rss_mib(), 1),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print_table(results)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
