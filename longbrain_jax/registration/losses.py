"""Losses of longitudinal registration with a displacement INR, all derivatives analytic.

For one subject with scans I_0 (baseline) and I_t at times t (years since baseline),
on points x sampled in patches:

    L = lambda * mean ||u(x, 0)||^2
      + sum over observed t > 0 of (1 - NCC(I_0(x), I_t(x + u(x, t))))    per patch, averaged
      + alpha * mean ||du/dx||_F^2                                        spatial smoothness
      + beta  * mean ||du/dt||^2                                          temporal smoothness
      + gamma * mean_x min( sum_k relu(d|J|/dt(x, t_k)), sum_k relu(-d|J|/dt(x, t_k)) )
      + kappa * mean ||u(x, t - h) - 2 u(x, t) + u(x, t + h)||^2 / h^4     temporal curvature

The smoothness, monotonic and curvature terms are evaluated at the observed times and at
`extra_times` random unobserved times in [0, last scan + `extrapolate_years`], so the
field stays regular between and after the scans. du/dx is `jax.jacfwd` through the
network; du/dt and d|J|/dt are `jax.jvp` in t (the latter through the jacfwd: nested
forward mode). The monotonic term is zero when the volume-change rate keeps one sign
over time at every point (atrophy does not reverse).

The curvature term (kappa, ours; 0 by default, the paper has none) pulls every point's
path towards a straight line in t, so the field between and past the scans follows
the trend of the scans instead of stopping (what beta alone asks for) or wandering;
a path linear in t also has a d|J|/dt of one sign. It is the one finite difference in
the loss, and deliberately: a second difference over `curvature_step_years` is what
sees the kinks of g's LeakyReLU, where the analytic second derivative is zero.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from longbrain_jax.grid import det, sample
from longbrain_jax.registration import network as net


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Loss weights (the authors' code: alpha = beta = gamma = 0.1, lambda = 100, the
    temporal term divided by 10 and the monotonic term by 100, which these defaults fold in).

    **Arguments:**

    - `identity`: lambda, weight of ||u(x, 0)||^2.
    - `spatial`: alpha.
    - `temporal`: beta (0.1 / 10).
    - `monotonic`: gamma (0.1 / 100).
    - `extra_times`: unobserved times drawn per step for the regularisers.
    - `extrapolate_years`: how far past the last scan those times reach.
    - `curvature`: kappa, weight of the temporal curvature term (ours; 0 = the paper).
    - `curvature_step_years`: h of its second difference.
    - `regulariser_points`: the spatial, temporal, monotonic and curvature terms are averaged over
      this many of the step's patch points, drawn at random (an unbiased estimate of
      the same means; their nested forward-mode derivatives cost most of a step).
    """

    identity: float = 100.0
    spatial: float = 0.1
    temporal: float = 0.01
    monotonic: float = 0.001
    extra_times: int = 4
    extrapolate_years: float = 2.0
    curvature: float = 0.0
    curvature_step_years: float = 2.0
    regulariser_points: int = 512

    def __post_init__(self):
        weights = (self.identity, self.spatial, self.temporal, self.monotonic, self.curvature)
        if min(weights) < 0 or self.extrapolate_years < 0 or self.curvature_step_years <= 0:
            raise ValueError(f"loss weights and extrapolate_years must be >= 0 and curvature_step_years > 0: {self}")
        if self.extra_times < 0 or self.regulariser_points < 1:
            raise ValueError(f"need extra_times >= 0 and regulariser_points >= 1: {self}")


class Terms(NamedTuple):
    """The loss terms of one subject and step (unweighted), and the total."""

    total: Float[Array, ""]
    ncc: Float[Array, ""]
    identity: Float[Array, ""]
    spatial: Float[Array, ""]
    temporal: Float[Array, ""]
    monotonic: Float[Array, ""]
    curvature: Float[Array, ""]


def point_terms(params: dict, x: Float[Array, " D"], t: Float[Array, ""], cfg: net.DisplacementConfig):
    """At one point and time: u, du/dt, ||du/dx||_F^2, |J| and d|J|/dt (exact)."""
    with_jac = jax.jacfwd(lambda y, s: (net.displacement(params, y, s, cfg),) * 2, has_aux=True)  # (du/dx, u): one pass
    (du_dx, u), (ddu_dx_dt, du_dt) = jax.jvp(lambda s: with_jac(x, s), (t,), (jnp.ones_like(t),))
    jac, djac_dt = jnp.eye(x.shape[0], dtype=du_dx.dtype) + du_dx, ddu_dx_dt
    jac_det, ddet_dt = jax.jvp(det, (jac,), (djac_dt,))
    grad_sq = jnp.sum(jnp.square(jac - jnp.eye(x.shape[0], dtype=jac.dtype)))
    return u, du_dt, grad_sq, jac_det, ddet_dt


def monotonic_penalty(rates: Float[Array, "K ..."], weights: Float[Array, " K"] | None = None) -> Float[Array, "..."]:
    """min(sum_k relu(r_k), sum_k relu(-r_k)) over the time axis 0: zero iff no sign change."""
    w = jnp.ones(rates.shape[0]) if weights is None else weights
    w = w.reshape((-1,) + (1,) * (rates.ndim - 1))
    return jnp.minimum(jnp.sum(w * jax.nn.relu(rates), 0), jnp.sum(w * jax.nn.relu(-rates), 0))


def patch_ncc(a: Float[Array, "B N"], b: Float[Array, "B N"], eps: float = 1e-5) -> Float[Array, " B"]:
    """NCC of each patch (rows)."""
    da, db = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    return jnp.sum(da * db, 1) / jnp.sqrt(jnp.sum(da * da, 1) * jnp.sum(db * db, 1) + eps)


def subject_loss(
    params: dict,
    volumes: Float[Array, "T *spatial"],
    times: Float[Array, " T"],
    observed: Bool[Array, " T"],
    patches: Float[Array, "B N D"],
    key: Array,
    cfg: net.DisplacementConfig,
    loss: LossConfig,
) -> Terms:
    """The registration loss of one subject on one batch of patches (see the module docstring).

    `volumes` (T, *spatial) in scan order with `times` (T,) and `observed` (T,); slot 0
    is the baseline. `patches` holds normalised coordinates of voxel centres.
    """
    b, n, d = patches.shape
    points = patches.reshape(b * n, d)
    follow = observed & (jnp.arange(times.shape[0]) > 0)
    last = jnp.max(jnp.where(observed, times, 0.0))
    k_time, k_points = jax.random.split(key)
    extra = jax.random.uniform(k_time, (loss.extra_times,), maxval=last + loss.extrapolate_years)
    all_times = jnp.concatenate([times, extra])
    weight_t = jnp.concatenate([observed.astype(jnp.float32), jnp.ones(loss.extra_times)])

    terms = jax.vmap(jax.vmap(point_terms, in_axes=(None, 0, None, None)), in_axes=(None, None, 0, None))
    reg_points = points[jax.random.permutation(k_points, points.shape[0])[: min(loss.regulariser_points, points.shape[0])]]
    u_reg, du_dt, grad_sq, _, ddet_dt = terms(params, reg_points, all_times, cfg)  # (T + E, P', ...)
    n_t = jnp.maximum(jnp.sum(weight_t), 1.0)

    def field(xs: Float[Array, "P D"], ts: Float[Array, " K"]) -> Float[Array, "K P D"]:
        return jax.vmap(lambda t: jax.vmap(lambda x: net.displacement(params, x, t, cfg))(xs))(ts)

    u = field(points, times.at[0].set(0.0))  # slot 0 (the baseline, no NCC term) at t = 0 is u(x, 0) of the identity term
    fixed = sample(volumes[0], points).reshape(b, n)
    moved = jax.vmap(lambda img, disp: sample(img, points + disp))(volumes, u).reshape(-1, b, n)
    ncc = jax.vmap(lambda m: jnp.mean(patch_ncc(fixed, m)))(moved)
    dissimilarity = jnp.sum(jnp.where(follow, 1.0 - ncc, 0.0))

    u0 = u[0]
    identity = jnp.mean(jnp.sum(jnp.square(u0), -1))
    spatial = jnp.sum(weight_t[:, None] * grad_sq) / (n_t * reg_points.shape[0])
    temporal = jnp.sum(weight_t[:, None] * jnp.sum(jnp.square(du_dt), -1)) / (n_t * reg_points.shape[0])
    monotonic = jnp.mean(monotonic_penalty(ddet_dt, weight_t))
    curvature = jnp.zeros(())
    if loss.curvature > 0:
        h = loss.curvature_step_years
        second = (field(reg_points, all_times - h) - 2.0 * u_reg + field(reg_points, all_times + h)) / h**2  # (T + E, P', D)
        curvature = jnp.sum(weight_t[:, None] * jnp.sum(jnp.square(second), -1)) / (n_t * reg_points.shape[0])
    total = (
        dissimilarity
        + loss.identity * identity
        + loss.spatial * spatial
        + loss.temporal * temporal
        + loss.monotonic * monotonic
        + loss.curvature * curvature
    )
    return Terms(total, dissimilarity, identity, spatial, temporal, monotonic, curvature)
