"""Noise schedules and samplers of a denoising diffusion model, written out in pure JAX.

Discrete time with `T` steps, indices t = 0..T-1, t = 0 the least noisy. The schedule is the
cumulative signal fraction `alpha_bar` (T,), strictly decreasing in (0, 1); with

    a_t = sqrt(alpha_bar_t),  b_t = sqrt(1 - alpha_bar_t)   (a_t^2 + b_t^2 = 1, unitless)

the forward (noising) marginal is q(x_t | x_0) = N(a_t x_0, b_t^2 I), i.e.

    x_t = a_t x_0 + b_t eps,  eps ~ N(0, I),

for data x_0 of any shape, in the data's units (every function here takes one sample and a scalar int
time index t; vmap for batches). A network predicts either `eps` or the velocity
v = a_t eps - b_t x_0 (Salimans & Ho 2022); both convert to the pair (x0, eps):

    x0  = (x_t - b_t eps) / a_t                 eps = (x_t - a_t x0) / b_t
    x0  = a_t x_t - b_t v                       eps = b_t x_t + a_t v

Samplers run over a decreasing list of indices `timesteps` = [t_0 > t_1 > ... > t_{n-1}] (see
`sample_timesteps`), start from x_{t_0} ~ N(0, I) and make exactly n model calls:

* `ddim` (Song et al. 2021): from t to s < t, with (x0, eps) predicted at (x_t, t),
      x_s = a_s x0 + sqrt(b_s^2 - sigma^2) eps + sigma z,
      sigma = eta * sqrt((1 - ab_s) / (1 - ab_t)) * sqrt(1 - ab_t / ab_s),
  eta = 0 deterministic (the probability-flow ODE, Euler in sigma/alpha), eta = 1 ancestral (DDPM).
* `dpm_solver_2m`: DPM-Solver++(2M) (Lu et al. 2022), multistep second order in the data prediction
  D = x0 with half-log-SNR lambda_t = log(a_t / b_t) and h = lambda_s - lambda_t:
      x_s = (b_s / b_t) x_t - a_s expm1(-h) D',
  D' = D_t at the first step (first order, = DDIM), afterwards D' = (1 + 1/(2r)) D_t - 1/(2r) D_prev
  with r = h_prev / h.
* Both samplers end the same way: the last call, at t_{n-1}, returns the predicted x0 there (a step to
  alpha_bar = 1, "time 0", which is first order whatever the sampler, as in k-diffusion's and
  diffusers' lower-order final step). With `sample_timesteps` the last index is t = 0.
  `sample_timesteps` spaces indices evenly in t, which for the cosine schedule leaves long intervals in
  log-SNR at both ends (t = T-1 has alpha_bar = 2.4e-9 from the clipped last beta; at 20 steps the last
  interval 53 -> 0 spans 2.7 in lambda), where the second-order extrapolation is least accurate; a grid
  even in lambda suits `dpm_solver_2m` better (any strictly decreasing indices are accepted).
* `ddim_invert` runs the deterministic DDIM steps backwards (clean -> t_{n-1} -> ... -> t_0), each
  step s -> t using the model at (x_s, t) in place of the unknown (x_t, t), so that
  ddim(ddim_invert(x0)) = x0 up to the step size's error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

Model = Callable[[Array, Array], Array]
"""`model(x_t, t) -> prediction`, x_t of the data's shape, t an int32 scalar, prediction of x_t's shape."""

KINDS = ("eps", "v")


# -- schedules ----------------------------------------------------------------------
def cosine_alpha_bar(num_steps: int, s: float = 0.008) -> np.ndarray:
    """Cosine schedule (Nichol & Dhariwal 2021): alpha_bar_t = f(t+1)/f(0), f(u) = cos(((u/T)+s)/(1+s) pi/2)^2,
    the betas 1 - alpha_bar_t/alpha_bar_{t-1} clipped at 0.999 (the last one is 1 unclipped); float32 (T,)."""
    t = np.arange(num_steps + 1, dtype=np.float64)
    f = np.cos((t / num_steps + s) / (1 + s) * np.pi / 2) ** 2
    betas = np.minimum(1.0 - f[1:] / f[:-1], 0.999)
    return np.cumprod(1.0 - betas).astype(np.float32)


def linear_alpha_bar(num_steps: int) -> np.ndarray:
    """DDPM's linear betas (Ho et al. 2020), 1e-4..0.02 at T = 1000 and scaled by 1000/T otherwise
    (clipped at 0.999, which only short schedules, T <= 20, reach); float32 (T,)."""
    scale = 1000.0 / num_steps
    betas = np.minimum(np.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=np.float64), 0.999)
    return np.cumprod(1.0 - betas).astype(np.float32)


class Schedule(NamedTuple):
    """A discrete noise schedule: `alpha_bar[t]`, the signal variance fraction at index t (a pytree)."""

    alpha_bar: Float[Array, " num_steps"]

    @property
    def num_steps(self) -> int:
        return self.alpha_bar.shape[0]


def schedule(num_steps: int = 1000, kind: str = "cosine") -> Schedule:
    """The `kind` ("cosine" or "linear") schedule of `num_steps` (>= 2) steps."""
    if num_steps < 2:
        raise ValueError(f"num_steps must be at least 2, got {num_steps}")
    if kind == "cosine":
        ab = cosine_alpha_bar(num_steps)
    elif kind == "linear":
        ab = linear_alpha_bar(num_steps)
    else:
        raise ValueError(f"unknown schedule kind {kind!r}; expected 'cosine' or 'linear'")
    return Schedule(jnp.asarray(ab, jnp.float32))


def _ab(sched: Schedule, t: Int[Array, ""] | int) -> tuple[Array, Array]:
    """(a_t, b_t) = (sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t))."""
    ab = sched.alpha_bar[t]
    return jnp.sqrt(ab), jnp.sqrt(1.0 - ab)


# -- forward process and conversions -----------------------------------------------
def q_sample(
    sched: Schedule, x0: Float[Array, "*shape"], t: Int[Array, ""] | int, noise: Float[Array, "*shape"]
) -> Float[Array, "*shape"]:
    """A draw of q(x_t | x0): sqrt(ab_t) x0 + sqrt(1 - ab_t) noise, noise ~ N(0, I) given (scalar t)."""
    a, b = _ab(sched, t)
    return a * x0 + b * noise


def x0_from_eps(
    sched: Schedule, x_t: Float[Array, "*shape"], t: Int[Array, ""] | int, eps: Float[Array, "*shape"]
) -> Float[Array, "*shape"]:
    """x0 = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t)."""
    a, b = _ab(sched, t)
    return (x_t - b * eps) / a


def eps_from_x0(
    sched: Schedule, x_t: Float[Array, "*shape"], t: Int[Array, ""] | int, x0: Float[Array, "*shape"]
) -> Float[Array, "*shape"]:
    """eps = (x_t - sqrt(ab_t) x0) / sqrt(1 - ab_t)."""
    a, b = _ab(sched, t)
    return (x_t - a * x0) / b


def v_target(
    sched: Schedule, x0: Float[Array, "*shape"], t: Int[Array, ""] | int, eps: Float[Array, "*shape"]
) -> Float[Array, "*shape"]:
    """The velocity v = sqrt(ab_t) eps - sqrt(1 - ab_t) x0 of x_t = q_sample(sched, x0, t, eps)."""
    a, b = _ab(sched, t)
    return a * eps - b * x0


def x0_eps_from_v(
    sched: Schedule, x_t: Float[Array, "*shape"], t: Int[Array, ""] | int, v: Float[Array, "*shape"]
) -> tuple[Float[Array, "*shape"], Float[Array, "*shape"]]:
    """(x0, eps) = (sqrt(ab_t) x_t - sqrt(1 - ab_t) v, sqrt(1 - ab_t) x_t + sqrt(ab_t) v)."""
    a, b = _ab(sched, t)
    return a * x_t - b * v, b * x_t + a * v


def x0_eps_from_prediction(
    sched: Schedule, x_t: Float[Array, "*shape"], t: Int[Array, ""] | int, prediction: Float[Array, "*shape"], kind: str
) -> tuple[Float[Array, "*shape"], Float[Array, "*shape"]]:
    """(x0, eps) from a network's `prediction` at (x_t, t) of `kind` "eps" or "v"."""
    if kind == "eps":
        return x0_from_eps(sched, x_t, t, prediction), prediction
    if kind == "v":
        return x0_eps_from_v(sched, x_t, t, prediction)
    raise ValueError(f"unknown prediction kind {kind!r}; expected one of {KINDS}")


# -- samplers -----------------------------------------------------------------------
def sample_timesteps(num_steps_total: int, num_sample_steps: int) -> np.ndarray:
    """`num_sample_steps` evenly spaced indices from T-1 down to 0 inclusive, round(linspace(T-1, 0, n)),
    unique and decreasing (int64)."""
    if not 1 <= num_sample_steps <= num_steps_total:
        raise ValueError(f"num_sample_steps must be in 1..{num_steps_total}, got {num_sample_steps}")
    return np.round(np.linspace(num_steps_total - 1, 0, num_sample_steps)).astype(np.int64)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown prediction kind {kind!r}; expected one of {KINDS}")


def _timesteps(timesteps: Int[Array, " n"] | np.ndarray) -> Array:
    """The sampling indices as int32, checked (when not traced) to be non-empty, 1-D and strictly decreasing."""
    try:
        host = np.asarray(timesteps)
    except jax.errors.TracerArrayConversionError:
        host = None
    if host is not None:
        if host.ndim != 1 or host.shape[0] < 1:
            raise ValueError(f"timesteps must be a non-empty 1-D array, got shape {host.shape}")
        if np.any(np.diff(host) >= 0):
            raise ValueError(f"timesteps must be strictly decreasing, got {host.tolist()}")
    return jnp.asarray(timesteps, jnp.int32)


def _predict(model: Model, sched: Schedule, x: Array, t: Array, kind: str, clip: float | None) -> tuple[Array, Array]:
    """(x0, eps) at (x, t); with `clip`, x0 clipped to [-clip, clip] and eps recomputed to match it."""
    x0, eps = x0_eps_from_prediction(sched, x, t, model(x, t), kind)
    if clip is not None:
        x0 = jnp.clip(x0, -clip, clip)
        eps = eps_from_x0(sched, x, t, x0)
    return x0, eps


def ddim(
    model: Model,
    x_T: Float[Array, "*shape"],
    sched: Schedule,
    timesteps: Int[Array, " n"] | np.ndarray,
    kind: str = "eps",
    eta: float = 0.0,
    key: Array | None = None,
    clip: float | None = None,
) -> Float[Array, "*shape"]:
    """DDIM sampling from x_T at timesteps[0] down the decreasing `timesteps`; returns the predicted x0 at
    timesteps[-1] (n model calls). eta = 0 deterministic, eta > 0 stochastic and needs `key`."""
    _check_kind(kind)
    ts = _timesteps(timesteps)
    if key is None and eta != 0:
        raise ValueError(f"ddim with eta={eta} needs a PRNG key")
    n_steps = ts.shape[0] - 1
    keys = jax.random.split(key, max(n_steps, 1))[:n_steps] if key is not None else None
    dtype = x_T.dtype

    def step(x, xs):
        t, s, k = xs
        x0, eps = _predict(model, sched, x, t, kind, clip)
        ab_t, ab_s = sched.alpha_bar[t], sched.alpha_bar[s]
        sigma = eta * jnp.sqrt((1.0 - ab_s) / (1.0 - ab_t) * (1.0 - ab_t / ab_s))
        x_s = jnp.sqrt(ab_s) * x0 + jnp.sqrt(jnp.maximum(1.0 - ab_s - sigma**2, 0.0)) * eps
        if k is not None:
            x_s = x_s + sigma * jax.random.normal(k, x.shape, dtype)
        return x_s.astype(dtype), None

    x, _ = jax.lax.scan(step, x_T, (ts[:-1], ts[1:], keys))
    x0, _ = _predict(model, sched, x, ts[-1], kind, clip)
    return x0.astype(dtype)


def ddim_invert(
    model: Model,
    x0: Float[Array, "*shape"],
    sched: Schedule,
    timesteps: Int[Array, " n"] | np.ndarray,
    kind: str = "eps",
) -> Float[Array, "*shape"]:
    """Deterministic DDIM encoding of x0 into x_T at timesteps[0], the steps of `ddim(..., eta=0)` over the
    same `timesteps` run backwards: clean -> timesteps[-1] -> ... -> timesteps[0] (n model calls), each step
    s -> t (t noisier) x_t = a_t (x_s - b_s eps) / a_s + b_t eps with eps predicted at (x_s, t)."""
    _check_kind(kind)
    ts = _timesteps(timesteps)
    dtype = x0.dtype
    # indices increasing in noise; the first "from" level is clean data, alpha_bar = 1
    to = ts[::-1]
    ab_from = jnp.concatenate([jnp.ones((1,), sched.alpha_bar.dtype), sched.alpha_bar[to[:-1]]])

    def step(x, xs):
        t, ab_s = xs
        _, eps = x0_eps_from_prediction(sched, x, t, model(x, t), kind)
        ab_t = sched.alpha_bar[t]
        x_t = jnp.sqrt(ab_t) * (x - jnp.sqrt(1.0 - ab_s) * eps) / jnp.sqrt(ab_s) + jnp.sqrt(1.0 - ab_t) * eps
        return x_t.astype(dtype), None

    x, _ = jax.lax.scan(step, x0, (to, ab_from))
    return x


def dpm_solver_2m(
    model: Model,
    x_T: Float[Array, "*shape"],
    sched: Schedule,
    timesteps: Int[Array, " n"] | np.ndarray,
    kind: str = "eps",
    clip: float | None = None,
) -> Float[Array, "*shape"]:
    """DPM-Solver++(2M) from x_T at timesteps[0] down the decreasing `timesteps` (first step first order);
    returns the predicted x0 at timesteps[-1] (n model calls, the last a first-order step to time 0).
    `clip` as in `ddim`."""
    _check_kind(kind)
    ts = _timesteps(timesteps)
    dtype = x_T.dtype
    ab = sched.alpha_bar[ts]
    lam = 0.5 * (jnp.log(ab) - jnp.log1p(-ab))  # log(a / b)
    h = lam[1:] - lam[:-1]  # > 0: the log-SNR grows towards the data
    h_prev = jnp.concatenate([h[:1], h[:-1]])  # the first entry is unused (first order there)
    first = jnp.arange(h.shape[0]) == 0

    def step(carry, xs):
        x, d_prev = carry
        t, ab_t, ab_s, h_i, h_p, is_first = xs
        d, _ = _predict(model, sched, x, t, kind, clip)
        c = 0.5 * h_i / h_p  # 1 / (2r)
        d_mix = jnp.where(is_first, d, (1.0 + c) * d - c * d_prev)
        x_s = jnp.sqrt((1.0 - ab_s) / (1.0 - ab_t)) * x - jnp.sqrt(ab_s) * jnp.expm1(-h_i) * d_mix
        return (x_s.astype(dtype), d.astype(dtype)), None

    xs = (ts[:-1], ab[:-1], ab[1:], h, h_prev, first)
    (x, _), _ = jax.lax.scan(step, (x_T, jnp.zeros_like(x_T)), xs)
    x0, _ = _predict(model, sched, x, ts[-1], kind, clip)
    return x0.astype(dtype)


# -- guidance -----------------------------------------------------------------------
def guided(model_cond: Model, model_uncond: Model, scale: float) -> Model:
    """Classifier-free guidance (Ho & Salimans 2022): uncond + scale (cond - uncond); scale 1 is `model_cond`,
    0 is `model_uncond`. Works for eps and v predictions alike (both are affine in the score)."""

    def model(x: Array, t: Array) -> Array:
        uncond = model_uncond(x, t)
        return uncond + scale * (model_cond(x, t) - uncond)

    return model
