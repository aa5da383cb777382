"""Test setup: four CPU devices (so sharding is tested for real), strict dtype promotion (a
Python float or an int array meeting a float32 array must be cast explicitly; optax's updates run
under standard promotion, `engine.training.optimiser_update`), one compilation cache per run.
Rank promotion stays numpy's: broadcasting a (3,) vector over a (..., 3) field is the idiom
of every deformation in the package.

XLA compiles the tests' programs with its classic CPU emitters and LLVM's optimisations off
(`TEST_XLA_FLAGS`, and `JAX_DISABLE_MOST_OPTIMIZATIONS=1`, which takes every compilation to
level 0 and also disables LLVM's expensive passes): most tests spend their time compiling
programs that then run a few steps (level 0 for every test halved the README command on 2
cores when it was measured: 1068 s -> 548 and 599 s, CPU 1979 s -> 992 and 1085 s). The tests
marked `optimised` spend it running them instead (whole commands, training loops): the flag
is off for them, in this process and in the environment of what they start, so they compile
at `TEST_XLA_FLAGS`' level 1. The quick demo alone took 169 s at level 0, 101 s at 1 and 123 s at XLA's default
level; the marked tests side by side, 245 s at level 1 against 282 s at 0 (README). The flag is
not part of jit's cache key: a program a worker already compiled is reused at the level it was
compiled at. This changes how fast code runs, not what it computes beyond float32 reduction
order; the benchmarks and the demo run under XLA's defaults. A caller's own `XLA_FLAGS` and
`JAX_DISABLE_MOST_OPTIMIZATIONS` are kept (the latter at 1 forces level 0 whatever `XLA_FLAGS`
says: `XLA_FLAGS= JAX_DISABLE_MOST_OPTIMIZATIONS=0` tests under XLA's defaults); older jaxlib
releases, on which they were not measured, get neither."""

import os
import shutil
import tempfile
import uuid
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

TEST_XLA_FLAGS = "--xla_backend_optimization_level=1 --xla_cpu_use_fusion_emitters=false"
if tuple(int(p) for p in version("jaxlib").split(".")[:2]) >= (0, 10):  # before the backend starts; subprocesses inherit them
    os.environ.setdefault("XLA_FLAGS", TEST_XLA_FLAGS)
    os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")  # level 0, but in the `optimised` tests

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_numpy_dtype_promotion", "strict")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def pytest_configure(config):
    """JAX's persistent compilation cache in a directory of this run, shared by its pytest-xdist workers
    (which get the run's id from the controller) and removed at the end: a program that one worker
    compiled, or that one worker compiles again through a fresh `jax.jit` wrapper (every `Simulator`
    instance jits its own chunk program), is read back instead of compiled. Each run starts cold,
    as CI does."""
    worker = getattr(config, "workerinput", None)
    if worker is not None:
        run = worker["testrunuid"]
    else:
        if getattr(config.option, "testrunuid", False) is None:  # pytest-xdist's option, before it makes workers
            config.option.testrunuid = uuid.uuid4().hex
        run = getattr(config.option, "testrunuid", None) or uuid.uuid4().hex
    config.jax_cache_dir = Path(tempfile.gettempdir()) / f"longbrain-jax-test-compilation-cache-{run}"
    jax.config.update("jax_compilation_cache_dir", str(config.jax_cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)


def pytest_unconfigure(config):
    if getattr(config, "workerinput", None) is None:
        shutil.rmtree(config.jax_cache_dir, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """The `slow` tests (minutes each) first, so that pytest-xdist's workers do not end on one of them
    alone. pyproject.toml's `--dist loadgroup --no-loadscope-reorder` hands a worker one test (or one
    `xdist_group`) at a time in this order, so the slow ones spread over both workers; the tests that
    share a costly module fixture form one group, built once rather than once per worker."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def _optimisation_level(request, monkeypatch):
    """An `optimised` test compiles at `XLA_FLAGS`' level, and so do the processes it starts (see the module docstring)."""
    if request.node.get_closest_marker("optimised") is None or not jax.config.values["jax_disable_most_optimizations"]:
        yield
        return
    monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "0")
    jax.config.update("jax_disable_most_optimizations", False)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", True)


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def dataset(tmp_path):
    """A small BIDS dataset (3 subjects with 3, 2 and 1 scans) and the cohort written to it."""
    from longbrain_jax.cohort import Cohort
    from longbrain_jax.io import write_bids
    from tests.helpers import make_subject

    cohort = Cohort.from_subjects([make_subject(i, n) for i, n in enumerate([3, 2, 1])])
    return write_bids(cohort, tmp_path / "ds"), cohort
