"""Memory budgets and plans: sizes, XLA costs, the jaxpr bound, the fit plan (issue 18)."""

import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longbrain_jax.engine.rundir import run_size
from longbrain_jax.fit import FitConfig, StageConfig
from longbrain_jax.fit.plan import block_program, plan_block
from longbrain_jax.inr import INRConfig
from longbrain_jax.memory import (
    MIN_BLOCK,
    Budget,
    Program,
    format_size,
    jaxpr_bound,
    parse_size,
    plan_batch,
    program_bytes,
)


def test_sizes_parse_with_units_and_reject_nonsense():
    assert parse_size("16G") == 16 * 1024**3
    assert parse_size("1.5GiB") == int(1.5 * 1024**3)
    assert parse_size("800M") == 800 * 1024**2
    assert parse_size("2GB") == 2 * 1000**3
    assert parse_size(12345) == 12345
    for bad in ("lots", "-3G", "0", "16Q"):
        with pytest.raises(ValueError, match="memory size"):
            parse_size(bad)
    assert format_size(3 * 1024**3) == "3.00 GiB"


def test_default_budget_is_a_share_of_host_memory():
    budget = Budget.resolve()
    assert budget.platform == "cpu" and budget.on_host and budget.devices == len(jax.local_devices())
    assert 0 < budget.bytes <= 0.6 * os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert Budget.resolve("2G").bytes == 2 * 1024**3
    assert budget.in_use() > 50 * 1024**2  # this process: python, jax, numpy


def _mlp_step(n: int) -> jax.stages.Traced:
    """A vmapped loss-and-gradient of a 3-layer MLP on 512 points per item."""

    def loss(w, x):
        h = x
        for layer in w:
            h = jnp.sin(h @ layer)
        return jnp.mean(h**2)

    w = [jax.ShapeDtypeStruct((32, 32), jnp.float32)] * 3
    x = jax.ShapeDtypeStruct((n, 512, 32), jnp.float32)
    return jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0))).trace(w, x)


def test_program_cost_is_affine_and_the_jaxpr_bound_is_above_xla():
    program = Program(_mlp_step, "test-mlp")
    exact, bound = program.cost(exact=True), program.cost(exact=False)
    assert exact.per_item > 0
    measured = program_bytes(_mlp_step(5))
    assert abs(exact(5) - measured) <= 0.1 * measured  # extrapolated from sizes 1 and 2
    for n in (1, 2, 5):
        assert jaxpr_bound(_mlp_step(n)) >= program_bytes(_mlp_step(n))
    assert bound(7) >= exact(7)


def test_a_phase_that_dominates_only_at_large_sizes_is_measured_not_extrapolated(monkeypatch):
    """XLA's peak is the largest of a program's phases: flat (a whole-scan phase) at small sizes,
    growing (a per-item phase) at large ones. A line through two small sizes would miss it."""
    import longbrain_jax.memory as memory

    def convex(n):
        return max(100_000, 10_000 * n)

    monkeypatch.setattr(memory, "compile_measured", lambda traced, resident=False: (convex(traced), 0))
    program = Program(lambda n: n, "test-convex")
    assert program.cost(exact=True) == (100_000, 0)  # flat between sizes 2 and 4
    assert program(1000) == convex(1000)  # asked beyond: measured there
    for n in (3, 20, 300, 999):
        assert program(n) >= convex(n)  # interpolated: never below a convex cost
    budget = Budget(5_000_000, "cpu", "test", devices=1)
    plan = plan_batch("test", "items", budget, 1000, lambda n, exact: program(n, exact) if exact else 10**9, in_use=0)
    assert convex(plan.sizes["items"]) <= budget.bytes and plan.sizes["items"] >= 0.9 * 500


def test_plan_takes_the_largest_fitting_batch_and_says_when_nothing_fits():
    budget = Budget(10_000, "cpu", "test", devices=1)
    cost = lambda n, exact: 1000 * n if exact else 2000 * n  # noqa: E731
    plan = plan_batch("test", "items", budget, 100, cost, in_use=0)
    assert plan.sizes == {"items": 10} and plan.exact and plan.predicted_bytes == 10_000
    plan = plan_batch("test", "items", budget, 4, cost, in_use=0)  # the bound fits: nothing measured exactly
    assert plan.sizes == {"items": 4} and not plan.exact
    plan = plan_batch("test", "items", budget, 100, cost, host_cost=lambda n: 1000 * n, multiple=4, in_use=0)
    assert plan.sizes == {"items": 4}  # 5 fit, rounded down to the multiple
    with pytest.raises(MemoryError, match="test: even 1 items need"):
        plan_batch("test", "items", budget, 100, cost, in_use=9_500)
    sharded = plan_batch("test", "items", Budget(10_000, "cpu", "test", devices=4), 100, cost, shards=4, in_use=0)
    assert sharded.sizes == {"items": 8}  # four CPU devices share host RAM; 9 or 10 would pad to 12


def test_memory_that_measuring_compilations_leave_resident_is_planned_for(monkeypatch):
    """Compiling a program to measure it leaves heap the allocator keeps (measured: 180-340 MiB for
    the registration program); the run starts from there, so the plan reads memory in use again."""
    import longbrain_jax.memory as memory

    resident = {"bytes": 1_000}

    def cost(n, exact):  # an exact cost is measured by compiling, which leaves 2_000 bytes resident
        if exact:
            resident["bytes"] = 3_000
        return 1_000 * n if exact else 2_000 * n

    monkeypatch.setattr(memory, "process_resident", lambda: resident["bytes"])
    plan = plan_batch("test", "items", Budget(10_000, "cpu", "test", devices=1), 100, cost)
    assert plan.exact and plan.in_use == 3_000 and plan.sizes == {"items": 7} and plan.predicted_bytes == 10_000


def test_a_plan_that_does_not_fit_releases_compiled_programs_first(monkeypatch):
    """Executables of finished work stay resident on the CPU (measured 250-600 MiB per 3D classifier
    method); a plan that would fail drops them and reads memory in use again before giving up."""
    import longbrain_jax.memory as memory

    resident = {"bytes": 9_500}
    monkeypatch.setattr(memory, "process_resident", lambda: resident["bytes"])
    monkeypatch.setattr(jax, "clear_caches", lambda: resident.update(bytes=2_000))
    cost = lambda n, exact: 1_000 * n  # noqa: E731
    plan = plan_batch("test", "items", Budget(10_000, "cpu", "test", devices=1), 100, cost)
    assert plan.in_use == 2_000 and plan.sizes == {"items": 8}
    resident["bytes"] = 9_500
    monkeypatch.setattr(jax, "clear_caches", lambda: None)  # nothing to release: the plan still fails
    with pytest.raises(MemoryError, match="test: even 1 items need"):
        plan_batch("test", "items", Budget(10_000, "cpu", "test", devices=1), 100, cost)


TINY_FIT = FitConfig(
    inr=INRConfig(ndim=2, width=32, stream_layers=2, combined_layers=1),
    shared=StageConfig(steps=2, learning_rate=1e-3, sample_fraction=0.05),
    finetune=StageConfig(steps=2, learning_rate=1e-3, sample_fraction=0.05),
    steps_per_call=2, checkpoint_every=2,
)  # fmt: skip


def test_scoring_block_is_planned_so_the_chunk_scores_within_the_budget():
    """Regression (issue 18): scoring reconstructed every scan of a chunk in fixed 32768-voxel
    blocks, all subjects at once (chunk x T x block x width), and was killed for memory on a
    real cohort. The block is now planned: a budget that the old block overruns gets one that fits."""
    shape, t_max, chunk = (64, 64), 5, 8
    program = block_program(TINY_FIT.inr, shape, t_max, chunk)
    whole, smallest, compiling = program(64 * 64, True), program(MIN_BLOCK, True), program.compile_bytes(True)  # old: min(32768, voxels)
    assert whole > smallest
    in_use = Budget.resolve().in_use()
    budget = Budget(in_use + compiling + (whole + smallest) // 2, "cpu", "test", devices=1)  # between the two
    plan = plan_block(TINY_FIT, shape, t_max, chunk, budget)
    assert in_use + whole + compiling > budget.bytes  # the fixed block would not have fitted
    block = plan.sizes["voxels per block"]
    assert MIN_BLOCK <= block < 64 * 64 and plan.predicted_bytes <= budget.bytes and plan.exact
    assert program(block, True) < whole


def test_a_resumed_run_keeps_the_sizes_it_planned(tmp_path):
    first = run_size(tmp_path / "work", "chunk", lambda: 8)
    again = run_size(tmp_path / "work", "chunk", lambda: 2)  # another machine, less memory
    assert first == again == 8 and run_size(tmp_path / "work", "pool", lambda: 3) == 3
    assert (tmp_path / "work" / "plan.json").is_file()


def test_rows_beyond_the_budget_go_to_disk_and_read_back_by_index(tmp_path):
    from longbrain_jax.engine.store import RowStore, rows

    data = np.arange(7 * 3 * 4, dtype=np.float32).reshape(7, 3, 4)
    build = lambda idx: data[idx]  # noqa: E731
    in_memory = rows(build, 7, (3, 4), Budget.resolve(), tmp_path, "x")
    assert isinstance(in_memory, np.ndarray)
    np.testing.assert_array_equal(in_memory, data)
    tight = Budget(Budget.resolve().in_use() + 200, "cpu", "test", devices=1)  # half the free part holds no 7 rows of 48 bytes
    stored = rows(build, 7, (3, 4), tight, tmp_path, "x", chunk=3)
    assert isinstance(stored, RowStore) and stored.shape == (7, 3, 4) and len(stored) == 7
    np.testing.assert_array_equal(stored[np.array([5, 0, 5])], data[[5, 0, 5]])
    np.testing.assert_array_equal(stored[2:4], data[2:4])
    np.testing.assert_array_equal(stored[6], data[6])
    with pytest.raises(ValueError, match="do not fit"):
        stored.write(6, data[:2])


def test_a_classifier_trains_the_same_on_rows_read_from_disk(tmp_path, key):
    from longbrain_jax.classifier import TrainConfig, train_classifier
    from longbrain_jax.engine.store import RowStore
    from longbrain_jax.weightspace.models import LinearClassifier

    rng = np.random.default_rng(0)
    x = rng.standard_normal((24, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    store = RowStore(tmp_path / "x.f32", 24, (5,))
    store.write(0, x)
    cfg = TrainConfig(epochs=3, batch_size=8, learning_rate=1e-2)
    a = train_classifier(LinearClassifier(), x, y, cfg, key)
    b = train_classifier(LinearClassifier(), store, y, cfg, key)
    chex.assert_trees_all_equal(a.variables, b.variables)


def test_convolution_patch_matrices_are_planned_on_the_cpu():
    """Eigen may pack a convolution's whole patch matrix (batch x output voxels x taps x input
    channels) in a buffer XLA's statistics miss: a 1.5 mm forecast died asking for 26 GB of it.
    The largest one of a program, its gradient's transposed convolutions included, is planned."""
    from longbrain_jax.memory import conv_workspace, program_bytes

    def conv(x, k):
        return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    x, k = jax.ShapeDtypeStruct((2, 20, 24, 3), jnp.float32), jax.ShapeDtypeStruct((3, 3, 3, 5), jnp.float32)
    forward = jax.jit(conv).trace(x, k)
    assert conv_workspace(forward.jaxpr.jaxpr) == 2 * 20 * 24 * 9 * 3 * 4
    # the input's gradient convolves the output's gradient (5 channels) with the flipped kernel
    gradient = jax.jit(jax.grad(lambda k, x: jnp.sum(conv(x, k) ** 2), argnums=(0, 1))).trace(k, x)
    assert conv_workspace(gradient.jaxpr.jaxpr) == 2 * 20 * 24 * 9 * 5 * 4
    stats = forward.lower().compile().memory_analysis()
    xla = stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes - stats.alias_size_in_bytes
    assert program_bytes(forward) == xla + conv_workspace(forward.jaxpr.jaxpr)

