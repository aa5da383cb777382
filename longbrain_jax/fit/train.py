"""The compiled training programs: shared initialisation and the vmapped per-subject fine-tune.

Every random draw is keyed by (seed, stage, subject index, step) with `fold_in`, so a
subject's fit does not depend on which chunk, device or process it lands on, and a
run resumed from a checkpoint draws exactly what an uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, Int

from longbrain_jax.config import check_literals
from longbrain_jax.engine.training import TrainState, loss_step, step_key, train_chunk_steps
from longbrain_jax.fit.sampling import SubjectData, sample_points
from longbrain_jax.inr import spatiotemporal as st


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """One optimisation stage (AdamW).

    **Arguments:**

    - `steps`: optimiser steps.
    - `learning_rate`: peak learning rate.
    - `sample_fraction`: voxels drawn per step, as a fraction of one scan's voxels per
      scan slot (a cohort with up to T scans per subject draws T times as many; a
      subject with fewer scans draws the same number from the scans it has).
    - `weight_decay`: AdamW's decoupled weight decay.
    - `schedule`: "constant" or "cosine" (cosine decay to 1% of the peak).
    - `warmup_steps`: linear warm-up from 0.
    """

    steps: int
    learning_rate: float
    sample_fraction: float
    weight_decay: float = 1e-4
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = 0

    def __post_init__(self):
        if self.steps < 0 or self.learning_rate <= 0 or not 0 < self.sample_fraction <= 1:
            raise ValueError(f"need steps >= 0, learning_rate > 0, 0 < sample_fraction <= 1: {self}")
        check_literals(self)

    def optimizer(self) -> optax.GradientTransformation:
        if self.schedule == "cosine":
            lr = optax.warmup_cosine_decay_schedule(
                0.0 if self.warmup_steps else self.learning_rate,
                self.learning_rate,
                self.warmup_steps,
                max(self.steps, self.warmup_steps + 1),
                end_value=0.01 * self.learning_rate,
            )
        elif self.warmup_steps:
            lr = optax.join_schedules(
                [optax.linear_schedule(0.0, self.learning_rate, self.warmup_steps), optax.constant_schedule(self.learning_rate)],
                [self.warmup_steps],
            )
        else:
            lr = self.learning_rate
        return optax.adamw(lr, weight_decay=self.weight_decay)

    def num_points(self, num_voxels: int, max_scans: int) -> int:
        """Points drawn per subject and step."""
        return max(1, round(self.sample_fraction * num_voxels)) * max_scans


class Sampling(NamedTuple):
    """What the loss needs to know about the data (static).

    `time_curvature` > 0 adds that weight times the mean squared second difference in
    time of the INR's output, (f(t - h) - 2 f(t) + f(t + h)) / h**2 with h =
    `time_step`, at the sampled points and at times drawn uniformly from [first
    training scan, last + `time_horizon`] (all in network time units): the trajectory
    between and past the scans is pulled towards a straight line, which is what a
    forecast past the last scan needs from a network fitted to a few scans. A second
    difference over a finite step, not the analytic derivative: the temporal stream's
    ReLU kinks have zero second derivative almost everywhere, so only a finite step
    sees them.
    """

    spatial_shape: tuple[int, ...]
    num_points: int
    foreground_fraction: float
    time_curvature: float = 0.0
    time_step: float = 0.0
    time_horizon: float = 0.0


def sampled_loss(
    params: st.Params, data: SubjectData, key: Array, cfg: st.INRConfig, sampling: Sampling
) -> Float[Array, ""]:
    """Weighted MSE of the INR on points sampled from one subject's training scans (+ the
    temporal curvature penalty of `Sampling`)."""
    coords, scan, values, weights = sample_points(key, data, sampling.spatial_shape, sampling.num_points, sampling.foreground_fraction)
    coords = st.network_coordinates(coords, sampling.spatial_shape, cfg)
    pred = st.apply_indexed(params, coords, data.times, scan, cfg)
    loss = jnp.sum(weights * jnp.square(pred - values)) / jnp.maximum(jnp.sum(weights), 1.0)
    if sampling.time_curvature > 0:
        loss = loss + sampling.time_curvature * time_curvature(params, coords, data, jax.random.fold_in(key, 1), cfg, sampling)
    return loss


def time_curvature(
    params: st.Params, coords: Float[Array, "P D"], data: SubjectData, key: Array, cfg: st.INRConfig, sampling: Sampling
) -> Float[Array, ""]:
    """Mean squared second time difference of the INR at `coords` (see `Sampling`); 0 without training scans.

    Inside `sampled_loss` the spatial stream at `coords` is the same computation as the
    data term's, which XLA's common-subexpression elimination shares.
    """
    h_space = st.spatial_features(params, coords, cfg)
    first = jnp.min(jnp.where(data.train, data.times, jnp.inf))
    last = jnp.max(jnp.where(data.train, data.times, -jnp.inf))
    first, last = jnp.where(data.num_train > 0, first, 0.0), jnp.where(data.num_train > 0, last, 0.0)
    t = jax.random.uniform(key, h_space.shape[:1], minval=first, maxval=last + sampling.time_horizon)
    h = sampling.time_step
    f = [st.head(params, h_space + st.temporal_features(params, t + d, cfg), cfg) for d in (-h, 0.0, h)]
    return jnp.where(data.num_train > 0, jnp.mean(jnp.square((f[0] - 2.0 * f[1] + f[2]) / h**2)), 0.0)


@functools.partial(jax.jit, static_argnames=("num_steps", "cfg", "sampling", "stage"), donate_argnums=0)
def finetune_block(
    state: TrainState,
    data: SubjectData,
    subjects: Int[Array, " n"],
    seed: Int[Array, ""],
    first_step: Int[Array, ""],
    *,
    num_steps: int,
    cfg: st.INRConfig,
    sampling: Sampling,
    stage: StageConfig,
) -> TrainState:
    """`num_steps` fine-tuning steps of a whole chunk of subjects in one compiled call.

    `state`, `data` and `subjects` (global subject indices, which key the draws) carry
    a leading subject axis; shard it over devices and the program runs partitioned.
    """
    def loss_of(data_i):
        return lambda p, key, step: (sampled_loss(p, data_i, key, cfg, sampling), None)

    return train_chunk_steps(state, loss_of, stage.optimizer(), seed, "finetune", subjects, first_step, num_steps, data)[0]


@functools.partial(jax.jit, static_argnames=("num_steps", "cfg", "sampling", "stage", "per_step"), donate_argnums=(0, 1))
def shared_block(
    params: st.Params,
    opt_state: optax.OptState,
    pool: SubjectData,
    seed: Int[Array, ""],
    first_step: Int[Array, ""],
    *,
    num_steps: int,
    cfg: st.INRConfig,
    sampling: Sampling,
    stage: StageConfig,
    per_step: int,
) -> tuple[st.Params, optax.OptState, Float[Array, " num_steps"]]:
    """`num_steps` steps of the shared initialisation theta*: one INR fitted to
    `per_step` random subjects of `pool` (leading axis) per step."""
    tx = stage.optimizer()
    pool_size = pool.times.shape[0]

    def loss_fn(p, key, step):
        k_pick, k_points = jax.random.split(key)
        chosen = jax.random.choice(k_pick, pool_size, (per_step,), replace=per_step > pool_size)
        data = jax.tree_util.tree_map(lambda x: x[chosen], pool)
        keys = jax.random.split(k_points, per_step)
        loss = jnp.mean(jax.vmap(sampled_loss, in_axes=(None, 0, 0, None, None))(p, data, keys, cfg, sampling))
        return loss, loss

    def body(carry, i):
        # a non-finite step is skipped, not taken (theta* stays alive: `alive` is reset each step)
        fresh = TrainState(carry[0], carry[1], jnp.array(True), jnp.array(-1, jnp.int32), jnp.array(jnp.nan, jnp.float32))
        state, loss = loss_step(fresh, loss_fn, tx, step_key(seed, "shared", jnp.array(0), first_step + i), first_step + i)
        return (state.params, state.opt_state), loss

    (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), jnp.arange(num_steps))
    return params, opt_state, losses
