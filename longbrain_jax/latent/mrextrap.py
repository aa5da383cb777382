"""MRExtrap: a straight line per subject in autoencoder latent space, with a population prior.

Each latent coordinate of subject i follows z(a) = zbar_i + beta_i (a - abar_i), a the age
in years and abar_i the mean age of the subject's scans used. MRExtrap (Kapoor, Macke,
Baumgartner) fits beta_i by least squares, which needs >= 2 scans; its follow-up puts
a population prior on the slope so that one scan suffices, updated as scans arrive.

With a flat prior on the intercept and beta ~ N(m, s^2) per latent coordinate, noise
variance sigma^2, the posterior of the slope is Gaussian with

    precision  = Sxx / sigma^2 + 1 / s^2
    mean       = (Sxy / sigma^2 + m / s^2) / precision

where Sxx = sum_j (a_j - abar)^2 and Sxy = sum_j (a_j - abar)(z_j - zbar) over the
subject's observed scans, and the intercept at abar is zbar. One scan: Sxx = 0, so the
slope is the prior mean and the line passes through the scan. A flat prior (s -> inf)
gives ordinary least squares. Adding scans is the Bayesian update: the posterior
after k scans is this formula on the first k.

`estimate_prior` gets (m, s^2, sigma^2) from training subjects by the method of
moments: m the mean OLS slope, s^2 the variance of the OLS slopes minus their mean
sampling variance sigma^2 / Sxx, sigma^2 the pooled residual variance. Everything is
closed form and vectorised over subjects (N) and latent coordinates (L).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jaxtyping import Array, Bool, Float


class Lines(NamedTuple):
    """Per-subject latent lines: z(a) = center_value + slope (a - center_age)."""

    center_age: Float[Array, " N"]
    center_value: Float[Array, "N L"]
    slope: Float[Array, "N L"]
    slope_var: Float[Array, "N L"]  # posterior variance of the slope (inf for OLS with < 2 scans)


class SlopePrior(NamedTuple):
    """beta ~ N(mean, var) per latent coordinate; noise variance `noise_var` (each (L,) or (N, L))."""

    mean: Array
    var: Array
    noise_var: Array


def _moments(latents: Float[Array, "N T L"], ages: Float[Array, "N T"], mask: Bool[Array, "N T"]):
    w = mask.astype(latents.dtype)
    n = jnp.sum(w, axis=1)
    abar = jnp.sum(w * ages, axis=1) / jnp.maximum(n, 1.0)
    zbar = jnp.einsum("nt,ntl->nl", w, latents) / jnp.maximum(n, 1.0)[:, None]
    da = w * (ages - abar[:, None])
    sxx = jnp.sum(da * (ages - abar[:, None]), axis=1)
    sxy = jnp.einsum("nt,ntl->nl", da, latents - zbar[:, None, :])
    return n, abar, zbar, sxx, sxy


def fit_lines(latents: Float[Array, "N T L"], ages: Float[Array, "N T"], mask: Bool[Array, "N T"]) -> Lines:
    """Ordinary least squares per subject and coordinate over the scans in `mask`.

    A subject with one scan gets slope 0 and `slope_var` inf (use a prior for it).
    """
    n, abar, zbar, sxx, sxy = _moments(latents, ages, mask)
    ok = sxx > 0
    slope = jnp.where(ok[:, None], sxy / jnp.where(ok, sxx, 1.0)[:, None], 0.0)
    var = jnp.where(ok[:, None], jnp.full_like(slope, jnp.nan), jnp.inf)  # no noise model without a prior
    return Lines(abar, zbar, slope, var)


def fit_lines_with_prior(
    latents: Float[Array, "N T L"], ages: Float[Array, "N T"], mask: Bool[Array, "N T"], prior: SlopePrior
) -> Lines:
    """Posterior-mean lines under `prior` (see the module docstring)."""
    n, abar, zbar, sxx, sxy = _moments(latents, ages, mask)
    precision = sxx[:, None] / prior.noise_var + 1.0 / prior.var
    slope = (sxy / prior.noise_var + prior.mean / prior.var) / precision
    return Lines(abar, zbar, slope, 1.0 / precision)


def estimate_prior(
    latents: Float[Array, "N T L"], ages: Float[Array, "N T"], mask: Bool[Array, "N T"], min_var: float = 1e-8
) -> SlopePrior:
    """Population slope prior from subjects with >= 3 scans (>= 2 if none has 3), per coordinate."""
    n, abar, zbar, sxx, sxy = _moments(latents, ages, mask)
    use = n >= 3 if bool(jnp.any(n >= 3)) else n >= 2
    if not bool(jnp.any(use)):
        raise ValueError("estimating a slope prior needs at least one subject with two or more scans")
    lines = fit_lines(latents, ages, mask)
    resid = mask[..., None].astype(latents.dtype) * (latents - lines.center_value[:, None] - lines.slope[:, None] * (ages - abar[:, None])[..., None])
    dof = jnp.sum(jnp.where(use, n - 2.0, 0.0))
    u = use.astype(latents.dtype)[:, None]
    if float(dof) > 0:
        noise_var = jnp.sum(u * jnp.sum(resid**2, axis=1), axis=0) / dof
    else:  # only two-scan subjects: lines fit exactly, no residual; borrow the between-subject spread
        noise_var = jnp.full(latents.shape[-1], min_var)
    count = jnp.sum(u)
    mean = jnp.sum(u * lines.slope, axis=0) / count
    spread = jnp.sum(u * (lines.slope - mean) ** 2, axis=0) / jnp.maximum(count - 1.0, 1.0)
    sampling = jnp.sum(u * (noise_var / jnp.where(use, sxx, 1.0)[:, None]), axis=0) / count
    var = jnp.maximum(spread - sampling, min_var)
    return SlopePrior(mean, var, jnp.maximum(noise_var, min_var))


def predict(lines: Lines, ages: Float[Array, "N K"]) -> Float[Array, "N K L"]:
    """Latents at `ages` (years) on each subject's line."""
    return lines.center_value[:, None, :] + lines.slope[:, None, :] * (ages - lines.center_age[:, None])[..., None]


def interpolate(z1: Float[Array, "*s"], z2: Float[Array, "*s"], alphas: Float[Array, " K"]) -> Float[Array, "K *s"]:
    """(1 - alpha) z1 + alpha z2 for each alpha: the paper's linearity check decodes these."""
    a = alphas.reshape((-1,) + (1,) * z1.ndim)
    return (1.0 - a) * z1[None] + a * z2[None]
