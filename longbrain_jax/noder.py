"""NODER: image-sequence regression with a neural ODE on deformations (Bai and Hong, MICCAI 2024).

The ODE state is a deformation phi_t = x + u_t(x) (displacement `u` in normalised
units, (*spatial, D)), starting at the identity at the baseline scan (t = 0, years):

    d phi_t / dt (x) = v_theta(phi_t, t)(phi_t(x))

The velocity network `Velocity` encodes the current displacement with strided
convolutions to a small latent (32 numbers), appends t, decodes with dense layers to
a coarse velocity grid, upsamples it linearly to the image grid and smooths it with a
Gaussian (both one separable linear operator, `grid.resize_smooth_operator`); the
bottleneck is what makes a per-voxel ODE tractable. The flow of a smooth velocity field
is a diffeomorphism, so the predicted image at any time, baseline o phi_t, keeps the
baseline's topology; labels are carried the same way.

Training is per subject (one network each), vmapped over the cohort: loss =
mean over observed scans of (1 - local NCC(baseline o phi_t, scan_t))
+ `smooth_weight` * mean |grad v|^2 at those times + `boundary_weight` * mean |u|^2 on
the image border; Adam (AMSGrad) as the paper.

**Solver and adjoint (diffrax).** A fixed-step explicit Runge-Kutta (`solver`, Heun by
default; the authors use RK4) with `step_years`. Gradients use
`diffrax.RecursiveCheckpointAdjoint` by default: it differentiates the discretised
solve exactly (so the gradient is the gradient of what is evaluated, and matches
finite differences) and keeps memory at O(log steps) states by recursive
checkpointing, which at our step counts is what the paper's continuous adjoint
bought them, without its error. `"backsolve"` (the continuous adjoint, O(1) memory,
approximate gradients) is available for very long horizons. Reverse-mode adjoints
cannot be differentiated in forward mode: for `jax.jvp` / `jax.jacfwd` through a
solve use `adjoint="forward"` (`diffrax.ForwardMode`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, NamedTuple

import diffrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Bool, Float

from longbrain_jax import grid, metrics
from longbrain_jax.cnn import Conv
from longbrain_jax.config import check_literals
from longbrain_jax.engine.training import TrainState, init_state, train_chunk_steps
from longbrain_jax.memory import Budget, Program, compile_measured, plan_batch, release_memory

SOLVERS = {"euler": diffrax.Euler, "heun": diffrax.Heun, "midpoint": diffrax.Midpoint, "ralston": diffrax.Ralston,
           "bosh3": diffrax.Bosh3, "tsit5": diffrax.Tsit5, "dopri5": diffrax.Dopri5}  # fmt: skip
ADJOINTS = {"recursive": diffrax.RecursiveCheckpointAdjoint, "backsolve": diffrax.BacksolveAdjoint, "forward": diffrax.ForwardMode}


@dataclasses.dataclass(frozen=True)
class NODERConfig:
    """NODER's network, ODE and training.

    **Arguments:**

    - `encoder_channels`: channels of the stride-2 convolutions that encode u.
    - `latent_size`: the bottleneck (paper: 32).
    - `hidden`: width of the dense decoder.
    - `velocity_factor`: the coarse velocity grid is this many times coarser per axis.
    - `smoothing_sigma`: Gaussian smoothing of the upsampled velocity (voxels).
    - `time_scale`: years per unit of the network's time input; large values make the
      velocity nearly stationary over a follow-up, which extrapolated best on simulated
      cohorts (8 subjects, 2D 3 mm, 150 iterations: last-scan MAE 0.092 at 100 years,
      0.102 at 10, together with `velocity_scale` 0.001 against 0.01).
    - `velocity_scale`: the network's output times this is the velocity (normalised
      units per year); it sets the step the optimiser takes in deformation space.
    - `solver`, `step_years`, `adjoint`: see the module docstring.
    - `ncc_window`: local NCC window (voxels).
    - `smooth_weight`, `boundary_weight`: loss weights (paper: 0.05 and small).
    - `iterations`, `learning_rate`: full-batch AMSGrad (paper: 300 at 5e-3).
    - `seed`.
    """

    encoder_channels: tuple[int, ...] = (8, 16, 32)
    latent_size: int = 32
    hidden: int = 64
    velocity_factor: int = 6
    smoothing_sigma: float = 2.0
    time_scale: float = 100.0
    velocity_scale: float = 0.001
    solver: Literal["euler", "heun", "midpoint", "ralston", "bosh3", "tsit5", "dopri5"] = "heun"
    step_years: float = 1.0
    adjoint: Literal["recursive", "backsolve", "forward"] = "recursive"
    ncc_window: int = 7
    smooth_weight: float = 0.05
    boundary_weight: float = 0.01
    iterations: int = 300
    learning_rate: float = 5e-3
    seed: int = 0

    def __post_init__(self):
        check_literals(self)
        if self.step_years <= 0 or self.iterations < 0 or self.velocity_factor < 1:
            raise ValueError(f"need step_years > 0, iterations >= 0, velocity_factor >= 1: {self}")


class Velocity(nn.Module):
    """Displacement (*spatial, D) and time -> smooth velocity (*spatial, D), normalised units per year."""

    shape: tuple[int, ...]
    cfg: NODERConfig

    @nn.compact
    def __call__(self, u: Float[Array, "*s D"], t: Float[Array, ""]) -> Float[Array, "*s D"]:
        cfg, d = self.cfg, len(self.shape)
        h = u[None] * 10.0  # displacements are O(0.01) in normalised units
        for c in cfg.encoder_channels:
            h = nn.swish(Conv(c, (3,) * d, strides=(2,) * d)(h))
        h = jnp.tanh(nn.Dense(cfg.latent_size)(h.reshape(-1)))
        h = jnp.concatenate([h, jnp.reshape(t / cfg.time_scale, (1,))])
        h = nn.swish(nn.Dense(cfg.hidden)(h))
        coarse = coarse_shape(self.shape, cfg.velocity_factor)
        v = nn.Dense(int(np.prod(coarse)) * d, kernel_init=nn.initializers.zeros)(h)  # starts at the identity flow
        operators = [grid.resize_smooth_operator(m, n, cfg.smoothing_sigma) for m, n in zip(coarse, self.shape, strict=True)]
        return grid.apply_separable(v.reshape(*coarse, d), operators) * cfg.velocity_scale  # resized, then smoothed


def coarse_shape(shape: Sequence[int], factor: int) -> tuple[int, ...]:
    return tuple(max(2, round(n / factor)) for n in shape)


def init(key: jax.Array, shape: Sequence[int], cfg: NODERConfig) -> Any:
    """Parameters of one subject's velocity network for images of spatial `shape`."""
    shape = tuple(int(n) for n in shape)
    return Velocity(shape, cfg).init(key, jnp.zeros((*shape, len(shape)), jnp.float32), jnp.zeros((), jnp.float32))["params"]


def flow(params: Any, times: Float[Array, " K"], shape: tuple[int, ...], cfg: NODERConfig, t_end: Float[Array, ""] | None = None):
    """Displacements u_t (K, *shape, D) at `times` (years since baseline, non-decreasing, >= 0).

    The solve runs on [0, t_end] (default: max(times)) with fixed steps of `cfg.step_years`.
    """
    net = Velocity(shape, cfg)
    t1 = jnp.max(times) if t_end is None else t_end

    def vector_field(t, u, args):
        v = net.apply({"params": params}, u, t)
        return grid.warp(v, u)  # v evaluated at phi_t(x) = x + u(x)

    u0 = jnp.zeros((*shape, len(shape)), jnp.asarray(times).dtype)  # float64 in the finite-difference checks
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field), SOLVERS[cfg.solver](), t0=0.0, t1=jnp.maximum(t1, 1e-6), dt0=cfg.step_years, y0=u0,
        saveat=diffrax.SaveAt(ts=jnp.minimum(times, jnp.maximum(t1, 1e-6))), adjoint=ADJOINTS[cfg.adjoint](),
        stepsize_controller=diffrax.ConstantStepSize(), max_steps=4096,
    )  # fmt: skip
    return sol.ys


class Terms(NamedTuple):
    total: Array
    ncc: Array
    smooth: Array
    boundary: Array


def subject_loss(
    params: Any, volumes: Float[Array, "T *s"], times: Float[Array, " T"], observed: Bool[Array, " T"], cfg: NODERConfig
) -> Terms:
    """NODER's loss for one subject; `volumes[0]` is the baseline, padding slots have `observed` False."""
    shape = volumes.shape[1:]
    d = len(shape)
    times = jax.lax.cummax(jnp.where(observed, times, 0.0))  # unobserved slots: a repeat of an observed time
    us = flow(params, times, shape, cfg)
    w = observed.astype(volumes.dtype)
    warped = jax.vmap(lambda u: grid.warp(volumes[0], u))(us)
    ncc = jax.vmap(lambda a, b: metrics.local_ncc(a, b, cfg.ncc_window))(warped, volumes)
    net = Velocity(tuple(shape), cfg)
    vs = jax.vmap(lambda u, t: net.apply({"params": params}, u, t))(us, times)
    vox = vs * (jnp.asarray(shape, vs.dtype) - 1.0) / 2.0  # voxels per year
    smooth = jax.vmap(lambda v: sum(jnp.mean(jnp.sum(jnp.diff(v, axis=a) ** 2, -1)) for a in range(d)))(vox)
    border = jnp.zeros(shape, bool)
    for a in range(d):
        idx = [slice(None)] * d
        idx[a] = jnp.array([0, shape[a] - 1])
        border = border.at[tuple(idx)].set(True)
    boundary = jax.vmap(lambda u: jnp.sum(jnp.where(border[..., None], u**2, 0.0)) / jnp.sum(border, dtype=u.dtype))(us)
    n = jnp.maximum(jnp.sum(w), 1.0)
    ncc_term = jnp.sum(w * (1.0 - ncc)) / n
    smooth_term = jnp.sum(w * smooth) / n
    boundary_term = jnp.sum(w * boundary) / n
    total = ncc_term + cfg.smooth_weight * smooth_term + cfg.boundary_weight * boundary_term
    return Terms(total, ncc_term, smooth_term, boundary_term)


def _optimizer(cfg: NODERConfig) -> optax.GradientTransformation:
    return optax.amsgrad(cfg.learning_rate)


def subject_loss_of(volumes, times, observed, cfg: NODERConfig):
    """One subject's loss for the engine: `(params, key, step) -> (total, Terms)` (full batch: no draws)."""

    def loss(params, key, step):
        terms = subject_loss(params, volumes, times, observed, cfg)
        return terms.total, terms

    return loss


@functools.partial(jax.jit, static_argnames=("cfg", "max_steps"))
def _train_block(states: TrainState, volumes, times, observed, first_step, num_steps, *, cfg: NODERConfig, max_steps: int) -> tuple[TrainState, Terms]:
    """`num_steps` (<= `max_steps`) AMSGrad steps for every subject (leading axis), through the
    engine's guarded chunk step (a subject whose loss turns non-finite keeps its last finite
    network); returns the states and each step's `Terms` (max_steps, n), zero past `num_steps`."""
    subjects = jnp.arange(volumes.shape[0])
    loss_of = lambda v, t, o: subject_loss_of(v, t, o, cfg)  # noqa: E731
    return train_chunk_steps(states, loss_of, _optimizer(cfg), jnp.int32(cfg.seed), "noder", subjects, first_step, num_steps,
                             volumes, times, observed, max_steps=max_steps)  # fmt: skip


def _states(keys: jax.Array, shape: tuple[int, ...], cfg: NODERConfig) -> TrainState:
    params = jax.vmap(lambda k: init(k, shape, cfg))(keys)
    return jax.vmap(lambda p: init_state(p, _optimizer(cfg)))(params)


def subjects_per_program(
    cfg: NODERConfig, shape: tuple[int, ...], t_max: int, budget: Budget, upper: int, steps_per_call: int = 25, host_bytes: int = 0,
) -> int:  # fmt: skip
    """Subjects trained in one vmapped program under `budget`, beside `host_bytes` of host
    memory the caller fills while the programs run (see `fit_groups`)."""
    s = jax.ShapeDtypeStruct

    def trace(n):
        states = jax.eval_shape(lambda: _states(jax.random.split(jax.random.key(0), n), shape, cfg))
        return _train_block.trace(states, s((n, t_max, *shape), jnp.float32), s((n, t_max), jnp.float32),
                                  s((n, t_max), jnp.bool_), jnp.int32(0), jnp.int32(steps_per_call), cfg=cfg, max_steps=steps_per_call)  # fmt: skip

    program = Program(trace, ("noder", cfg, shape, t_max, steps_per_call))
    return plan_batch("NODER: training", "subjects per program", budget, upper, program, host_cost=lambda n: host_bytes).sizes["subjects per program"]


def fit_groups(
    volumes: np.ndarray, times: np.ndarray, observed: np.ndarray, cfg: NODERConfig = NODERConfig(),
    steps_per_call: int = 25, progress: Callable[[int, int, float], None] | None = None, budget: Budget | None = None,
    host_bytes: int = 0,
) -> Iterator[tuple[slice, Any, np.ndarray]]:  # fmt: skip
    """Fit one NODER per subject, subjects vmapped in programs as large as `budget` allows;
    yields each program's (subjects as a slice, their stacked params, loss history
    (iterations, subjects)) when it finishes, so a caller can use and drop a group's
    networks before the next (a 2D 256 x 256 network is 5 MiB: a cohort's would grow with it).

    **Arguments:**

    - `volumes`: (N, T, *spatial) scans, slot 0 of each subject its baseline.
    - `times`: (N, T) years since the baseline; `observed`: (N, T) which slots to fit.
    - `steps_per_call`: iterations per compiled call (progress is reported between).
    - `budget`: the memory budget (default `Budget.resolve()`); subject i's network
      starts from `split(key(seed), N)[i]`, however subjects are grouped.
    - `host_bytes`: host memory the caller fills while the groups train (its outputs),
      planned beside the training.
    """
    n, shape = volumes.shape[0], tuple(volumes.shape[2:])
    group = subjects_per_program(cfg, shape, volumes.shape[1], budget or Budget.resolve(), n, steps_per_call, host_bytes)
    keys = jax.random.split(jax.random.key(cfg.seed), n)
    for start in range(0, n, group):
        sel = slice(start, min(start + group, n))
        history = np.zeros((cfg.iterations, sel.stop - sel.start), np.float32)
        states = jax.jit(_states, static_argnums=(1, 2))(keys[sel], shape, cfg)
        args = (jnp.asarray(volumes[sel], jnp.float32), jnp.asarray(times[sel], jnp.float32), jnp.asarray(observed[sel], bool))
        done = 0
        while done < cfg.iterations:
            k = min(steps_per_call, cfg.iterations - done)
            states, terms = _train_block(states, *args, jnp.int32(done), jnp.int32(k), cfg=cfg, max_steps=steps_per_call)
            history[done : done + k] = np.asarray(terms.total)[:k]
            done += k
            if progress is not None:
                progress(done, cfg.iterations, float(np.median(history[done - 1])))
        params = jax.device_get(states.params)
        del states, args
        release_memory()  # the group's buffers back to the system: resident memory would creep over hundreds of groups
        yield sel, params, history


def fit_cohort(
    volumes: np.ndarray, times: np.ndarray, observed: np.ndarray, cfg: NODERConfig = NODERConfig(),
    steps_per_call: int = 25, progress: Callable[[int, int, float], None] | None = None, budget: Budget | None = None,
) -> tuple[Any, np.ndarray]:  # fmt: skip
    """`fit_groups` with every group's networks kept: (stacked params, loss history (iterations, N))."""
    groups = list(fit_groups(volumes, times, observed, cfg, steps_per_call, progress, budget))
    params = jax.tree_util.tree_map(lambda *xs: np.concatenate(xs), *(p for _, p, _ in groups))
    return params, np.concatenate([h for _, _, h in groups], axis=1)


@functools.partial(jax.jit, static_argnames=("cfg", "shape"))
def _predict_one(params, scans, labels, scan_times, times, slots, *, cfg, shape):
    """One subject: scans (T, *s), labels (T, *s) or None, scan_times (T,), times and slots (K,)."""
    source_times = scan_times[slots]
    t_end = jnp.maximum(jnp.max(times), jnp.max(source_times))

    def solve(ts):  # the flow at times in any order (it is solved at non-decreasing times)
        order = jnp.argsort(ts, stable=True)
        return flow(params, ts[order], shape, cfg, t_end)[jnp.argsort(order, stable=True)]

    u_t, u_s = solve(times), solve(source_times)
    # x -> phi_t(x) -> phi_s^-1(phi_t(x)); the identity's inverse (s = 0) is exactly 0
    us = jax.vmap(lambda ut, us_: grid.compose(grid.invert_displacement(us_), ut))(u_t, u_s)
    images = jax.vmap(grid.warp)(scans[slots], us)
    carried = None if labels is None else jax.vmap(grid.warp_labels)(labels[slots], us)
    folding = jax.vmap(lambda u: metrics.folding_fraction(grid.jacobian_determinant(u)))(us)
    return images, carried, folding


@functools.lru_cache(maxsize=16)
def predict_bytes(cfg: NODERConfig, shape: tuple[int, ...], t: int, k: int, labels: bool) -> int:
    """Memory one subject's `predict` takes: its program's buffers (XLA's, `t` scans, `k`
    targets) and compiling it (measured on the CPU; 256 x 256, 5 and 5: 51 + 186 MiB)."""
    s = jax.ShapeDtypeStruct
    params = jax.eval_shape(lambda: init(jax.random.key(0), shape, cfg))
    traced = _predict_one.trace(params, s((t, *shape), jnp.float32), s((t, *shape), jnp.int32) if labels else None,
                                s((t,), jnp.float32), s((k,), jnp.float32), s((k,), jnp.int32), cfg=cfg, shape=shape)  # fmt: skip
    buffers, compiling = compile_measured(traced)
    return buffers + compiling


def plan_prediction(cfg: NODERConfig, shape: tuple[int, ...], t: int, k: int, labels: bool, budget: Budget, host_bytes: int = 0) -> None:
    """Check (and log) that one subject's `predict` fits `budget` beside `host_bytes` of the
    caller's outputs; it runs between training programs, so it is planned apart from them.
    Raises `MemoryError` naming the stage if it does not fit."""
    cost = predict_bytes(cfg, tuple(int(m) for m in shape), t, k, labels)
    plan_batch("NODER: prediction", "subjects per call", budget, 1, lambda n, exact: cost, host_cost=lambda n: host_bytes)


def predict(
    params: Any, scans: np.ndarray, scan_labels: np.ndarray | None, scan_times: np.ndarray, times: np.ndarray,
    cfg: NODERConfig, source_slots: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:  # fmt: skip
    """Per subject at `times` (N, K) years since baseline: images (N, K, *s), carried labels
    (N, K, *s, None without `scan_labels`) and the folding fraction (N, K) of each map.

    `scans` (N, T, *s) are each subject's scans at `scan_times` (N, T) years since baseline,
    `scan_labels` (N, T, *s) their label maps. Prediction k of subject i resamples scan
    `source_slots[i, k]` (default 0, the baseline: baseline o phi_t, the paper's) at time s
    by source o phi_s^-1 o phi_t, so a forecast from the most recent scan carries only the
    deformation of the last `t - s` years (the inverse by fixed-point iteration,
    `grid.invert_displacement`). Folding is that of the composed map. Subjects run one at a
    time into preallocated outputs: host memory is the outputs plus one subject's scans.
    """
    n, k = times.shape
    shape = tuple(int(m) for m in scans.shape[2:])
    slots = np.zeros((n, k), np.int32) if source_slots is None else np.asarray(source_slots, np.int32)
    images = np.empty((n, k, *shape), np.float32)
    carried = None if scan_labels is None else np.empty((n, k, *shape), np.asarray(scan_labels[:0]).dtype)
    folding = np.empty((n, k), np.float32)
    for i in range(n):
        one = jax.tree_util.tree_map(lambda x, i=i: x[i], params)
        labels = None if scan_labels is None else jnp.asarray(scan_labels[i])
        out = _predict_one(one, jnp.asarray(scans[i], jnp.float32), labels, jnp.asarray(scan_times[i], jnp.float32),
                           jnp.asarray(times[i], jnp.float32), jnp.asarray(slots[i]), cfg=cfg, shape=shape)  # fmt: skip
        images[i], folding[i] = out[0], out[2]
        if carried is not None:
            carried[i] = out[1]
    return images, carried, folding
