"""The shared training step (`engine.training`): keys, the divergence guard, and blocks of steps."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from longbrain_jax.engine.training import init_state, repeat_steps, step_key, train_chunk_steps, train_steps

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
