"""Brain-age trajectories: healthy and dementia-like drift (Aulakh et al., MICCAI 2025 LMID).

Brain age BA follows

    dBA/dt = 1 + alpha * (sigmoid(r (t - t_start)) - sigmoid(r (t - t_end))) + eps(t),
    BA(t0) = t0,

with per-subject parameters drawn from a group prior. Dementia-like: alpha ~ N(1.10,
0.05), r ~ N(0.25, 0.05), t_start ~ N(55, 2.5); healthy: alpha ~ N(0, 0.10), r ~ N(0.25,
0.05), t_start ~ N(55, 1.0), as in the paper.

**Choice of t_end** (not legible in the paper): t_end = t_start + 7.5 years. Then the
dementia-like brain age exceeds chronological age at 80 by 7.2 years at the prior
means (5th-95th percentile over the prior: 5.8 to 8.1 years), inside the 5-10 year
gap reported for Alzheimer's disease, while healthy subjects stay within about +-1.1
years. (`tests/test_simulate.py` checks this against the sampled population.)

**eps(t)**: a smooth zero-mean perturbation, a sum of `noise_terms` sinusoids with
random periods (5-20 years) and phases and amplitude `noise_sd`, so trajectories
differ within a group but brain age stays smooth and strictly increasing.

The integral has a closed form (softplus terms), so brain age at any age is exact.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float


@dataclasses.dataclass(frozen=True)
class DriftPrior:
    """Normal priors of one group's drift parameters (mean, sd)."""

    alpha: tuple[float, float]
    r: tuple[float, float]
    t_start: tuple[float, float]


@dataclasses.dataclass(frozen=True)
class BrainAgeConfig:
    """Brain-age model settings (defaults from the paper; see the module docstring).

    **Arguments:**

    - `healthy`, `dementia`: the groups' drift priors.
    - `duration`: t_end - t_start in years (7.5, chosen as documented above).
    - `onset_age`: t0, where brain age equals age (the youngest simulated age).
    - `noise_sd`, `noise_terms`: the smooth perturbation eps(t).
    - `min_r`: lower clip of the sampled steepness r (keeps the sigmoids sigmoids).
    """

    healthy: DriftPrior = DriftPrior(alpha=(0.0, 0.10), r=(0.25, 0.05), t_start=(55.0, 1.0))
    dementia: DriftPrior = DriftPrior(alpha=(1.10, 0.05), r=(0.25, 0.05), t_start=(55.0, 2.5))
    duration: float = 7.5
    onset_age: float = 50.0
    noise_sd: float = 0.02
    noise_terms: int = 3
    min_r: float = 0.05


class DriftParams(NamedTuple):
    """One subject's drift parameters (each field may carry leading batch axes)."""

    alpha: Float[Array, ""]
    r: Float[Array, ""]
    t_start: Float[Array, ""]
    t_end: Float[Array, ""]
    noise_amplitude: Float[Array, " K"]
    noise_frequency: Float[Array, " K"]
    noise_phase: Float[Array, " K"]


def sample_drift(key: jax.Array, dementia: Bool[Array, ""], cfg: BrainAgeConfig = BrainAgeConfig()) -> DriftParams:
    """Draw one subject's drift parameters from its group's prior (vmap for many)."""
    k_alpha, k_r, k_start, k_amp, k_freq, k_phase = jax.random.split(key, 6)
    pick = lambda h, d: jnp.where(dementia, d, h)  # noqa: E731
    mean_sd = lambda field: (  # noqa: E731
        pick(getattr(cfg.healthy, field)[0], getattr(cfg.dementia, field)[0]),
        pick(getattr(cfg.healthy, field)[1], getattr(cfg.dementia, field)[1]),
    )
    draw = lambda k, field: mean_sd(field)[0] + mean_sd(field)[1] * jax.random.normal(k)  # noqa: E731
    t_start = draw(k_start, "t_start")
    periods = jax.random.uniform(k_freq, (cfg.noise_terms,), minval=5.0, maxval=20.0)
    return DriftParams(
        alpha=draw(k_alpha, "alpha"),
        r=jnp.maximum(draw(k_r, "r"), cfg.min_r),
        t_start=t_start,
        t_end=t_start + cfg.duration,
        noise_amplitude=cfg.noise_sd * jax.random.normal(k_amp, (cfg.noise_terms,)),
        noise_frequency=2 * jnp.pi / periods,
        noise_phase=jax.random.uniform(k_phase, (cfg.noise_terms,), maxval=2 * jnp.pi),
    )


def brain_age_rate(params: DriftParams, age: Float[Array, "..."]) -> Float[Array, "..."]:
    """dBA/dt at chronological `age` (years per year)."""
    a = jnp.asarray(age)[..., None]
    eps = jnp.sum(params.noise_amplitude * jnp.sin(params.noise_frequency * a + params.noise_phase), -1)
    s = jax.nn.sigmoid
    return 1.0 + params.alpha * (s(params.r * (age - params.t_start)) - s(params.r * (age - params.t_end))) + eps


def brain_age(params: DriftParams, age: Float[Array, "..."], onset_age: float = 50.0) -> Float[Array, "..."]:
    """Brain age at chronological `age`, BA(onset_age) = onset_age (closed form)."""
    age = jnp.asarray(age, jnp.float32)
    sp = jax.nn.softplus
    r = params.r
    window = lambda t: sp(r * (t - params.t_start)) - sp(r * (t - params.t_end))  # noqa: E731
    drift = params.alpha / r * (window(age) - window(jnp.float32(onset_age)))
    a = age[..., None]
    w, phi, amp = params.noise_frequency, params.noise_phase, params.noise_amplitude
    noise = jnp.sum(amp / w * (jnp.cos(w * onset_age + phi) - jnp.cos(w * a + phi)), -1)
    return age + drift + noise
