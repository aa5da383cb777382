"""The shared training step (`engine.training`): keys, the divergence guard, and blocks of steps."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from longbrain_jax.engine.training import (
    all_finite,
    block_steps,
    guarded_update,
    init_state,
    padded_scans,
    repeat_steps,
    scan_slots,
    step_key,
    train_chunk_steps,
    train_steps,
    uses_convolution,
)

TX = optax.adam(0.1)


def _loss(params, key, step):
    """A quadratic with a noisy target drawn from the step's key (so the keys matter)."""
    target = 1.0 + 0.1 * jax.random.normal(key, params.shape)
    value = jnp.sum((params - target) ** 2)
    return value, value


def test_a_traced_block_length_runs_exactly_the_steps_of_a_static_one():
    state = init_state(jnp.zeros(3), TX)
    static, losses = jax.jit(lambda s: train_steps(s, _loss, TX, jnp.int32(0), "shared", jnp.int32(0), jnp.int32(0), 4))(state)
    run = jax.jit(lambda s, k: train_steps(s, _loss, TX, jnp.int32(0), "shared", jnp.int32(0), jnp.int32(0), k, max_steps=6))
    traced, rows = run(state, jnp.int32(4))
    np.testing.assert_allclose(traced.params, static.params, rtol=1e-6)
    np.testing.assert_allclose(rows[:4], losses, rtol=1e-6)
    assert rows.shape == (6,) and np.all(np.asarray(rows[4:]) == 0)
    # two blocks of 2 through the same program end where one block of 4 does
    half, _ = run(state, jnp.int32(2))
    both, _ = jax.jit(lambda s: train_steps(s, _loss, TX, jnp.int32(0), "shared", jnp.int32(0), jnp.int32(2), jnp.int32(2), max_steps=6))(half)
    np.testing.assert_allclose(both.params, static.params, rtol=1e-6)
    assert run._cache_size() == 1  # one compiled program for every block length


def test_blocks_of_one_step_run_without_a_loop_and_end_where_a_block_of_four_does():
    state = init_state(jnp.zeros(3), TX)
    four, losses = train_steps(state, _loss, TX, jnp.int32(0), "shared", jnp.int32(0), jnp.int32(0), 4)
    one = jax.jit(lambda s, first, k: train_steps(s, _loss, TX, jnp.int32(0), "shared", jnp.int32(0), first, k, max_steps=1))
    assert "while" not in str(jax.make_jaxpr(one)(state, jnp.int32(0), jnp.int32(1)))  # the CPU's convolutions slow down in loops
    s, rows = state, []
    for i in range(4):
        s, row = one(s, jnp.int32(i), jnp.int32(1))
        rows.append(row)
    np.testing.assert_allclose(s.params, four.params, rtol=1e-6)
    np.testing.assert_allclose(np.concatenate(rows), losses, rtol=1e-6)
    same, row = one(s, jnp.int32(4), jnp.int32(0))  # a block of no steps changes nothing
    chex.assert_trees_all_equal(same, s)
    assert row.shape == (1,) and float(row[0]) == 0.0
    static, _ = train_steps(state, _loss, TX, jnp.int32(0), "shared", jnp.int32(0), jnp.int32(0), 1)
    assert "while" not in str(jax.make_jaxpr(lambda s: train_steps(s, _loss, TX, jnp.int32(0), "shared", jnp.int32(0), jnp.int32(0), 1))(state))
    np.testing.assert_allclose(static.params, one(state, jnp.int32(0), jnp.int32(1))[0].params, rtol=1e-6)


def test_block_steps_runs_convolutions_one_step_per_call_on_the_cpu():
    assert uses_convolution(lambda x: jax.lax.conv(x, jnp.ones((1, 1, 3, 3)), (1, 1), "SAME"), jnp.ones((1, 1, 5, 5)))
    assert not uses_convolution(lambda x: x @ x, jnp.ones((3, 3)))
    assert block_steps(50, convolutional=False) == 50
    assert block_steps(50, convolutional=True) == (1 if jax.default_backend() == "cpu" else 50)


def test_chunk_steps_equal_each_model_alone_and_keys_follow_the_subject():
    states = jax.vmap(lambda p: init_state(p, TX))(jnp.zeros((3, 2)))
    subjects = jnp.array([5, 7, 9])
    together, terms = train_chunk_steps(states, lambda: _loss, TX, jnp.int32(1), "finetune", subjects, jnp.int32(0), 3)
    assert terms.shape == (3, 3)
    for i in range(3):
        alone, _ = train_steps(jax.tree_util.tree_map(lambda x, i=i: x[i], states), _loss, TX, jnp.int32(1), "finetune", subjects[i], jnp.int32(0), 3)
        chex.assert_trees_all_close(alone.params, together.params[i], rtol=1e-6)
    assert not np.allclose(together.params[0], together.params[1])  # each subject draws its own targets
    a, b = step_key(jnp.int32(1), "finetune", jnp.int32(5), jnp.int32(2)), step_key(jnp.int32(1), 1, jnp.int32(5), jnp.int32(2))
    assert np.array_equal(jax.random.key_data(a), jax.random.key_data(b))  # stage by name or number


def test_a_non_finite_step_is_skipped_and_marked():
    def loss(params, key, step):
        value = jnp.where(step == 2, jnp.nan, jnp.sum(params**2))
        return value, value

    state = init_state(jnp.ones(2), TX)
    end, _ = repeat_steps(lambda s, i: train_steps(s, loss, TX, jnp.int32(0), "shared", jnp.int32(0), i, 1), state, 4)
    assert not bool(end.alive) and int(end.diverged_at) == 2 and np.all(np.isfinite(np.asarray(end.params)))


def test_all_finite_sees_every_leaf_of_every_dtype_and_each_subject_under_vmap():
    tree = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3, jnp.bfloat16), "count": jnp.int32(7), "on": jnp.bool_(True)}
    assert bool(all_finite(tree)) and bool(all_finite({})) and bool(all_finite({"count": jnp.int32(1)}))
    for leaf, bad in (("w", jnp.inf), ("b", jnp.nan)):
        broken = dict(tree, **{leaf: tree[leaf].at[-1].set(bad)})
        assert not bool(all_finite(broken)), leaf
    stacked = {"w": jnp.ones((3, 4)).at[1, 2].set(-jnp.inf), "b": jnp.zeros((3, 2)).at[2, 0].set(jnp.nan)}
    np.testing.assert_array_equal(jax.vmap(all_finite)(stacked), [True, False, False])  # per subject, as `guarded_update` runs
    params = {"w": jnp.ones(2), "b": jnp.ones(2)}
    grads = {"w": jnp.zeros(2), "b": jnp.array([0.0, jnp.inf])}  # a finite loss whose update is not finite
    state = init_state(params, TX)
    end = guarded_update(state, jnp.float32(1.0), grads, TX, jnp.int32(4))
    assert not bool(end.alive) and int(end.diverged_at) == 4
    chex.assert_trees_all_equal(end.params, params)


def test_padded_training_sets_share_one_program_and_draw_what_the_unpadded_set_would():
    assert [scan_slots(n) for n in (1, 16, 17, 20, 21, 33, 100, 1000)] == [16, 16, 20, 20, 24, 40, 112, 1024]
    assert all(n <= scan_slots(n) <= max(16, 1.25 * n) for n in range(1, 3000))
    with pytest.raises(ValueError, match="at least one scan"):
        scan_slots(0)
    images, labels = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5), np.ones((3, 4, 5), np.int32)
    (x, y), count = padded_scans(images, labels)
    assert x.shape == (16, 4, 5) and y.dtype == jnp.int32 and int(count) == 3
    np.testing.assert_array_equal(x[:3], images)
    assert not np.any(x[3:]) and not np.any(y[3:])
    key = jax.random.key(7)
    drawn = jax.jit(lambda k, m: jax.random.randint(k, (16,), 0, m))(key, count)  # the count traced, as in a training program
    np.testing.assert_array_equal(drawn, jax.random.randint(key, (16,), 0, 3))


def test_a_cohort_smaller_than_the_devices_gets_a_mesh_of_its_size():
    """No device trains padding: 2 subjects on the suite's 4 CPU devices shard over 2 of them."""
    from longbrain_jax.engine import sharding

    assert jax.device_count() >= 4, "conftest provides 4 CPU devices"
    assert sharding.subject_mesh(subjects=2).devices.size == 2
    assert sharding.subject_mesh(subjects=1).devices.size == 1
    assert sharding.subject_mesh(subjects=9).devices.size == jax.device_count() == sharding.subject_mesh().devices.size
    assert sharding.padded_count(3, sharding.subject_mesh(subjects=3)) == 3
