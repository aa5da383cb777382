"""Shared pieces of the benchmark scripts: child-process measurement and output."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import time
from collections.abc import Callable
from typing import Any


def peak_rss_mib() -> float:
    """This process's own peak resident memory (MiB): VmHWM, kept across the restarts of the high-water
    mark that the package's memory plans make when they measure a compilation (`memory.process_peak`)."""
    from longbrain_jax.memory import process_peak

    return process_peak() / 2**20


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


def registration_variant(base, spec: str):
    """`base` (a `RegistrationConfig`) with the settings that `spec` names changed: "default" (or "")
    for `base` itself, else "name=value" settings joined by "+" (e.g. "w0=10+width=64"), each name one of
    w0, width, hidden_layers, lr, steps, patches, patch_size, spatial, temporal, monotonic, curvature."""
    r = dataclasses.replace
    setters = {
        "w0": lambda c, v: r(c, network=r(c.network, w0=float(v))),
        "width": lambda c, v: r(c, network=r(c.network, width=int(v))),
        "hidden_layers": lambda c, v: r(c, network=r(c.network, hidden_layers=int(v))),
        "lr": lambda c, v: r(c, learning_rate=float(v)),
        "steps": lambda c, v: r(c, steps=int(v)),
        "patches": lambda c, v: r(c, patches=int(v)),
        "patch_size": lambda c, v: r(c, patch_size=int(v)),
        **{term: (lambda c, v, term=term: r(c, loss=r(c.loss, **{term: float(v)}))) for term in ("spatial", "temporal", "monotonic", "curvature")},
    }
    cfg = base
    for setting in filter(None, spec.split("+") if spec != "default" else []):
        name, _, value = setting.partition("=")
        if name not in setters or not value:
            raise SystemExit(f"unknown variant {spec!r}: use default or {'/'.join(sorted(setters))}=VALUE, joined by +")
        cfg = setters[name](cfg, value)
    return cfg


def compiled_seconds(fn: Callable[..., Any], *args: Any, repeats: int) -> float:
    """Median wall seconds of `jax.jit(fn)(*args)` over `repeats` runs, after compiling it and running it once."""
    import jax

    compiled = jax.jit(fn).lower(*args).compile()
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]
