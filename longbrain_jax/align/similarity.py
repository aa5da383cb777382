"""Image similarities over sampled points, differentiable in the moving values.

- `ncc`: global normalised cross-correlation, for scans of the same contrast
  (longitudinal T1w). The Levenberg-Marquardt optimiser minimises its least-squares
  form with a smooth intensity model (`register._lm`); `ncc` is what is reported.
- `mutual_information`: Mattes-style mutual information for different contrasts:
  a joint histogram of `bins` x `bins` bins, each sample spread over its 4 nearest bins
  by a cubic B-spline Parzen window (both images, so the histogram and the MI are
  smooth in the moving values), as in Mattes et al., IEEE TMI 22(1) 2003.

Every function takes per-point `weights` (>= 0; 0 drops a point, e.g. one that maps
outside the moving image). Samples are 1D arrays of the same length N.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float

_EPS = 1e-8


def _moments(x: Float[Array, " N"], w: Float[Array, " N"]) -> tuple[jnp.ndarray, jnp.ndarray]:
    mean = jnp.sum(w * x)
    return mean, jnp.sum(w * (x - mean) ** 2)


def ncc(fixed: Float[Array, " N"], moving: Float[Array, " N"], weights: Float[Array, " N"]) -> Float[Array, ""]:
    """Weighted global normalised cross-correlation in [-1, 1]."""
    w = weights / jnp.maximum(jnp.sum(weights), _EPS)
    mf, vf = _moments(fixed, w)
    mm, vm = _moments(moving, w)
    return jnp.sum(w * (fixed - mf) * (moving - mm)) / jnp.sqrt(vf * vm + _EPS)


def cubic_bspline(x: Float[Array, "..."]) -> Float[Array, "..."]:
    """The centred cubic B-spline (support [-2, 2], sums to 1 over integer shifts)."""
    a = jnp.abs(x)
    inner = (4.0 - 6.0 * a**2 + 3.0 * a**3) / 6.0
    outer = (2.0 - a) ** 3 / 6.0
    return jnp.where(a < 1.0, inner, jnp.where(a < 2.0, outer, 0.0))


def parzen_weights(x: Float[Array, " N"], lo: Float[Array, ""], hi: Float[Array, ""], bins: int) -> Float[Array, "N B"]:
    """(N, bins) Parzen window weights of values in [lo, hi] (clipped), each row summing to 1.

    The range maps onto bin centres 1 ... bins - 2, so every window lies inside.
    """
    u = 1.0 + (jnp.clip(x, lo, hi) - lo) / jnp.maximum(hi - lo, _EPS) * (bins - 3)
    return cubic_bspline(u[:, None] - jnp.arange(bins, dtype=x.dtype))


def joint_histogram(
    fixed: Float[Array, " N"],
    moving: Float[Array, " N"],
    weights: Float[Array, " N"],
    fixed_range: tuple[Float[Array, ""], Float[Array, ""]],
    moving_range: tuple[Float[Array, ""], Float[Array, ""]],
    bins: int = 32,
) -> Float[Array, "B B"]:
    """(bins, bins) joint probability of (fixed, moving) values, summing to 1."""
    wf = parzen_weights(fixed, *fixed_range, bins) * weights[:, None]
    wm = parzen_weights(moving, *moving_range, bins)
    joint = wf.T @ wm
    return joint / jnp.maximum(jnp.sum(joint), _EPS)


def mutual_information(
    fixed: Float[Array, " N"],
    moving: Float[Array, " N"],
    weights: Float[Array, " N"],
    fixed_range: tuple[Float[Array, ""], Float[Array, ""]],
    moving_range: tuple[Float[Array, ""], Float[Array, ""]],
    bins: int = 32,
) -> Float[Array, ""]:
    """Mutual information in nats of the Parzen joint histogram (larger is more similar).

    **Arguments:**

    - `fixed`, `moving`: (N,) sampled values; `weights` (N,) >= 0.
    - `fixed_range`, `moving_range`: (lo, hi) intensity ranges mapped onto the bins
      (values outside are clipped), fixed per image so the bins do not move with the transform.
    - `bins`: histogram bins per image (Mattes / ANTs default 32).
    """
    p = joint_histogram(fixed, moving, weights, fixed_range, moving_range, bins)
    pf, pm = jnp.sum(p, axis=1), jnp.sum(p, axis=0)
    plogp = lambda q: jnp.sum(q * jnp.log(q + 1e-12))  # noqa: E731  (0 log 0 = 0, with finite gradients)
    return plogp(p) - plogp(pf) - plogp(pm)
