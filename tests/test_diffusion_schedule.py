"""The diffusion schedule and samplers against closed forms.

The samplers are checked with the exact prediction of a Gaussian data distribution N(mu, sigma^2) per
dimension, for which q(x_t) = N(a mu, a^2 sigma^2 + b^2) (a^2 = alpha_bar_t, b^2 = 1 - alpha_bar_t) and

    E[eps | x_t] = b (x_t - a mu) / (a^2 sigma^2 + b^2),    E[x0 | x_t] = mu + a sigma^2 (x_t - a mu) / (a^2 sigma^2 + b^2),

so a correct sampler started from N(0, I) at t = T-1 returns samples with mean mu and variance sigma^2, up to
its discretisation error (and, for a stochastic one, Monte-Carlo error). The deterministic samplers are fed
noise standardised to mean 0 and variance 1 exactly: they are affine in x_T for this model, so the measured
moments then carry only the discretisation error.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longbrain_jax.diffusion.schedule import (
    Schedule,
    cosine_alpha_bar,
    ddim,
    ddim_invert,
    dpm_solver_2m,
    eps_from_x0,
    guided,
    q_sample,
    sample_timesteps,
    schedule,
    v_target,
    x0_eps_from_prediction,
    x0_eps_from_v,
    x0_from_eps,
)

MU = jnp.array([-1.0, 0.5, 2.0])
SIGMA = jnp.array([0.5, 1.0, 2.0])


def gaussian_model(sched: Schedule, kind: str, mu=MU, sigma=SIGMA):
    """The exact `kind` prediction ("eps" or "v") for data ~ N(mu, sigma^2) per dimension."""

    def model(x, t):
        ab = sched.alpha_bar[t]
        a, b = jnp.sqrt(ab), jnp.sqrt(1.0 - ab)
        var = ab * sigma**2 + 1.0 - ab
        eps = b * (x - a * mu) / var
        x0 = mu + a * sigma**2 * (x - a * mu) / var
        return eps if kind == "eps" else a * eps - b * x0

    return model


def standard_normal(key, n: int) -> jax.Array:
    """n draws of N(0, I_3), standardised per dimension to mean 0 and variance 1 exactly."""
    z = jax.random.normal(key, (n, 3))
    return (z - z.mean(0)) / z.std(0)


def moment_errors(samples: jax.Array) -> tuple[float, float]:
    """(max |mean - mu|, max |std / sigma - 1|) over the dimensions."""
    return float(jnp.abs(samples.mean(0) - MU).max()), float(jnp.abs(samples.std(0) / SIGMA - 1.0).max())


# -- schedules ----------------------------------------------------------------------
def test_cosine_alpha_bar_is_decreasing_in_unit_interval_and_matches_closed_form():
    T, s = 1000, 0.008
    ab = cosine_alpha_bar(T, s)
    assert ab.shape == (T,) and ab.dtype == np.float32
    assert np.all(np.diff(ab) < 0) and np.all(ab > 0) and np.all(ab < 1)
    f = lambda u: np.cos((u / T + s) / (1 + s) * np.pi / 2) ** 2
    t = np.arange(T, dtype=np.float64)
    np.testing.assert_allclose(ab[:-1], (f(t + 1) / f(0))[:-1], rtol=1e-5, atol=1e-12)  # betas below 0.999
    np.testing.assert_allclose(ab[-1], ab[-2] * (1 - 0.999), rtol=1e-5)  # the last beta (1) is clipped
    sched = schedule(T, "cosine")
    assert sched.alpha_bar.dtype == jnp.float32 and sched.num_steps == T


def test_linear_schedule_and_bad_arguments():
    ab = np.asarray(schedule(1000, "linear").alpha_bar)
    np.testing.assert_allclose(ab, np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)), rtol=1e-5)
    short = np.asarray(schedule(20, "linear").alpha_bar)  # betas 5e-3..1, the last clipped at 0.999
    assert np.all(np.diff(short) < 0) and short[0] == pytest.approx(1 - 5e-3)
    np.testing.assert_allclose(short[-1], short[-2] * (1 - 0.999), rtol=1e-5)
    with pytest.raises(ValueError, match="'sigmoid'"):
        schedule(1000, "sigmoid")
    with pytest.raises(ValueError, match="got 1"):
        schedule(1, "cosine")


def test_sample_timesteps_are_evenly_spaced_unique_and_decreasing():
    for total, n in [(1000, 50), (1000, 1000), (1000, 7), (10, 3)]:
        ts = sample_timesteps(total, n)
        assert len(ts) == n and ts[0] == total - 1 and ts[-1] == 0
        assert np.all(np.diff(ts) < 0)
        assert np.abs(np.diff(ts) + (total - 1) / (n - 1)).max() <= 1  # even, up to rounding
    assert sample_timesteps(1000, 1).tolist() == [999]
    with pytest.raises(ValueError, match="got 1001"):
        sample_timesteps(1000, 1001)


# -- forward process and conversions -----------------------------------------------
def test_q_sample_matches_its_closed_form_marginal(key):
    """q(x_t | x0) = N(sqrt(ab) x0, (1 - ab) I): with 20000 draws the sample mean is within 5 standard errors
    sqrt((1 - ab) / n) and the sample variance within 5 standard errors (1 - ab) sqrt(2 / n)."""
    sched = schedule(1000)
    n, x0 = 20000, jnp.array([-1.0, 0.5, 2.0])
    ts = jnp.array([0, 100, 500, 900, 999])
    noise = jax.random.normal(key, (len(ts), n, 3))
    xt = jax.vmap(lambda t, e: q_sample(sched, x0, t, e))(ts, noise)  # (5, n, 3)
    ab = sched.alpha_bar[ts][:, None]
    assert jnp.all(jnp.abs(xt.mean(1) - jnp.sqrt(ab) * x0) <= 5 * jnp.sqrt((1 - ab) / n))
    assert jnp.all(jnp.abs(xt.var(1) - (1 - ab)) <= 5 * (1 - ab) * np.sqrt(2 / n))


def test_conversions_are_mutually_inverse(key):
    """x0 <-> eps <-> v round trips to 1e-5 (float32; measured at most 6.4e-6, from eps_from_x0 at t = 1,
    which divides by sqrt(1 - ab) = 9e-3). x0_from_eps divides by sqrt(ab), 5e-5 at t = T-1, so t stays <= 990."""
    sched = schedule(1000)
    k0, k1 = jax.random.split(key)
    x0, eps = jax.random.normal(k0, (8,)), jax.random.normal(k1, (8,))
    for t in [0, 1, 10, 500, 900, 990]:
        xt = q_sample(sched, x0, t, eps)
        np.testing.assert_allclose(x0_from_eps(sched, xt, t, eps), x0, atol=1e-5)
        np.testing.assert_allclose(eps_from_x0(sched, xt, t, x0), eps, atol=1e-5)
        v = v_target(sched, x0, t, eps)
        for got, want in zip(x0_eps_from_v(sched, xt, t, v), (x0, eps)):
            np.testing.assert_allclose(got, want, atol=1e-5)
        for kind, prediction in [("eps", eps), ("v", v)]:
            for got, want in zip(x0_eps_from_prediction(sched, xt, t, prediction, kind), (x0, eps)):
                np.testing.assert_allclose(got, want, atol=1e-5)
    with pytest.raises(ValueError, match="'x0'"):
        x0_eps_from_prediction(sched, x0, 0, x0, "x0")


def test_exact_v_model_agrees_with_exact_eps_model(key):
    sched = schedule(1000)
    x = jax.random.normal(key, (3,))
    for t in [0, 500, 999]:
        from_eps = x0_eps_from_prediction(sched, x, t, gaussian_model(sched, "eps")(x, t), "eps")
        from_v = x0_eps_from_prediction(sched, x, t, gaussian_model(sched, "v")(x, t), "v")
        np.testing.assert_allclose(from_v[1], from_eps[1], atol=1e-5)
        np.testing.assert_allclose(from_v[0], from_eps[0], atol=2e-5 / np.sqrt(float(sched.alpha_bar[t])))


# -- samplers -----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["eps", "v"])
def test_ddim_recovers_gaussian_moments(key, kind):
    """Deterministic DDIM from standardised N(0, I) noise (4096 x 3), cosine schedule. Measured (eps and v
    alike): |mean - mu| <= 2e-4; |std / sigma - 1| = 0.031 at 50 steps and 0.0078 at 200 (first order)."""
    sched = schedule(1000)
    z = standard_normal(key, 4096)
    model = gaussian_model(sched, kind)
    for n, std_tol in [(50, 0.05), (200, 0.015)]:
        ts = sample_timesteps(1000, n)
        out = jax.jit(jax.vmap(lambda x, ts=ts: ddim(model, x, sched, ts, kind)))(z)
        mean_err, std_err = moment_errors(out)
        assert mean_err < 2e-3 and std_err < std_tol, (n, mean_err, std_err)


def test_ddim_with_eta_recovers_gaussian_moments(key):
    """Ancestral DDIM (eta = 1, 200 steps) from N(0, I) noise, 8192 x 3 samples: the mean within 4 standard
    errors sigma / sqrt(n) (measured 1.4), the std within 5% (measured 1.9%, of which ~0.8% Monte Carlo)."""
    sched = schedule(1000)
    k_noise, k_sampler = jax.random.split(key)
    n = 8192
    z = jax.random.normal(k_noise, (n, 3))
    model = gaussian_model(sched, "eps")
    ts = sample_timesteps(1000, 200)
    out = jax.jit(jax.vmap(lambda x, k: ddim(model, x, sched, ts, eta=1.0, key=k)))(z, jax.random.split(k_sampler, n))
    assert jnp.all(jnp.abs(out.mean(0) - MU) < 4 * SIGMA / np.sqrt(n)), out.mean(0)
    assert moment_errors(out)[1] < 0.05
    with pytest.raises(ValueError, match="needs a PRNG key"):
        ddim(model, z[0], sched, ts, eta=1.0)


def test_ddim_clip_bounds_the_output(key):
    sched = schedule(1000)
    out = ddim(
        gaussian_model(sched, "eps"), 3 * jax.random.normal(key, (3,)), sched, sample_timesteps(1000, 10), clip=0.7
    )
    assert jnp.all(jnp.abs(out) <= 0.7)
    with pytest.raises(ValueError, match="strictly decreasing"):
        ddim(gaussian_model(sched, "eps"), out, sched, np.array([10, 20, 0]))


@pytest.mark.parametrize("kind", ["eps", "v"])
def test_dpm_solver_2m_recovers_gaussian_moments(key, kind):
    """DPM-Solver++(2M) from standardised N(0, I) noise on `sample_timesteps`. Measured |std / sigma - 1|:
    0.100 at 20 steps (sigma = 0.5; the last interval, t = 53 -> 0, spans 2.7 in log-SNR and extrapolates
    with 1/(2r) = 2.1) and 0.017 at 50 steps; |mean - mu| <= 2e-4."""
    sched = schedule(1000)
    z = standard_normal(key, 4096)
    model = gaussian_model(sched, kind)
    for n, std_tol in [(20, 0.15), (50, 0.03)]:
        ts = sample_timesteps(1000, n)
        out = jax.jit(jax.vmap(lambda x, ts=ts: dpm_solver_2m(model, x, sched, ts, kind)))(z)
        mean_err, std_err = moment_errors(out)
        assert mean_err < 2e-3 and std_err < std_tol, (n, mean_err, std_err)


def test_dpm_solver_2m_is_second_order_on_a_log_snr_grid(key):
    """On 20 steps evenly spaced in log-SNR (t = 990 .. 0, started from the exact marginal there) DPM-Solver++(2M)
    is far more accurate than first-order DDIM on the same grid: measured |std / sigma - 1| 0.014 against 0.115."""
    sched = schedule(1000)
    ab = np.asarray(sched.alpha_bar, np.float64)
    lam = 0.5 * np.log(ab / (1 - ab))
    ts = np.array([np.argmin(np.abs(lam - target)) for target in np.linspace(lam[990], lam[0], 20)])
    assert len(np.unique(ts)) == 20
    a_T = jnp.sqrt(sched.alpha_bar[ts[0]])
    x_T = a_T * MU + jnp.sqrt(a_T**2 * SIGMA**2 + 1 - a_T**2) * standard_normal(key, 4096)
    model = gaussian_model(sched, "eps")
    dpm = moment_errors(jax.jit(jax.vmap(lambda x: dpm_solver_2m(model, x, sched, ts)))(x_T))
    first = moment_errors(jax.jit(jax.vmap(lambda x: ddim(model, x, sched, ts)))(x_T))
    assert dpm[0] < 2e-3 and dpm[1] < 0.03 and first[1] > 0.08, (dpm, first)


@pytest.mark.parametrize("kind", ["eps", "v"])
def test_ddim_inverts_its_own_encoding(key, kind):
    """ddim(ddim_invert(x0)) = x0 up to the step error: 200 steps, 64 draws of N(mu, sigma^2); measured
    max |error| = 0.18 (0.09 sigma; 1.0 at 20 steps, 0.027 sigma at 1000), and the encoding is within 0.11 of
    the exact probability-flow latent (x0 - mu) / sigma."""
    sched = schedule(1000)
    x0 = MU + SIGMA * jax.random.normal(key, (64, 3))
    model = gaussian_model(sched, kind)
    ts = sample_timesteps(1000, 200)
    x_T = jax.jit(jax.vmap(lambda x: ddim_invert(model, x, sched, ts, kind)))(x0)
    back = jax.jit(jax.vmap(lambda x: ddim(model, x, sched, ts, kind)))(x_T)
    assert float(jnp.abs(back - x0).max()) < 0.5
    assert float(jnp.abs(x_T - (x0 - MU) / SIGMA).max()) < 0.33


def test_guided_scale_one_is_the_conditional_model(key):
    sched = schedule(1000)
    cond, uncond = gaussian_model(sched, "eps"), gaussian_model(sched, "eps", mu=-MU, sigma=2 * SIGMA)
    x, t = jax.random.normal(key, (3,)), jnp.int32(400)
    np.testing.assert_allclose(guided(cond, uncond, 1.0)(x, t), cond(x, t), atol=1e-6)
    np.testing.assert_allclose(guided(cond, uncond, 0.0)(x, t), uncond(x, t), atol=1e-6)
    np.testing.assert_allclose(guided(cond, uncond, 3.0)(x, t), 3 * cond(x, t) - 2 * uncond(x, t), atol=1e-5)
