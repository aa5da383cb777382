"""The training step every method shares: a pure `(init, step)` pair over a NamedTuple state.

A method supplies a loss `loss(params, key, step) -> (loss, aux)` (its data closed over
or passed as arrays) and an optax `GradientTransformation`; the engine supplies

- `TrainState` and `init_state`: parameters, optimiser state, and the divergence guard's
  bookkeeping;
- `guarded_update`: one optimiser step, skipped for a model whose loss or new parameters
  are not finite (it keeps its last finite state, is marked diverged at that step, and
  nothing else is touched, so one bad subject never stops a cohort);
- `step_key`: the key of a draw, `fold_in(seed, stage, subject, step)`, so a model's
  draws do not depend on its chunk, device or process, and a resumed run draws exactly
  what an uninterrupted one would;
- `train_steps` / `train_chunk_steps`: a block of steps in one compiled loop (no host
  round trip per step), for one model or a chunk of models (a loop over steps of a
  vmapped step); with `max_steps`, one program serves blocks of any length up to it
  (`repeat_steps`), so a run's shorter last block or a resumed run compiles nothing new;
- `block_steps`: how many steps one call holds (one for a convolutional network on the
  CPU, whose convolutions run several times slower inside a compiled loop; a block of one
  step is traced without a loop).

Everything here is jit-, vmap- and grad-safe; checkpoints, chunks and sharding are
`engine.chunks`, `engine.checkpoint` and `engine.sharding`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Bool, Float, Int

#: Stage numbers folded into keys, one per kind of training in the project (never reuse one).
STAGES = {"shared": 0, "finetune": 1, "register": 2, "noder": 3, "autoencoder": 4, "segmenter": 5, "classifier": 6, "diffusion": 7, "align": 8}


class TrainState(NamedTuple):
    """One model's training state (a leading axis per model when vmapped).

    `alive` turns False at the first step whose loss or parameters are not finite; that
    model then keeps its last finite parameters, `diverged_at` holds the step (-1 while
    alive) and `loss` is NaN.
    """

    params: Any
    opt_state: optax.OptState
    alive: Bool[Array, ""]
    diverged_at: Int[Array, ""]
    loss: Float[Array, ""]


def init_state(params, tx: optax.GradientTransformation) -> TrainState:
    """A fresh state starting from `params`."""
    return TrainState(params, tx.init(params), jnp.array(True), jnp.array(-1, jnp.int32), jnp.array(jnp.nan, jnp.float32))


def step_key(seed: Int[Array, ""], stage: int | str, subject: Int[Array, ""], step: Int[Array, ""]) -> Array:
    """The PRNG key of one model's draw at one step of one stage (`STAGES` name or number)."""
    stage = STAGES[stage] if isinstance(stage, str) else stage
    return jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), stage), subject), step)


def all_finite(tree) -> Bool[Array, ""]:
    """Whether every element of every leaf of `tree` is finite, as one reduction over the leaves
    laid end to end. Not one reduction per leaf joined by `&`: XLA copied that chain of scalar ANDs
    into each select that keeps or drops a leaf, so a model of L leaves compiled L x L ops (the
    autoencoder's training step: 18,564 ANDs, 63k lines of optimised HLO, 9.5 s to compile at
    level 0 on the CPU; one reduction: 240, 23k lines, 4.5 s, the same step time)."""
    by_dtype: dict[Any, list] = {}
    for x in map(jnp.asarray, jax.tree_util.tree_leaves(tree)):
        if jnp.issubdtype(x.dtype, jnp.inexact):  # integers and booleans are always finite
            by_dtype.setdefault(x.dtype, []).append(jnp.ravel(x))
    flags = [jnp.all(jnp.isfinite(jnp.concatenate(xs))) for xs in by_dtype.values()]
    return functools.reduce(jnp.logical_and, flags, jnp.bool_(True))


def optimiser_update(tx: optax.GradientTransformation, grads, opt_state: optax.OptState, params) -> tuple[Any, optax.OptState]:
    """`tx.update(grads, opt_state, params)` under JAX's standard dtype promotion: optax's Adam
    bias correction raises a Python float to an int32 power (`decay ** count`), which the strict
    promotion the tests run under (`tests/conftest.py`) refuses. Our own code is strict-clean."""
    with jax.numpy_dtype_promotion("standard"):
        return tx.update(grads, opt_state, params)


def guarded_update(state: TrainState, loss: Float[Array, ""], grads, tx: optax.GradientTransformation, step: Int[Array, ""]) -> TrainState:
    """Apply one optimiser update unless the loss or the new parameters are not finite; then the
    model keeps its last finite state and is marked diverged at `step`."""
    updates, opt_state = optimiser_update(tx, grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ok = state.alive & jnp.isfinite(loss) & all_finite(params)
    keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, old)  # noqa: E731
    return TrainState(
        params=keep(params, state.params),
        opt_state=keep(opt_state, state.opt_state),
        alive=ok,
        diverged_at=jnp.where(state.alive & ~ok, step, state.diverged_at).astype(jnp.int32),
        loss=jnp.where(ok, loss, jnp.nan),
    )


def loss_step(state: TrainState, loss: Callable[..., tuple[Array, Any]], tx: optax.GradientTransformation, key: Array,
              step: Int[Array, ""]) -> tuple[TrainState, Any]:  # fmt: skip
    """One guarded step of `loss(params, key, step) -> (loss, aux)`; returns the new state and `aux`."""
    (value, aux), grads = jax.value_and_grad(loss, has_aux=True)(state.params, key, step)
    return guarded_update(state, value, grads, tx, step), aux


def repeat_steps(step: Callable[[Any, Array], tuple[Any, Any]], state, num_steps: int | Array, max_steps: int | None = None) -> tuple[Any, Any]:
    """`step(state, i) -> (state, aux)` for i = 0 .. num_steps - 1 in one compiled loop; returns
    the state and every step's `aux` stacked on a leading axis.

    With `max_steps` None, `num_steps` is static (a `lax.scan` of that length). With a static
    `max_steps`, `num_steps` may be traced (<= max_steps): one compiled program then serves
    blocks of any length (the last, shorter block of a run; a resumed run's blocks), and `aux`
    has `max_steps` rows, those past `num_steps` zero.
    """
    if max_steps == 1 or (max_steps is None and isinstance(num_steps, int) and num_steps == 1):
        return _one_step(step, state, num_steps, traced=max_steps is not None)
    if max_steps is None:
        return jax.lax.scan(step, state, jnp.arange(num_steps))
    shapes = jax.eval_shape(lambda s: step(s, jnp.int32(0))[1], state)
    rows = jax.tree_util.tree_map(lambda a: jnp.zeros((max_steps, *a.shape), a.dtype), shapes)

    def body(i, carry):
        s, out = carry
        s, aux = step(s, i)
        return s, jax.tree_util.tree_map(lambda o, a: o.at[i].set(a), out, aux)

    return jax.lax.fori_loop(0, jnp.minimum(num_steps, max_steps), body, (state, rows))


def _one_step(step, state, num_steps, traced: bool):
    """A block of one step without a loop (`repeat_steps`): XLA:CPU runs convolutions inside a
    loop body several times slower than outside one (jax-ml/jax#12868). A traced `num_steps` of
    0 leaves the state as it was."""
    new, aux = step(state, jnp.int32(0))
    if traced:
        run = num_steps > 0
        new = jax.tree_util.tree_map(lambda a, b: jnp.where(run, a, b), new, state)
        aux = jax.tree_util.tree_map(lambda a: jnp.where(run, a, jnp.zeros_like(a)), aux)
    return new, jax.tree_util.tree_map(lambda a: a[None], aux)


def block_steps(steps_per_call: int, convolutional: bool) -> int:
    """Steps per compiled call of a training loop: `steps_per_call`, except one for a
    convolutional network on the CPU, where a step inside a compiled loop ran 2.6-24x slower
    than the same step called alone (measured on XLA:CPU, JAX 0.10: autoencoder 10.6 s vs
    0.44 s, segmenter 0.26 s vs 0.05 s per step at 64 x 64; SFCN 2.6x at 48 x 48;
    `benchmarks/compiled_loops.py`, jax-ml/jax#12868). On an
    accelerator, blocks of many steps save the host round trips."""
    return 1 if convolutional and jax.default_backend() == "cpu" else steps_per_call


def scan_slots(count: int) -> int:
    """Rows a training set of `count` scans is padded to on the device (`padded_scans`): 16 for
    up to 16 scans; beyond, the next multiple of a quarter of the power of two below `count`
    (17 -> 20, 33 -> 40, 100 -> 112, 1000 -> 1024): at most a quarter more rows than it holds."""
    if count < 1:
        raise ValueError(f"a training set needs at least one scan, got {count}")
    if count <= 16:
        return 16
    granule = 2 ** ((count - 1).bit_length() - 3)
    return -(-count // granule) * granule


def padded_bytes(array: np.ndarray) -> int:
    """Device bytes of (M, ...) `array` as `padded_scans` places it (int32 for labels, as it trains)."""
    return scan_slots(array.shape[0]) * array[0].size * 4


def padded_scans(*arrays: np.ndarray) -> tuple[tuple[Array, ...], Int[Array, ""]]:
    """Training arrays (M, ...) on the device, zero-padded along axis 0 to `scan_slots(M)` rows,
    and M (int32). A training program that draws its batches from the first M rows
    (`jax.random.randint(key, (B,), 0, M)`: the same draws as from the unpadded arrays) is then
    one program for every dataset size of its bucket, in this run and, through the persistent
    compilation cache, the next: a convolutional training step takes 10-40 s to compile on the CPU."""
    count = arrays[0].shape[0]
    slots = scan_slots(count)
    padded = tuple(jnp.asarray(np.concatenate([a, np.zeros((slots - count, *a.shape[1:]), a.dtype)]) if slots > count else a) for a in arrays)
    return padded, jnp.int32(count)


def uses_convolution(fn: Callable, *args) -> bool:
    """Whether `fn(*args)` convolves (traced, not run; for `block_steps` of a model given from outside)."""
    return "conv_general_dilated" in str(jax.make_jaxpr(fn)(*args))


def train_steps(
    state: TrainState,
    loss: Callable[..., tuple[Array, Any]],
    tx: optax.GradientTransformation,
    seed: Int[Array, ""],
    stage: int | str,
    subject: Int[Array, ""],
    first_step: Int[Array, ""],
    num_steps: int | Array,
    max_steps: int | None = None,
) -> tuple[TrainState, Any]:
    """`num_steps` guarded steps from `first_step` in one compiled loop (`repeat_steps`); returns
    the state and every step's `aux` stacked (vmap over `state`, `subject` and the loss's data for a chunk)."""

    def body(s, i):
        step = first_step + i
        return loss_step(s, loss, tx, step_key(seed, stage, subject, step), step)

    return repeat_steps(body, state, num_steps, max_steps)


def train_chunk_steps(
    states: TrainState,
    loss_of: Callable[..., Callable[..., tuple[Array, Any]]],
    tx: optax.GradientTransformation,
    seed: Int[Array, ""],
    stage: int | str,
    subjects: Int[Array, " n"],
    first_step: Int[Array, ""],
    num_steps: int | Array,
    *data,
    max_steps: int | None = None,
) -> tuple[TrainState, Any]:
    """`num_steps` guarded steps of a chunk of models (leading axis n of `states`, `subjects` and
    every array in `data`) in one compiled loop over steps of a vmapped step (`repeat_steps`):
    `loss_of(*data_i)` is model i's loss. `subjects` are the models' global indices, which key
    their draws (shard the leading axis over devices and the program runs partitioned).
    Returns the states and every step's `aux` (steps, n, ...)."""

    def one(state, subject, step, *data_i):
        return loss_step(state, loss_of(*data_i), tx, step_key(seed, stage, subject, step), step)

    def body(s, i):
        step = first_step + i
        return jax.vmap(one, in_axes=(0, 0, None) + (0,) * len(data))(s, subjects, step, *data)

    return repeat_steps(body, states, num_steps, max_steps)
