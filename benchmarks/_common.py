"""Shared pieces of the benchmark scripts: child-process measurement and output."""

from __future__ import annotations

import json
import multiprocessing
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def peak_rss_mib() -> float:
    """This process's own peak resident memory (VmHWM; ru_maxrss survives fork+exec)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _child(fn: Callable[..., Any], args: tuple, queue) -> None:
    start = time.perf_counter()
    extra = fn(*args)
    seconds = time.perf_counter() - start
    peak_mib = peak_rss_mib()
    queue.put({"seconds": seconds, "peak_rss_mib": peak_mib, **(extra or {})})


def measure_in_child(fn: Callable[..., Any], *args: Any) -> dict[str, Any]:
    """Run `fn(*args)` in a fresh spawned process: wall seconds, its peak RSS, and any dict it returns."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, args, queue))
    proc.start()
    import queue as queues

    while True:  # a child that dies puts nothing: do not wait for it forever
        try:
            result = queue.get(timeout=5)
            break
        except queues.Empty:
            if not proc.is_alive():
                raise RuntimeError(f"benchmark child failed with exit code {proc.exitcode}") from None
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"benchmark child failed with exit code {proc.exitcode}")
    return result


def print_results(title: str, rows: list[tuple[str, str]], record: dict[str, Any]) -> None:
    """A readable table, then one JSON line with every figure."""
    width = max(len(k) for k, _ in rows)
    print(f"\n{title}")
    print("-" * (width + 24))
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print("-" * (width + 24))
    print("JSON " + json.dumps(record, sort_keys=True))
