"""The multi-resolution pyramid: sample points per level and a moving image that carries its gradient.

Level k smooths both images by `sigmas[k]` voxels (a Gaussian scale space: coarse
levels see only the large structures, so the start may be far off) and draws the
same number of points at every level, uniformly at random at sub-voxel positions of
the fixed grid (ANTs' random sampling): the images themselves are never shrunk,
because only the points are visited, and equal shapes let the whole pyramid run as
one `jax.lax.scan` (one compiled body instead of one per level).

The moving image is kept at full resolution with its spatial gradient as extra
channels (`gradient_stack`): `sample` reads value and gradient in one trilinear
gather, and its JVP is the interpolated gradient times the position's tangent, so
`jax.linearize` of anything built on it gathers each point once (autodiff through
the interpolation weights would differentiate the piecewise-linear interpolant).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from longbrain_jax.grid import apply_separable, interpolate, smooth_resize_operator


class Levels(NamedTuple):
    """The pyramid of one pair, stacked over L levels.

    **Fields:** `points` (L, N, D) fixed-grid voxel positions; `fixed` (L, N) the
    smoothed fixed image there; `moving` (L, *spatial, 1 + D) the smoothed moving image
    and its gradient in voxel units (`gradient_stack`).
    """

    points: Float[Array, "L N D"]
    fixed: Float[Array, "L N"]
    moving: Float[Array, "L ..."]


def voxel_positions(shape: tuple[int, ...]) -> Float[Array, "*shape D"]:
    """Integer voxel indices of a grid as float32, (*shape, D)."""
    return jnp.stack(jnp.meshgrid(*[jnp.arange(n, dtype=jnp.float32) for n in shape], indexing="ij"), axis=-1)


def smooth(image: Float[Array, "*spatial"], sigma: float) -> Float[Array, "*spatial"]:
    """Gaussian smoothing with std `sigma` voxels (none for 0), as `grid.gaussian_smooth` (reflecting edges).

    Applied as one dense (n, n) operator per axis: the same result, compiled in a
    fraction of the time of a tap-by-tap filter (compilation dominates small runs).
    """
    if sigma <= 0:
        return image
    return apply_separable(image, [smooth_resize_operator(n, n, sigma) for n in image.shape])


def gradient_stack(image: Float[Array, "*spatial"]) -> Float[Array, "*spatial C"]:
    """(*spatial, 1 + D): the image and its central-difference gradient per voxel axis (one-sided at the edges)."""
    grads = jnp.gradient(image) if image.ndim > 1 else [jnp.gradient(image)]
    return jnp.stack([image, *grads], axis=-1)


@jax.custom_jvp
def sample(stack: Float[Array, "*spatial C"], index: Float[Array, "N D"]) -> Float[Array, " N"]:
    """Trilinear (bilinear in 2D) value of `stack`'s image at voxel `index`, edges repeated outside.

    Differentiable in `index` through the interpolated gradient channels; not in `stack`.
    """
    return interpolate(stack, index, mode="nearest")[..., 0]


@sample.defjvp
def _sample_jvp(primals, tangents):
    stack, index = primals
    _, index_dot = tangents
    out = interpolate(stack, index, mode="nearest")
    return out[..., 0], jnp.sum(out[..., 1:] * index_dot, axis=-1)


def num_points(shape: tuple[int, ...], samples: int) -> int:
    """Points per level: `samples`, or the voxel count of a smaller image."""
    return int(min(samples, np.prod(shape)))


def make_levels(
    fixed: Float[Array, "*fixed"], moving: Float[Array, "*moving"], sigmas: tuple[float, ...], samples: int, key: jax.Array
) -> Levels:
    """The stacked pyramid of one pair (module docstring).

    **Arguments:**

    - `fixed`, `moving`: full-resolution (*spatial) images.
    - `sigmas`: Gaussian std per level, in voxels, coarse to fine.
    - `samples`: points per level (at most the fixed image's voxel count).
    - `key`: PRNG key of the draws.

    The levels are computed batched over a leading level axis (smoothing as stacked
    dense operators), one copy of the code in the compiled program however many levels.
    """
    d = fixed.ndim
    n = num_points(fixed.shape, samples)
    bits = jax.random.bits(key, (len(sigmas), n, d))  # one draw (a cheap program)
    points = (bits >> 8).astype(jnp.float32) / float(1 << 24) * (jnp.asarray(fixed.shape, jnp.float32) - 1.0)
    operators = lambda shape: [jnp.asarray(np.stack([_operator(m, s) for s in sigmas])) for m in shape]  # noqa: E731
    smoothed = lambda image: jax.vmap(apply_separable, in_axes=(None, 0))(image, operators(image.shape))  # noqa: E731
    values = jax.vmap(interpolate)(smoothed(fixed), points)
    return Levels(points, values, jax.vmap(gradient_stack)(smoothed(moving)))


def _operator(n: int, sigma: float) -> np.ndarray:
    """(n, n) Gaussian smoothing along one axis (the identity for sigma 0)."""
    return smooth_resize_operator(n, n, sigma) if sigma > 0 else np.eye(n, dtype=np.float32)
