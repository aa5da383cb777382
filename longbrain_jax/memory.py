"""Memory budgets, and the batch sizes every stage plans from them (the base layer: the
simulator and the readers plan with it too).

Every stage that batches subjects, scans or voxels picks its chunk and block sizes
here, from a `Budget` (`--memory-budget`; by default a safe share of the memory of
the device it runs on), so a cohort or an image of any size runs in bounded memory.

**The cost model.** The predicted peak of a stage is

    in use when the plan is made          (this process's resident memory on the CPU;
                                            the device's bytes in use on an accelerator)
  + host arrays the stage allocates        (stated by each stage: the chunk of scans it
                                            reads, the next chunk read ahead, ...)
  + the compiled program's buffers         (XLA's own buffer assignment of the program at
                                            that size: arguments + outputs + temporaries
                                            - aliased, `jax.stages.Compiled.memory_analysis()`;
                                            on the CPU plus the largest convolution's patch
                                            matrix, which Eigen may allocate: `conv_workspace`)
  + compiling the program                  (on the CPU: the host memory XLA's compiler took,
                                            measured while the plan compiles; a fixed
                                            `COMPILE_ALLOWANCE` where nothing was compiled)

Freed heap memory is handed back to the system at phase boundaries (`release_memory`), so
resident memory follows what is alive rather than what glibc kept.

A vmapped or blocked program's buffers are affine in its batch size (each subject or
voxel block carries the same arrays), so they are measured at two small sizes and
extrapolated (`Program.cost`); no size is guessed from a formula that XLA's fusion
decisions could invalidate. Compiling to measure costs seconds, so a plan first checks a
cheap upper bound read off the program's jaxpr (`jaxpr_bound`): when even the bound fits
at the largest sizes (small cohorts, small images), nothing is compiled to plan. On the
CPU every local device shares host RAM, so a program sharded over several CPU devices
costs its per-device buffers once per device.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import logging
import math
import os
import re
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import NamedTuple

import jax
import jax.extend
import numpy as np

logger = logging.getLogger("longbrain_jax.memory")

GiB = 1024**3
MiB = 1024**2
MIN_BLOCK, MAX_BLOCK = 1024, 65536  # voxels per block: the range voxel-blocked programs plan within
CPU_SHARE = 0.6  # of host RAM (or the container's limit): the rest is for the OS, page cache and other work
ACCELERATOR_SHARE = 0.9  # of the allocator's limit, which XLA already keeps below the device's memory

_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": MiB, "mb": 1000**2, "mib": MiB,
          "g": GiB, "gb": 1000**3, "gib": GiB, "t": 1024**4, "tb": 1000**4, "tib": 1024**4}  # fmt: skip


def parse_size(text: str | int | float) -> int:
    """Bytes from `16G`, `1.5GiB`, `800M`, `2e9` or a number of bytes (k/M/G/T alone are binary)."""
    if isinstance(text, int | float):
        value = int(text)
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
        if match is None or match.group(2).lower() not in _UNITS:
            raise ValueError(f"memory size {text!r} is not a number with an optional unit (e.g. 16G, 1.5GiB, 800M)")
        value = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if value <= 0:
        raise ValueError(f"memory size must be positive, got {text!r}")
    return value


def format_size(n: float) -> str:
    """`n` bytes as `3.2 GiB` / `512 MiB`."""
    return f"{n / GiB:.2f} GiB" if abs(n) >= GiB else f"{n / MiB:.0f} MiB"


# -- what the machine has ------------------------------------------------------------------
def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def host_memory_total() -> int:
    """Bytes of RAM this process may use: physical RAM, or the container's (cgroup) limit if lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit in (_read_int("/sys/fs/cgroup/memory.max"), _read_int("/sys/fs/cgroup/memory/memory.limit_in_bytes")):
        if limit is not None and 0 < limit < total:
            total = limit
    return total


def process_resident() -> int:
    """This process's resident memory now (bytes)."""
    statm = _read_statm()
    if statm is not None:
        return statm
    import resource  # no /proc (macOS): the peak is an upper bound of the current

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if os.uname().sysname == "Darwin" else peak * 1024


_PEAK_BEFORE_RESETS = 0


def _high_water_mark() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return process_resident()


def process_peak() -> int:
    """This process's peak resident memory so far (bytes; VmHWM on Linux, across the resets
    that measuring a compilation makes)."""
    return max(_PEAK_BEFORE_RESETS, _high_water_mark())


def _reset_peak() -> bool:
    """Restart the kernel's high-water mark from the current resident memory (Linux); False if it cannot."""
    global _PEAK_BEFORE_RESETS
    _PEAK_BEFORE_RESETS = process_peak()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def release_memory() -> None:
    """Hand freed heap memory back to the operating system (glibc's `malloc_trim`), so resident
    memory follows what is alive: XLA's compiler and runtime free large blocks that glibc would
    otherwise keep. A no-op where glibc is absent."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def release_programs(stage: str, in_use: int, budget: Budget) -> int:
    """Drop every compiled program JAX keeps for reuse (`jax.clear_caches`) and return what is in
    use after. On the CPU the executables of finished work stay resident: measured 250-600 MiB after
    a cohort fit and each classifier method of a 3D run, enough to fail a tight budget. Called only
    where a plan would otherwise fail: programs still needed compile again."""
    import gc

    jax.clear_caches()
    gc.collect()
    release_memory()
    after = budget.in_use()
    logger.info("%s: released compiled programs of earlier work: %s -> %s in use", stage, format_size(in_use), format_size(after))
    return after


def _read_statm() -> int | None:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return None


def _accelerator_stats(device) -> dict | None:
    if device.platform == "cpu":
        return None
    try:
        return device.memory_stats()
    except Exception:  # some backends do not report
        return None


@dataclasses.dataclass(frozen=True)
class Budget:
    """How much memory a run may use.

    - `bytes`: the budget.
    - `platform`: "cpu" (host RAM: data and compiled programs share it) or the
      accelerator's platform (the budget is per device; host arrays are small there).
    - `source`: how it was chosen (shown in logs).
    - `devices`: local devices that draw on this memory (all of them on the CPU).
    """

    bytes: int
    platform: str
    source: str
    devices: int = 1

    @classmethod
    def resolve(cls, size: str | int | None = None, share: float | None = None) -> Budget:
        """A budget of `size` (e.g. "16G"); without one, the budget a caller made current
        (`Budget.active`), else a share of the first device's memory."""
        if size is None and share is None and (current := _CURRENT.get()) is not None:
            return current
        device = jax.local_devices()[0]
        devices = len(jax.local_devices()) if device.platform == "cpu" else 1
        stats = _accelerator_stats(device)
        if size is not None:
            return cls(parse_size(size), device.platform, f"--memory-budget {size}", devices)
        if stats is not None and stats.get("bytes_limit"):
            share = ACCELERATOR_SHARE if share is None else share
            limit = int(stats["bytes_limit"])
            return cls(int(share * limit), device.platform, f"{share:.0%} of {format_size(limit)} on {device.device_kind}", 1)
        return cls.of_host(share)

    @classmethod
    def of_host(cls, share: float | None = None) -> Budget:
        """A share (default `CPU_SHARE`) of the host RAM this process may use."""
        share = CPU_SHARE if share is None else share
        total = host_memory_total()
        return cls(int(share * total), "cpu", f"{share:.0%} of {format_size(total)} host RAM", len(jax.local_devices(backend="cpu")))

    @contextlib.contextmanager
    def active(self):
        """Make this the budget every `Budget.resolve()` inside the block returns (a run's
        budget reaches the figures and reconstructions it makes without being passed down)."""
        token = _CURRENT.set(self)
        try:
            yield self
        finally:
            _CURRENT.reset(token)

    def in_use(self) -> int:
        """Memory already in use on what this budget covers."""
        if self.platform == "cpu":
            return process_resident()
        stats = _accelerator_stats(jax.local_devices()[0]) or {}
        return int(stats.get("bytes_in_use", 0))

    def host(self) -> Budget:
        """The budget of host RAM: this one on the CPU; on an accelerator, the default share of host RAM."""
        return self if self.platform == "cpu" else Budget.of_host()

    @property
    def on_host(self) -> bool:
        """True when the compiled programs run in host RAM (so host arrays and buffers add up)."""
        return self.platform == "cpu"


_CURRENT: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("longbrain_budget", default=None)


def within_budget(fn: Callable) -> Callable:
    """Run `fn` (which takes a `budget=` keyword) with its budget resolved and made current
    (`Budget.active`), so everything it calls plans from the same budget."""

    @functools.wraps(fn)
    def wrapper(*args, budget: Budget | None = None, **kwargs):
        budget = budget or Budget.resolve()
        with budget.active():
            return fn(*args, budget=budget, **kwargs)

    return wrapper


# -- what a program costs ------------------------------------------------------------------------
def _aval_bytes(aval) -> int:
    shape, dtype = getattr(aval, "shape", None), getattr(aval, "dtype", None)
    if shape is None or dtype is None:
        return 0
    try:
        itemsize = np.dtype(dtype).itemsize
    except TypeError:  # PRNG key arrays and other extended dtypes
        itemsize = getattr(dtype, "itemsize", 8)
    return math.prod(shape) * itemsize


def _sub_jaxprs(value):
    if isinstance(value, jax.extend.core.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, jax.extend.core.Jaxpr):
        yield value
    elif isinstance(value, tuple | list):
        for v in value:
            yield from _sub_jaxprs(v)


def _live_peak(jaxpr) -> int:
    """Peak bytes of values alive at once when `jaxpr`'s equations run in order, each value
    freed after its last use (a sub-program's own peak counted while its equation runs)."""
    var = jax.extend.core.Var
    last_use = {v: i for i, eqn in enumerate(jaxpr.eqns) for v in eqn.invars if isinstance(v, var)}
    last_use |= {v: len(jaxpr.eqns) for v in jaxpr.outvars if isinstance(v, var)}
    live = {v: _aval_bytes(v.aval) for v in jaxpr.invars}
    now = peak = sum(live.values())
    for i, eqn in enumerate(jaxpr.eqns):
        inner = max((_live_peak(sub) for value in eqn.params.values() for sub in _sub_jaxprs(value)), default=0)
        out = {v: _aval_bytes(v.aval) for v in eqn.outvars}
        peak = max(peak, now + sum(out.values()) + inner)
        live |= out
        now += sum(out.values())
        for v in {v for v in eqn.invars if isinstance(v, var)} | set(out):
            if last_use.get(v, -1) <= i and v in live:
                now -= live.pop(v)
    return peak


def conv_workspace(jaxpr) -> int:
    """Bytes of the largest convolution's patch matrix in `jaxpr` (sub-programs included): batch
    x output voxels x kernel taps x input channels, at the input's dtype.

    XLA:CPU runs convolutions through Eigen, which at some sizes packs the whole patch matrix
    into one buffer that XLA's buffer statistics do not count. Measured with jaxlib 0.10 on 2
    cores, a 3x3x3 convolution on the 1.5 mm grid (112 x 140 x 120): batch 2 x 16 channels ran
    in 0.9 GiB, batch 3 x 16 and batch 1 x 35 or 40 channels failed under a 6 GB address-space
    limit (1 x 36 did not), and a 1.5 mm forecast died asking for 26.0 GB, this matrix at batch
    x channels 128. Which sizes pack is Eigen's choice, so on the CPU plans count the largest
    such matrix (convolutions run one at a time). Not counted: input-dilated convolutions (the
    gradients of strided ones), which did not pack where they would have needed 57 GiB (the
    1.5 mm autoencoder's discriminator, 4 scans per batch, trained in 14.8 GiB).
    """
    largest = 0
    for eqn in jaxpr.eqns:
        for value in eqn.params.values():
            for sub in _sub_jaxprs(value):
                largest = max(largest, conv_workspace(sub))
        if eqn.primitive.name != "conv_general_dilated" or any(d != 1 for d in eqn.params["lhs_dilation"]):
            continue
        lhs, rhs = (v.aval for v in eqn.invars)
        dims = eqn.params["dimension_numbers"]
        taps = math.prod(rhs.shape[d] for d in dims.rhs_spec[2:])
        voxels = math.prod(eqn.outvars[0].aval.shape[d] for d in dims.out_spec[2:])
        channels = rhs.shape[dims.rhs_spec[1]] * eqn.params["feature_group_count"]
        largest = max(largest, lhs.shape[dims.lhs_spec[0]] * voxels * taps * channels * np.dtype(lhs.dtype).itemsize)
    return largest


def host_workspace(traced: jax.stages.Traced) -> int:
    """Memory a program takes at run time beside its buffers: `conv_workspace` on the CPU, else 0."""
    return conv_workspace(traced.jaxpr.jaxpr) if jax.default_backend() == "cpu" else 0


BOUND_SAFETY = 1.5


def jaxpr_bound(traced: jax.stages.Traced) -> int:
    """An upper bound of a program's buffers from its jaxpr alone (no compilation).

    `BOUND_SAFETY` times the peak of values alive at once when the jaxpr runs in its own
    order, every value freed after its last use. XLA fuses, reorders to save memory and
    reuses buffers, so it holds less: measured 1.3x-2.8x less on the project's training
    and scoring programs, before the safety factor (`tests/test_memory.py` checks the bound
    against XLA on several programs).
    """
    return int(BOUND_SAFETY * _live_peak(traced.jaxpr.jaxpr)) + host_workspace(traced)


#: What compiling one program may take on the host when it was not measured (the cheap path):
#: XLA:CPU took 150-350 MiB for the project's training programs (`tests/test_memory.py`).
COMPILE_ALLOWANCE = 512 * MiB


def program_bytes(traced: jax.stages.Traced) -> int:
    """Bytes of one device's buffers for a traced program, from XLA's buffer assignment:
    arguments + outputs + temporaries - aliased (`Compiled.memory_analysis()`), plus `host_workspace`."""
    return compile_measured(traced)[0]


def compile_measured(traced: jax.stages.Traced, resident_arguments: bool = False) -> tuple[int, int]:
    """(buffers, host bytes the compilation itself took at its peak) of a traced program;
    without the arguments if they are `resident_arguments` (already in memory, counted there)."""
    release_memory()
    before, reset = process_resident(), _reset_peak()
    compiled = traced.lower().compile()
    footprint = max(0, _high_water_mark() - before) if reset else COMPILE_ALLOWANCE
    stats = compiled.memory_analysis()
    del compiled
    release_memory()
    logger.debug("compiled %s: footprint %s (resident before %s)", getattr(traced, "fun_name", "a program"), format_size(footprint), format_size(before))
    if stats is None:  # a backend without buffer statistics
        return jaxpr_bound(traced), footprint
    arguments = 0 if resident_arguments else stats.argument_size_in_bytes
    buffers = arguments + stats.output_size_in_bytes + stats.temp_size_in_bytes - stats.alias_size_in_bytes
    return int(buffers + host_workspace(traced)), footprint


class Cost(NamedTuple):
    """An affine cost in a batch size n: `fixed + per_item * n` bytes."""

    fixed: int
    per_item: int

    def __call__(self, n: int) -> int:
        return int(self.fixed + self.per_item * n)


_MEASURED: dict = {}
_COMPILE: dict = {}
_POINTS: dict = {}  # memo -> {batch size: XLA's buffers at that size}
_BOUNDS: dict = {}  # memo -> {batch size: the jaxpr bound at that size}


@dataclasses.dataclass(frozen=True)
class Program:
    """A jitted program at batch size n: `trace(n)` returns `jitted.trace(...)` with abstract
    arguments (`jax.ShapeDtypeStruct`), so no data is needed.

    `key` names the program and everything static about it (configs, shapes but the batch
    axis): costs are measured once per process and key. `sizes`: the two batch sizes the
    affine cost is measured at (not 1: XLA squeezes a vmapped axis of one, which costs less
    than one item of a larger batch). `resident_arguments`: the program runs on arrays
    already in memory (counted in what is in use), so only its outputs and temporaries count.

    A program's buffers are not always affine in n: XLA's peak is the largest of its phases
    (e.g. scoring's per-block activations against its whole-scan SSIM), each affine, so the
    cost is convex and a line through two small sizes can miss a phase that only dominates
    at large n. So an exact cost asked at a size beyond those measured is measured there
    too, and sizes in between are interpolated piecewise-linearly through the measured
    points, which for a convex cost never underestimates.
    """

    trace: Callable[[int], jax.stages.Traced]
    key: Hashable
    sizes: tuple[int, int] = (2, 4)
    resident_arguments: bool = False

    def _memo(self, exact: bool) -> tuple:
        return (self.key, self.sizes, self.resident_arguments, exact)

    def _measure(self, n: int) -> int:
        points = _POINTS.setdefault(self._memo(True), {})
        if n not in points:
            buffers, footprint = compile_measured(self.trace(n), self.resident_arguments)
            points[n] = buffers
            _COMPILE[self._memo(True)] = max(_COMPILE.get(self._memo(True), 0), footprint)
        return points[n]

    def cost(self, exact: bool = True) -> Cost:
        """The affine cost through the two `sizes`: XLA's buffers (`exact`, compiles twice) or
        the jaxpr bound (traces twice)."""
        memo = self._memo(exact)
        if memo not in _MEASURED:
            if exact:
                cost_a, cost_b = (self._measure(n) for n in self.sizes)
            else:  # the bound counts arguments: an overestimate where they are resident
                cost_a, cost_b = (self._bound(n) for n in self.sizes)
            (a, b) = self.sizes
            per_item = max(0, (cost_b - cost_a) // (b - a))
            _MEASURED[memo] = Cost(max(0, cost_a - per_item * a), per_item)
        return _MEASURED[memo]

    def _bound(self, n: int) -> int:
        """`jaxpr_bound` at batch n, from one trace (tracing costs the same at any n, and a
        large ODE or network program takes seconds to trace)."""
        bounds = _BOUNDS.setdefault(self._memo(False), {})
        if n not in bounds:
            bounds[n] = jaxpr_bound(self.trace(n))
        return bounds[n]

    def compile_bytes(self, exact: bool = True) -> int:
        """Host memory compiling the program takes: measured with the exact cost, else `COMPILE_ALLOWANCE`."""
        if not exact:
            return COMPILE_ALLOWANCE
        self.cost(True)
        return _COMPILE[self._memo(True)]

    def __call__(self, n: int, exact: bool = True) -> int:
        if not exact:  # the bound where it is asked: one trace, no line through two
            return self._bound(n)
        line = self.cost(exact)
        if n > max(_POINTS[self._memo(True)]):
            self._measure(n)  # beyond what was measured: measure there (see the class docstring)
        points = sorted(_POINTS[self._memo(True)].items())
        if n <= points[0][0]:
            return max(0, line(n))
        for (a, cost_a), (b, cost_b) in zip(points, points[1:], strict=False):
            if n <= b:
                return int(cost_a + (cost_b - cost_a) * (n - a) / (b - a))
        return points[-1][1]


# -- plans -------------------------------------------------------------------------------------
#: Plan every batch from XLA's buffers even where the cheap bound fits (`benchmarks/memory.py`
#: sets it to compare predictions with measurements; a bound is an upper limit, not a prediction).
PLAN_EXACTLY = False

@dataclasses.dataclass(frozen=True)
class Plan:
    """The sizes a stage chose and what it expects them to cost.

    - `stage`: e.g. "fit: fine-tune".
    - `sizes`: the chosen sizes, e.g. {"subjects per chunk": 16}.
    - `predicted_bytes`: predicted peak of the process (or device) with those sizes.
    - `budget`: the budget it was planned under.
    - `in_use`: memory in use when planned (part of the prediction).
    - `exact`: True when the programs' buffers are XLA's; False when a cheap upper bound
      (`jaxpr_bound`) already fitted at the largest sizes, so nothing was compiled to plan.
    """

    stage: str
    sizes: dict[str, int]
    predicted_bytes: int
    budget: Budget
    in_use: int
    exact: bool = True

    def describe(self) -> str:
        sizes = ", ".join(f"{v} {k}" for k, v in self.sizes.items())
        peak = f"predicted peak {format_size(self.predicted_bytes)}" if self.exact else f"peak at most {format_size(self.predicted_bytes)}"
        return f"{self.stage}: {sizes}; {peak} of a {format_size(self.budget.bytes)} budget ({self.budget.source})"

    def record(self) -> dict:
        return {"stage": self.stage, "sizes": dict(self.sizes), "predicted_bytes": self.predicted_bytes,
                "budget_bytes": self.budget.bytes, "in_use_bytes": self.in_use, "exact": self.exact}  # fmt: skip


def plan_batch(
    stage: str,
    what: str,
    budget: Budget,
    upper: int,
    device_cost: Callable[[int, bool], int],
    host_cost: Callable[[int], int] = lambda n: 0,
    multiple: int = 1,
    shards: int = 1,
    in_use: int | None = None,
    compile_bytes: Callable[[bool], int] | None = None,
) -> Plan:
    """The largest batch n <= `upper` (a multiple of `multiple` where it can be) that fits `budget`.

    **Arguments:**

    - `stage`, `what`: names for the plan and its log line ("fit: fine-tune", "subjects per chunk").
    - `budget`: see `Budget`.
    - `upper`: the most the stage can use (e.g. the cohort's size).
    - `device_cost(n, exact)`: one device's program bytes at batch n, exact (XLA) or a
      cheap upper bound (see `Program`).
    - `host_cost(n)`: host arrays the stage allocates at batch n.
    - `multiple`: preferred granularity (e.g. the device count, so a chunk shards evenly).
    - `shards`: devices the batch is split over; each holds `device_cost` of its share.
      On the CPU this host's devices all draw on its RAM; on an accelerator the budget
      is one device's.
    - `in_use`: memory already in use (default: measured now).
    - `compile_bytes(exact)`: host memory compiling the stage's program takes (default:
      `device_cost.compile_bytes` for a `Program`, else 0). On the CPU it adds to the peak.

    If the bound fits at `upper`, nothing is compiled; otherwise the largest fitting n is
    searched with exact costs, and memory in use is read again after the compilations
    that measured them (measured: compiling a registration program left 180-340 MiB
    resident that the run then starts from). If even a batch of `multiple` (or 1) does not fit,
    the compiled programs of earlier work are released (`release_programs`, host budgets whose
    memory in use is measured here) and memory in use read again; if it still does not fit,
    raises `MemoryError` naming the stage.
    """
    logger.debug("%s: planning %s", stage, what, extra={"planning": stage})  # where the plan's own compilations start
    measure_in_use = in_use is None
    in_use = budget.in_use() if measure_in_use else in_use
    if compile_bytes is None:
        compile_bytes = getattr(device_cost, "compile_bytes", lambda exact: 0)

    def peak(n: int, exact: bool) -> int:
        program = device_cost(-(-n // shards), exact) * (min(shards, budget.devices) if budget.on_host else 1)
        return in_use + program + (host_cost(n) + compile_bytes(exact) if budget.on_host else 0)

    upper = max(1, upper)
    bound = peak(upper, False)
    if bound <= budget.bytes and not PLAN_EXACTLY:
        plan = Plan(stage, {what: upper}, bound, budget, in_use, exact=False)
        logger.info(plan.describe(), extra={"plan": plan})
        return plan
    smallest = min(multiple, upper)
    for n in (smallest, upper):  # measure the program where the search needs it (compiles), so the search interpolates
        peak(n, True)
    if measure_in_use:  # what compiling left resident stays for the run (freed heap the allocator keeps): count it
        in_use = max(in_use, budget.in_use())
    if peak(smallest, True) > budget.bytes and measure_in_use and budget.on_host:
        in_use = release_programs(stage, in_use, budget)
    if peak(smallest, True) > budget.bytes:
        raise MemoryError(
            f"{stage}: even {smallest} {what} need {format_size(peak(smallest, True))} "
            f"({format_size(in_use)} already in use), more than the {format_size(budget.bytes)} budget ({budget.source}); "
            "raise --memory-budget or lower the sizes (network width, image resolution)"
        )
    lo, hi = smallest, upper if peak(upper, True) <= budget.bytes else upper - 1  # peak(lo) fits; the largest n that fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if peak(mid, True) <= budget.bytes:
            lo = mid
        else:
            hi = mid - 1
    n = lo if lo < multiple or lo == upper else lo - lo % multiple
    plan = Plan(stage, {what: n}, peak(n, True), budget, in_use)
    logger.info(plan.describe(), extra={"plan": plan})
    return plan


def plan_host(stage: str, what: str, budget: Budget, upper: int, per_item: int, fixed: int = 0, in_use: int | None = None) -> Plan:
    """The largest batch of items (subjects, scans) whose host arrays, `fixed + per_item * n` bytes, fit the host budget
    beside `in_use` (default: measured; pass the reading a budget share was made from, so the two agree)."""
    return plan_batch(stage, what, budget.host(), upper, lambda n, exact: 0, Cost(fixed, per_item), in_use=in_use, compile_bytes=lambda exact: 0)


def plan_host_share(stage: str, what: str, budget: Budget, share: float, upper: int, per_item: int, fixed: int = 0) -> Plan:
    """`plan_host` inside `share` of the host budget left free beside memory in use and `fixed`;
    the rest is left to the programs that then run on what the items hold (each plans its own
    sizes from what is left). One reading of memory in use serves the share and the plan, so
    the plan never reaches past the budget."""
    host = budget.host()
    in_use = host.in_use()
    room = int(share * max(host.bytes - in_use - fixed, 0))
    part = Budget(in_use + fixed + room, host.platform, f"{share:.0%} of the free part of {host.source}", host.devices)
    return plan_host(stage, what, part, upper, per_item, fixed, in_use)


def agree(value: int) -> int:
    """The smallest of `value` over every process of a multi-host run (sizes must agree; each host plans for its own memory)."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return int(min(multihost_utils.process_allgather(jax.numpy.int32(value))))
