"""Regional atrophy as a diffeomorphism with prescribed Jacobian determinants.

Default annual volume changes at brain age 60 (healthy aging), midpoints of the
ranges reported in longitudinal MRI studies:

- hippocampus -1.0 %/yr, amygdala -0.8 %/yr (healthy aging after 60: about -0.5 to
  -1.5 %/yr; Fraser et al. 2015 meta-analysis; Fjell et al. 2009, 2013),
- lateral ventricles +3.0 %/yr (healthy about +2 to +4 %/yr; Resnick et al. 2003),
- cortical GM -0.5 %/yr, cerebral WM -0.3 %/yr, other subcortical GM -0.4 %/yr,
  cerebellum -0.3 %/yr, brainstem -0.2 %/yr, which make whole brain about -0.4 %/yr
  (healthy about -0.2 to -0.5 %/yr; Scahill et al. 2003; Fotenos et al. 2005).
- For reference, Alzheimer's disease: hippocampus -3 to -5 %/yr, ventricles +5 to
  +8 %/yr, whole brain -1 to -2 %/yr (Jack et al. 2004; Barnes et al. 2009).

Rates accelerate with age: they double every `doubling_years` (20) of brain age,
as atrophy curves steepen after 60 (Fjell et al. 2013). The anatomy is a function of
brain age BA only: region R's log-volume change from `onset_age` is

    log V_R(BA) - log V_R(onset) = log(1 + rate_R / 100) * g(BA),
    g(BA) = integral from onset_age to BA of 2 ** ((b - reference_age) / doubling_years) db,

so dementia-like subjects, whose brain age runs ahead, atrophy faster through the
same anatomy model (the paper's classes differ only in brain-age drift). An optional
extra medial-temporal atrophy for the dementia-like group (`disease_mtl_pct_per_year`,
off by default) adds hippocampus and amygdala loss per year after t_start.

Construction (`build_aging_flow`): the aging deformation F_g of the template is the
flow of a velocity field in g, recomputed from the current (already aged) anatomy at
every step: v = sum_R a_R grad psi_R with laplacian(psi_R) = w_R, the region's
indicator (zero Dirichlet boundary, solved exactly with a discrete sine transform),
and the a_R chosen so that each region's mean divergence is its log rate. A region's
volume then changes as exp(log(1 + rate) g) along the whole trajectory, F_g is a
diffeomorphism (a flow of smooth fields, integrated by scaling and squaring), and
|J| is smooth and monotone in g. The flow is tabulated once per template grid and
shared by every subject; `aging_maps` evaluates it at any g.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.fft
from jaxtyping import Array, Float

from longbrain_jax.atlas import REGIONS


@dataclasses.dataclass(frozen=True)
class AtrophyConfig:
    """Regional aging rates (%/yr at `reference_age`) and how they accelerate.

    **Arguments:**

    - `rates_pct_per_year`: (region name, %/yr) pairs; names from `template.REGIONS`.
    - `reference_age`: brain age the rates are given at.
    - `doubling_years`: rates double every this many years of brain age.
    - `onset_age`: brain age of the unaltered template anatomy.
    - `disease_mtl_pct_per_year`: extra hippocampus / amygdala change (%/yr, e.g.
      -2.0) for the dementia-like group after its t_start; 0 disables it.
    """

    rates_pct_per_year: tuple[tuple[str, float], ...] = (
        ("hippocampus", -1.0),
        ("amygdala", -0.8),
        ("lateral_ventricles", 3.0),
        ("cortical_gm", -0.5),
        ("cerebral_wm", -0.3),
        ("subcortical_gm", -0.4),
        ("cerebellum", -0.3),
        ("brainstem", -0.2),
    )
    reference_age: float = 60.0
    doubling_years: float = 20.0
    onset_age: float = 50.0
    disease_mtl_pct_per_year: float = 0.0

    def __post_init__(self):
        unknown = [name for name, _ in self.rates_pct_per_year if name not in REGIONS]
        if unknown:
            raise ValueError(f"unknown regions {unknown}; known: {sorted(REGIONS)}")
        if any(rate <= -100 for _, rate in self.rates_pct_per_year):
            raise ValueError("annual rates must be above -100 %")


def aging_profile(brain_age: Float[Array, "..."], cfg: AtrophyConfig = AtrophyConfig()) -> Float[Array, "..."]:
    """g(BA): accumulated rate-years since `onset_age` (1 rate-year = one year at `reference_age`)."""
    d = cfg.doubling_years / np.log(2.0)
    rate = lambda b: jnp.exp((b - cfg.reference_age) / d)  # noqa: E731
    return d * (rate(jnp.asarray(brain_age, jnp.float32)) - rate(cfg.onset_age))


def region_log_rates(cfg: AtrophyConfig = AtrophyConfig()) -> dict[str, float]:
    """log(1 + rate / 100) per region: the log-volume change per rate-year."""
    return {name: float(np.log1p(rate / 100.0)) for name, rate in cfg.rates_pct_per_year}


def solve_poisson_dirichlet(rhs: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """psi with the discrete laplacian(psi) = rhs and psi = 0 just outside the grid.

    Exact for the standard (2D + 1)-point stencil with per-axis `spacing`, by a type-I
    discrete sine transform. The last `len(spacing)` axes of `rhs` are spatial; any
    leading axes are a batch solved in the same transforms (on all cores).
    """
    d = len(spacing)
    axes = tuple(range(rhs.ndim - d, rhs.ndim))
    coeffs = scipy.fft.dstn(rhs.astype(np.float64), type=1, axes=axes, workers=-1)
    eig = np.zeros(rhs.shape[-d:])
    for axis, (n, h) in enumerate(zip(rhs.shape[-d:], spacing, strict=True)):
        k = np.arange(1, n + 1)
        lam = (2.0 * np.cos(np.pi * k / (n + 1)) - 2.0) / h**2
        eig = eig + lam.reshape([-1 if a == axis else 1 for a in range(d)])
    return scipy.fft.idstn(coeffs / eig, type=1, axes=axes, workers=-1).astype(np.float32)


def _spacing(shape: tuple[int, ...]) -> tuple[float, ...]:
    return tuple(2.0 / (n - 1) for n in shape)


def _gradient(psi: np.ndarray) -> np.ndarray:
    grads = np.gradient(psi, *_spacing(psi.shape))
    return np.stack(grads if isinstance(grads, list | tuple) else [grads], axis=-1)


def _divergence(v: np.ndarray) -> np.ndarray:
    """Central-difference divergence: the trace of `grid.jacobian`'s derivative part."""
    sp = _spacing(v.shape[:-1])
    return sum(np.gradient(v[..., i], sp[i], axis=i) for i in range(v.shape[-1]))


def calibrated_velocity(weights: np.ndarray, log_rates: np.ndarray) -> np.ndarray:
    """Velocity (normalised units) whose mean divergence over each region is its log rate.

    **Arguments:**

    - `weights`: (R, *spatial) fractional region indicators in [0, 1].
    - `log_rates`: (R,) target log-volume change per unit of g.

    Each region's source w_S gives a basis field v_S = grad psi_S with
    laplacian(psi_S) = w_S (zero at the border). The region-mean divergences
    M[R, S] = mean_{w_R}(div v_S) form a small linear system M a = log_rates; the
    velocity is sum_S a_S v_S. A region's volume changes at the rate of its mean
    divergence (to first order), so each region meets its target even where the
    discrete divergence of a thin structure spreads into its neighbours.
    """
    potentials = solve_poisson_dirichlet(weights, _spacing(weights.shape[1:]))
    basis = [_gradient(psi) for psi in potentials]
    mass = weights.reshape(len(weights), -1).sum(1)
    divs = np.stack([_divergence(v).ravel() for v in basis])  # (S, V)
    m = (weights.reshape(len(weights), -1) @ divs.T) / mass[:, None]  # (R, S)
    coeffs = np.linalg.solve(m, np.asarray(log_rates, np.float64))
    return np.tensordot(coeffs, np.stack(basis), axes=1).astype(np.float32)


class AgingFlow(NamedTuple):
    """The template's aging deformation as a function of g, tabulated.

    Step k covers g in [k h, (k + 1) h] with the velocity `velocities[k]`, calibrated on
    the anatomy already aged to g = k h. `forward[k]` is the displacement of F_k
    (template point -> its position at g = k h), `inverse[k]` of F_k^{-1}; all on one
    grid, in normalised units.
    """

    step: float
    velocities: Float[Array, "K *spatial D"]
    forward: Float[Array, "K1 *spatial D"]
    inverse: Float[Array, "K1 *spatial D"]


def build_aging_flow(
    weights: np.ndarray, log_rates: np.ndarray, g_max: float, step: float = 1.0, squarings: int = 4
) -> AgingFlow:
    """Integrate the non-stationary aging flow from g = 0 to `g_max` in steps of `step`.

    At every step the region indicators are carried along by the flow (so an
    expanding ventricle keeps expanding where it now is) and the velocity is
    recalibrated on them (`calibrated_velocity`): each region's volume then changes
    by exp(log_rate * g), the rate the literature prescribes, at any g.

    **Arguments:**

    - `weights`: (R, *spatial) fractional region indicators of the template.
    - `log_rates`: (R,) log-volume change per unit g.
    - `g_max`: the largest g needed (see `aging_profile`).
    - `step`: g per step; `squarings`: scaling-and-squaring steps per step.
    """
    from longbrain_jax.grid import compose, integrate_velocity, invert_displacement, warp

    n_steps = max(int(np.ceil(g_max / step)), 1)
    shape = weights.shape[1:]
    zero = jnp.zeros((*shape, len(shape)), jnp.float32)
    def advance(fwd, inv, v):
        fwd = compose(integrate_velocity(step * v, squarings), fwd)
        inv = compose(inv, integrate_velocity(-step * v, squarings))
        return fwd, invert_displacement(fwd, initial=inv, iterations=4)  # keep the pair consistent

    advance = jax.jit(advance)
    carry = jax.jit(jax.vmap(lambda w, inv: warp(w, inv), in_axes=(0, None)))
    forward, inverse, velocities = [zero], [zero], []
    w0 = jnp.asarray(weights, jnp.float32)
    for _ in range(n_steps):
        current = np.asarray(carry(w0, inverse[-1]))
        v = jnp.asarray(calibrated_velocity(current, log_rates))
        fwd, inv = advance(forward[-1], inverse[-1], v)
        velocities.append(v)
        forward.append(fwd)
        inverse.append(inv)
    return AgingFlow(step=float(step), velocities=jnp.stack(velocities), forward=jnp.stack(forward), inverse=jnp.stack(inverse))


def aging_maps(flow: AgingFlow, g: Float[Array, ""], squarings: int = 4) -> tuple[Float[Array, "*s D"], Float[Array, "*s D"]]:
    """Displacements of F_g and F_g^{-1} for any g in [0, g_max] (jit- and vmap-safe).

    F_g = exp((g - k h) v_k) o F_k with k = floor(g / h): exactly the tabulated flow.
    """
    from longbrain_jax.grid import compose, integrate_velocity

    k_max = flow.velocities.shape[0] - 1
    k = jnp.clip(jnp.floor(g / flow.step).astype(jnp.int32), 0, k_max)
    rest = (g - k.astype(jnp.float32) * flow.step) * flow.velocities[k]
    forward = compose(integrate_velocity(rest, squarings), flow.forward[k])
    inverse = compose(flow.inverse[k], integrate_velocity(-rest, squarings))
    return forward, inverse


def mtl_log_rate(cfg: AtrophyConfig = AtrophyConfig()) -> dict[str, float]:
    """Log change per year of the optional disease-specific medial-temporal atrophy."""
    if cfg.disease_mtl_pct_per_year == 0.0:
        return {}
    value = float(np.log1p(cfg.disease_mtl_pct_per_year / 100.0))
    return {"hippocampus": value, "amygdala": value}
