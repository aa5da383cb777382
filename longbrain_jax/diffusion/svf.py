"""Stage 1 of the 4D deformation diffusion model (arXiv 2604.22700): one stationary velocity field per scan pair.

The baseline scan of each subject is registered independently to each of its follow-ups.
A pair's deformation is the exponential of a stationary velocity field (SVF) v,
phi = exp(v), computed by scaling and squaring (`grid.integrate_velocity`), so every
field is diffeomorphic where the scaled velocity is small against the grid spacing; the
fields are what the diffusion model of stage 2 learns to generate.

**Convention.** The registered map pulls the baseline onto the follow-up:

    followup(x) ~ baseline(x + u(x)),   u = exp(v) = `displacement(v, shape, cfg)`,

i.e. `grid.warp(baseline, u)` is the predicted follow-up (a generated v makes a follow-up
from a baseline). The simulator's truth phi_t (`simulate.simulator`:
scan_t(phi_t(x)) = scan_0(x)) is the inverse map, which for an SVF is exactly exp(-v):
`truth_convention(v, shape, cfg)` gives it, and |J| > 1 there where tissue grew since
baseline, as in the rest of the project.

**Parametrisation.** The optimised parameter is the velocity on a grid `velocity_factor`
times coarser per axis than the image (`coarse_shape`), channels last, in normalised
units (the grid spans [-1, 1] per axis), so a field transfers between resolutions
unchanged; stage 2 works on that grid. The map is
exp(upsample(gaussian_smooth(v))) on the image grid.

**Loss.** A dissimilarity of the warped baseline against the follow-up, SSD (mean squared
difference, the paper's) or 1 - local NCC (`metrics.local_ncc`, the field's usual choice for
same-contrast scans: ANTs SyN's CC, VoxelMorph's NCC), + `smooth_weight` * mean ||grad v||^2
of the coarse velocity, the gradient taken in normalised coordinates (d v / d x is then
dimensionless and independent of the grid's resolution). Images are expected
intensity-normalised as `io.read_bids` does (about [-1, 1]); the SSD, and so the weight's
balance, scales with the intensity range squared; local NCC does not, above the floor its
`eps` sets (windows whose intensities vary with a standard deviation below about 0.01 in 2D,
0.005 in 3D, at the default window, count as flat).

**Why optimise each pair rather than train a registration network.** Optimisation per
pair needs no training cohort, runs on real data unchanged (nothing learnt from the
simulator), and gives each pair its best fit under the loss, which is what the fields of
the generative model should be. It costs no more than a network's training here: all
pairs of a chunk are optimised together in one vmapped program through the engine
(`engine.training.train_chunk_steps`, Adam), as many pairs per program as the memory
budget allows (`pairs_per_program`). Nothing is drawn at random: every velocity starts
at zero, so a pair's result does not depend on how pairs are grouped (up to float rounding).

**Scores against the simulator** (`score_fields`, `evaluate_against_truth`): the
simulator's aging flow is not stationary (a tabulated flow in brain age, seen through
each subject's anatomy map), so no SVF reproduces its deformation exactly; the SVF's
residual against the truth is the ceiling (the best a generated SVF can reach) for
stage 2, besides what the intensity-driven registration cannot see (motion along
uniform tissue).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float

from longbrain_jax import grid, metrics
from longbrain_jax.config import check_literals
from longbrain_jax.engine.training import TrainState, init_state, train_chunk_steps
from longbrain_jax.io import derivative_path, load_displacement, load_image, scan_path
from longbrain_jax.memory import Budget, Program, plan_batch
from longbrain_jax.simulate.simulator import PIPELINE

logger = logging.getLogger("longbrain_jax.diffusion.svf")


@dataclasses.dataclass(frozen=True)
class SVFConfig:
    """Per-pair SVF registration (stage 1 of the deformation diffusion model).

    **Arguments:**

    - `velocity_factor`: the velocity grid is this many times coarser per axis than the
      image (`coarse_shape`: ceil(n / factor) points, at least 2); the diffusion model of
      stage 2 works on that grid.
    - `smoothing_sigma`: Gaussian smoothing of the coarse velocity (coarse voxels) before
      it is upsampled to the image grid; 0: none.
    - `squaring_steps`: scaling-and-squaring steps of the exponential (the velocity is
      divided by 2**steps, then composed with itself `steps` times).
    - `similarity`: "lncc" (default: 1 - local NCC over cubic windows of `ncc_window` image
      voxels) or "ssd" (the paper's). Chosen by what stage 2 must learn, the regional volume
      change: `benchmarks/svf_settings.py` (12 simulated 2D 3 mm subjects, 6 healthy /
      dementia-like twins, scans 50-75, default scanner; truth in %/yr: hippocampus -1.45,
      dementia minus healthy -0.40; lateral ventricles +6.3, +0.99) measured, as carried
      rate (correlation across subjects), group difference:
      SSD at 0.003: hippocampus -0.41 (r 0.33), -0.27; ventricles +4.9 (0.72), +1.08;
      cortical GM r 0.35, cerebral WM r -0.26.
      LNCC at 0.001: hippocampus -0.89 (r 0.73), -0.54; ventricles +5.3 (0.70), +1.29;
      cortical GM r 0.92, cerebral WM r 0.71; at the same cost per pair.
      Window 5 (15 mm at 3 mm) against 3 and 9 at 0.003: 3 lost the ventricles' group
      difference (+0.32), 9 carried a little less of the hippocampus (-0.70 against -0.77).
    - `smooth_weight`: weight of mean ||grad v||^2 (normalised units) against the
      dissimilarity; its scale depends on `similarity`. LNCC (same benchmark): 0.3, 0.1, 0.03,
      0.01, 0.003, 0.001, 0.0003 carried hippocampus -0.02, -0.08, -0.32, -0.54, -0.77, -0.89,
      -1.00 %/yr; the default is 0.001, the lowest measured end to end (0.0003's group difference,
      -0.64, overshoots the true -0.40). End to end (`benchmarks/diffusion.py`, RESULTS.md) it
      cut the generated volume error from 15.7 % to 12.4 % and made the group counterfactual
      right for 15 of 16 anatomies (from 3), at the price of rougher fields: generated maps
      folded in 1.9e-5 of voxels (0 before). Raise it where folding matters more.
      SSD (mean squared difference of intensities normalised to about [-1, 1]): use 0.003;
      0.03 carried no hippocampal change (+0.04 %/yr, group difference +0.13, wrong-signed). By displacement error alone, measured on 12 simulated 2D pairs
      (4 subjects at 4 mm, scans at 50, 58, 67 and 75 registered from the first, 200 steps at
      5e-3), SSD at 0.03 gave the lowest error (RMSE 2.15 mm of 3.10 mm true RMS, |J| r 0.61);
      0.01 and below overfit the scanner's noise and bias (2.41 mm at 0.01; 3.53 mm at 0.001),
      0.1 and above oversmooth (2.30 mm at 0.1; 2.76 mm at 1); without scanner effects 0.001
      was best (1.24 mm, r 0.82). A displacement error over the whole brain is dominated by
      the large structures; the regional volume change is what the generative model needs.
    - `ncc_window`: the local NCC's window, odd, in image voxels.
    - `steps`, `learning_rate`: full-batch Adam per pair, from v = 0. At 5e-3 the
      simulated pairs above had converged by 100 steps (400 steps, or 2e-3 / 1e-2, changed the
      RMSE by under 0.02 mm); 200 leaves room for larger deformations.
    - `seed`: keys the engine's per-step draws (this loss draws nothing; kept so the
      stage's keys are defined like every other stage's).
    """

    # configs recorded before `similarity` existed registered by SSD (`config.config_from_dict`)
    RECORDED_BEFORE: ClassVar[dict[str, object]] = {"similarity": "ssd"}

    velocity_factor: int = 2
    smoothing_sigma: float = 1.0
    squaring_steps: int = 7
    similarity: Literal["lncc", "ssd"] = "lncc"
    smooth_weight: float = 0.001
    ncc_window: int = 5
    steps: int = 200
    learning_rate: float = 5e-3
    seed: int = 0

    def __post_init__(self):
        check_literals(self)
        checks = {
            "ncc_window": self.ncc_window >= 1 and self.ncc_window % 2 == 1,
            "velocity_factor": self.velocity_factor >= 1,
            "smoothing_sigma": self.smoothing_sigma >= 0,
            "squaring_steps": self.squaring_steps >= 0,
            "smooth_weight": self.smooth_weight >= 0,
            "steps": self.steps >= 0,
            "learning_rate": self.learning_rate > 0,
        }
        for name, ok in checks.items():
            if not ok:
                rule = {"velocity_factor": ">= 1", "learning_rate": "> 0", "ncc_window": "an odd number >= 1"}.get(name, ">= 0")
                raise ValueError(f"SVFConfig.{name} must be {rule}, got {getattr(self, name)!r}")


# -- the velocity field -----------------------------------------------------------------------------
def coarse_shape(shape: Sequence[int], factor: int) -> tuple[int, ...]:
    """The velocity grid of images of `shape`: ceil(n / factor) points per axis, at least 2 (1 where n is 1)."""
    return tuple(min(int(n), max(2, math.ceil(int(n) / factor))) for n in shape)


def zero_velocity(shape: Sequence[int], cfg: SVFConfig) -> Float[Array, "*coarse D"]:
    """The identity map's velocity on the coarse grid of images of `shape`."""
    return jnp.zeros((*coarse_shape(shape, cfg.velocity_factor), len(shape)), jnp.float32)


def smooth(v: Float[Array, "*coarse D"], cfg: SVFConfig) -> Float[Array, "*coarse D"]:
    """The coarse velocity after the configured Gaussian smoothing (coarse voxels, reflecting edges)."""
    return grid.gaussian_smooth(v, cfg.smoothing_sigma, ndim=v.ndim - 1) if cfg.smoothing_sigma > 0 else v


def upsample(v: Float[Array, "*coarse D"], shape: Sequence[int]) -> Float[Array, "*shape D"]:
    """A coarse velocity on the image grid of `shape` (linear; normalised units need no rescaling)."""
    return grid.resize_linear(v, tuple(int(n) for n in shape))


def displacement(v: Float[Array, "*coarse D"], shape: Sequence[int], cfg: SVFConfig) -> Float[Array, "*shape D"]:
    """u = exp(v) on the image grid: `grid.warp(baseline, u)` is the predicted follow-up."""
    return grid.integrate_velocity(upsample(smooth(v, cfg), shape), cfg.squaring_steps)


def truth_convention(v: Float[Array, "*coarse D"], shape: Sequence[int], cfg: SVFConfig) -> Float[Array, "*shape D"]:
    """exp(-v), the inverse map: the simulator's phi_t (scan_t(phi_t(x)) = scan_0(x)), in normalised units."""
    return displacement(-v, shape, cfg)


def velocity_gradient_energy(v: Float[Array, "*coarse D"]) -> Float[Array, ""]:
    """mean ||grad v||^2: per axis, the mean of the squared forward differences over the
    grid spacing (normalised coordinates), summed over components and axes."""
    spatial = v.shape[:-1]
    total = jnp.zeros((), v.dtype)
    for a, n in enumerate(spatial):
        if n > 1:
            h = 2.0 / (n - 1)
            total = total + jnp.mean(jnp.sum((jnp.diff(v, axis=a) / h) ** 2, axis=-1))
    return total


class Terms(NamedTuple):
    total: Array
    dissimilarity: Array
    smooth: Array


def pair_loss(v: Float[Array, "*coarse D"], baseline: Float[Array, "*s"], followup: Float[Array, "*s"], cfg: SVFConfig) -> tuple[Array, Terms]:
    """(loss, Terms) of one pair: dissimilarity(warp(baseline, exp(v)), followup) + smooth_weight * mean ||grad v||^2,
    the dissimilarity mean squared difference ("ssd") or 1 - mean local NCC ("lncc")."""
    warped = grid.warp(baseline, displacement(v, baseline.shape, cfg))
    if cfg.similarity == "lncc":
        dissimilarity = 1.0 - metrics.local_ncc(warped, followup, cfg.ncc_window)
    else:
        dissimilarity = jnp.mean((warped - followup) ** 2)
    energy = velocity_gradient_energy(v)
    total = dissimilarity + cfg.smooth_weight * energy
    return total, Terms(total, dissimilarity, energy)


# -- training -------------------------------------------------------------------------------------
def _optimizer(cfg: SVFConfig) -> optax.GradientTransformation:
    return optax.adam(cfg.learning_rate)


def _pair_loss_of(baseline, followup, cfg: SVFConfig):
    """One pair's loss for the engine: `(v, key, step) -> (total, Terms)` (full batch: no draws)."""

    def loss(v, key, step):
        return pair_loss(v, baseline, followup, cfg)

    return loss


def _states(n: int, shape: tuple[int, ...], cfg: SVFConfig) -> TrainState:
    """Fresh training states of `n` pairs, every velocity zero (the identity map)."""
    v = jnp.zeros((n, *coarse_shape(shape, cfg.velocity_factor), len(shape)), jnp.float32)
    return jax.vmap(lambda p: init_state(p, _optimizer(cfg)))(v)


_init_states = jax.jit(_states, static_argnums=(0, 1, 2))


@functools.partial(jax.jit, static_argnames=("cfg", "max_steps"))
def _train_block(states: TrainState, pairs, baselines, followups, first_step, num_steps, *, cfg: SVFConfig, max_steps: int) -> tuple[TrainState, Terms]:
    """`num_steps` (<= `max_steps`) Adam steps of every pair (leading axis) through the engine's
    guarded chunk step; `pairs` are the pairs' global indices. Returns the states and each
    step's `Terms` (max_steps, n), zero past `num_steps`."""
    loss_of = lambda b, f: _pair_loss_of(b, f, cfg)  # noqa: E731
    return train_chunk_steps(states, loss_of, _optimizer(cfg), jnp.int32(cfg.seed), "diffusion", pairs, first_step, num_steps,
                             baselines, followups, max_steps=max_steps)  # fmt: skip


def pairs_per_program(cfg: SVFConfig, shape: tuple[int, ...], budget: Budget, upper: int, steps_per_call: int = 50, host_bytes: int = 0) -> int:
    """Pairs trained in one vmapped program under `budget` (`memory.plan_batch`), beside `host_bytes`
    of host arrays its callers fill while it trains (their outputs)."""
    s = jax.ShapeDtypeStruct

    def trace(n):
        states = jax.eval_shape(lambda: _states(n, shape, cfg))
        images = s((n, *shape), jnp.float32)
        return _train_block.trace(states, s((n,), jnp.int32), images, images, jnp.int32(0), jnp.int32(steps_per_call),
                                  cfg=cfg, max_steps=steps_per_call)  # fmt: skip

    program = Program(trace, ("diffusion_svf", cfg, shape, steps_per_call))
    host = lambda n: 2 * n * math.prod(shape) * 4 + host_bytes  # noqa: E731  (the program's baselines and follow-ups)
    return plan_batch("SVF registration: training", "pairs per program", budget, upper, program, host).sizes["pairs per program"]


def register_pairs(
    baselines: np.ndarray, followups: np.ndarray, cfg: SVFConfig = SVFConfig(), budget: Budget | None = None,
    progress: Callable[[int, int, float], None] | None = None, steps_per_call: int = 50, host_bytes: int = 0,
) -> np.ndarray:  # fmt: skip
    """Register every baseline (P, *s) to its follow-up (P, *s); returns the velocities (P, *coarse, D) float32.

    Pairs are trained `pairs_per_program` at a time (planned under `budget`, default
    `Budget.resolve()`) in one vmapped program of `steps_per_call` steps per call; the last
    group is padded with repeats of its last pair so every group runs the same compiled
    program. Each pair's result does not depend on the grouping (all start at v = 0 and
    draw nothing). `progress(done, total, median loss)` is called after each call. A pair
    whose loss turns non-finite keeps its last finite velocity (logged). `host_bytes`: host
    arrays the caller fills meanwhile (planned beside the program, with this call's output).
    """
    baselines, followups = np.asarray(baselines, np.float32), np.asarray(followups, np.float32)
    if baselines.shape != followups.shape or baselines.ndim < 2:
        raise ValueError(f"baselines {baselines.shape} and follow-ups {followups.shape} must both be (P, *spatial)")
    p, shape = baselines.shape[0], tuple(baselines.shape[1:])
    out = np.zeros((p, *coarse_shape(shape, cfg.velocity_factor), len(shape)), np.float32)
    if p == 0:
        return out
    steps_per_call = max(1, min(steps_per_call, cfg.steps or 1))
    group = pairs_per_program(cfg, shape, budget or Budget.resolve(), p, steps_per_call, host_bytes + out.nbytes)
    for start in range(0, p, group):
        idx = np.minimum(np.arange(start, start + group), p - 1)  # the last group padded with its last pair
        states = _init_states(group, shape, cfg)
        args = (jnp.asarray(idx, jnp.int32), jnp.asarray(baselines[idx]), jnp.asarray(followups[idx]))
        done = 0
        while done < cfg.steps:
            k = min(steps_per_call, cfg.steps - done)
            states, terms = _train_block(states, *args, jnp.int32(done), jnp.int32(k), cfg=cfg, max_steps=steps_per_call)
            done += k
            if progress is not None:
                progress(start * cfg.steps + done * min(group, p - start), p * cfg.steps, float(np.median(np.asarray(terms.total)[k - 1])))
        real = slice(0, min(group, p - start))
        alive = np.asarray(states.alive)[real]
        if not alive.all():
            logger.warning("SVF registration: pairs %s diverged (kept their last finite velocity)", (start + np.flatnonzero(~alive)).tolist())
        out[start : start + real.stop] = np.asarray(states.params)[real]
        del states, args
    return out


def register_cohort(
    volumes: np.ndarray, mask: np.ndarray, cfg: SVFConfig = SVFConfig(), budget: Budget | None = None,
    progress: Callable[[int, int, float], None] | None = None, host_bytes: int = 0,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Every observed follow-up (slot j > 0 with `mask` True) registered from its subject's slot 0.

    `volumes` (N, T, *s), `mask` (N, T) bool. Returns (velocities (N, T, *coarse, D) float32,
    zero at slot 0 and at padding; valid (N, T) bool, False at slot 0 and equal to
    `mask[:, 1:]` after it). Velocities are per pair, not per year: divide by the interval
    for rates. A subject with a follow-up but no baseline is an error. `host_bytes`: host arrays
    the caller fills meanwhile (planned beside the training, as this call's outputs are).
    """
    volumes, mask = np.asarray(volumes), np.asarray(mask, bool)
    if volumes.shape[:2] != mask.shape:
        raise ValueError(f"volumes {volumes.shape} and mask {mask.shape} disagree on (subjects, scans)")
    missing = np.flatnonzero(mask[:, 1:].any(axis=1) & ~mask[:, 0])
    if missing.size:
        raise ValueError(f"subjects {missing.tolist()} have follow-ups but no baseline in slot 0")
    shape = tuple(volumes.shape[2:])
    valid = np.zeros_like(mask)
    valid[:, 1:] = mask[:, 1:]
    subjects, slots = np.nonzero(valid)
    velocities = np.zeros((*mask.shape, *coarse_shape(shape, cfg.velocity_factor), len(shape)), np.float32)
    if subjects.size:
        velocities[subjects, slots] = register_pairs(volumes[subjects, 0], volumes[subjects, slots], cfg, budget, progress,
                                                     host_bytes=host_bytes + velocities.nbytes)  # fmt: skip
    return velocities, valid


# -- scores against the simulator's truth -----------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("cfg",))
def _fields(v, shape_like, *, cfg: SVFConfig):
    shape = shape_like.shape
    phi = truth_convention(v, shape, cfg)
    forward = displacement(v, shape, cfg)
    return phi, grid.jacobian_determinant(phi), grid.jacobian_determinant(forward)


def score_fields(
    velocity: np.ndarray, true_displacement_mm: np.ndarray, true_jacdet: np.ndarray, brain: np.ndarray, affine: np.ndarray, cfg: SVFConfig,
) -> dict[str, float]:  # fmt: skip
    """One pair's SVF against the simulator's truth phi_t (its displacement in RAS mm as
    `io.load_displacement` reads it, (*s, 3) or (*s, D), its |J| (*s)) on the image grid of
    `affine`; `brain` (*s) bool selects the voxels scored.

    - `displacement_rmse_mm`: RMS over the brain of |exp(-v)(x) - phi_t(x)| in mm (exp(-v)
      is the SVF's map in the truth's convention, see the module docstring);
      `true_displacement_rms_mm`: RMS of the truth's own displacement, for scale.
    - `jac_error`: mean over the brain of | |J(exp(-v))| - |J_true| |;
      `jac_true_change`: mean |J_true - 1| there; `jac_correlation`: Pearson's r of the two |J|.
    - `folding`: share of all voxels where exp(v) or exp(-v) folds (|J| <= 0).
    """
    brain = np.asarray(brain, bool)
    true_jacdet = np.asarray(true_jacdet, np.float32)
    phi, det, det_forward = _fields(jnp.asarray(velocity, jnp.float32), jnp.zeros(true_jacdet.shape, jnp.float32), cfg=cfg)
    true_u = grid.displacement_from_world(jnp.asarray(true_displacement_mm, jnp.float32), affine)
    error_mm = np.asarray(grid.displacement_to_world(phi - true_u, affine))
    truth_mm = np.asarray(grid.displacement_to_world(true_u, affine))
    det = np.asarray(det)
    a, b = det[brain], true_jacdet[brain]
    corr = float(np.corrcoef(a, b)[0, 1]) if a.size > 1 and a.std() > 0 and b.std() > 0 else float("nan")
    return {
        "displacement_rmse_mm": float(np.sqrt(np.mean(np.sum(error_mm**2, -1)[brain]))),
        "true_displacement_rms_mm": float(np.sqrt(np.mean(np.sum(truth_mm**2, -1)[brain]))),
        "jac_error": float(np.mean(np.abs(a - b))),
        "jac_true_change": float(np.mean(np.abs(b - 1.0))),
        "jac_correlation": corr,
        "folding": float(np.mean((det <= 0) | (np.asarray(det_forward) <= 0))),
    }


def evaluate_against_truth(
    velocities: np.ndarray, valid: np.ndarray, bids_root: str | os.PathLike, subject_ids: Sequence[str],
    session_ids: Sequence[Sequence[str]], cfg: SVFConfig,
) -> list[dict]:  # fmt: skip
    """One row per registered pair (`valid[i, j]`) of a simulated BIDS dataset: `score_fields`
    against the simulator's truth of that session (`derivatives/simulator` jacdet and truth
    files), the brain being the baseline's labels > 0 (its `*_dseg` map there).

    `velocities`, `valid` as `register_cohort` returns them for the dataset's subjects
    `subject_ids` with sessions `session_ids[i]` (slot order; e.g. a `Cohort`'s). The scores
    are the ceiling of stage 2, since the simulator's flow is not stationary (see the module
    docstring). Rows: participant_id, session, then the scores.
    """
    root = Path(bids_root)
    rows = []
    for i, j in zip(*np.nonzero(np.asarray(valid, bool)), strict=True):
        sid, base_ses, ses = subject_ids[i], session_ids[i][0], session_ids[i][j]
        labels, _ = load_image(scan_path(root / "derivatives" / PIPELINE, sid, base_ses, suffix="dseg"))
        true_det, _ = load_image(derivative_path(root, sid, ses, "jacdet", PIPELINE))
        true_mm, affine = load_displacement(derivative_path(root, sid, ses, "truth", PIPELINE, suffix="xfm"))
        scores = score_fields(velocities[i, j], true_mm, np.asarray(true_det), np.asarray(labels) > 0, affine, cfg)
        rows.append({"participant_id": sid, "session": ses, **scores})
    return rows
