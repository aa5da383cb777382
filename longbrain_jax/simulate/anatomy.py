"""Each simulated subject's own anatomy: a random diffeomorphism of the template.

A subject is the template seen through a map M (subject point -> template point):
M(x) = exp(w)(x / size), a global linear size change (a brain `size` times the
template's) followed by the scaling-and-squaring exponential of a smooth random
stationary velocity field w, tapered to zero at the grid border. Its inverse is
M^{-1}(y) = size * exp(-w)(y). The linear parts are applied exactly, as point maps
(`to_template`, `from_template`), never as sampled fields, so nothing is clamped at
the border. Tissue contrast varies through per-subject gains on the grey- and
white-matter probability maps.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from longbrain_jax.grid import (
    apply_separable,
    integrate_velocity,
    invert_displacement,
    normalised_grid,
    sample,
    smooth_resize_operator,
)


@dataclasses.dataclass(frozen=True)
class AnatomyConfig:
    """Between-subject anatomical variation.

    **Arguments:**

    - `deformation_mm`: RMS length of the subject's velocity field w, in mm.
    - `smoothness_mm`: Gaussian std of w's spatial correlation, in mm.
    - `size_sd`: std of the global size factor (mean 1, clipped to +-2 std).
    - `contrast_sd`: std of the grey- / white-matter intensity gains (mean 0).
    """

    deformation_mm: float = 3.0
    smoothness_mm: float = 15.0
    size_sd: float = 0.04
    contrast_sd: float = 0.05


class SubjectAnatomy(NamedTuple):
    """One subject's anatomy. Displacements are (*field, D) in normalised units."""

    exp_w: Float[Array, "*field D"]
    exp_minus_w: Float[Array, "*field D"]
    size: Float[Array, ""]
    gm_gain: Float[Array, ""]
    wm_gain: Float[Array, ""]


def move(displacement: Float[Array, "*field D"], points: Float[Array, "... D"]) -> Float[Array, "... D"]:
    """Apply the map x -> x + u(x) of a displacement field to normalised `points`."""
    return points + sample(displacement, points)


def to_template(anatomy: SubjectAnatomy, points: Float[Array, "... D"]) -> Float[Array, "... D"]:
    """M: subject points -> template points."""
    return move(anatomy.exp_w, points / anatomy.size)


def from_template(anatomy: SubjectAnatomy, points: Float[Array, "... D"]) -> Float[Array, "... D"]:
    """M^{-1}: template points -> subject points."""
    return anatomy.size * move(anatomy.exp_minus_w, points)


def border_taper(shape: tuple[int, ...], width: float = 0.1) -> Float[Array, "*shape"]:
    """1 inside, falling smoothly to 0 over the outer `width` (normalised units) of the grid."""
    x = normalised_grid(shape)
    ramp = jnp.clip((1.0 - jnp.abs(x)) / width, 0.0, 1.0)
    return jnp.prod(ramp * ramp * (3.0 - 2.0 * ramp), axis=-1)


def normalised_per_mm(shape: tuple[int, ...], spacing_mm: tuple[float, ...]) -> jax.Array:
    """(D,) normalised units per mm along each axis of a grid."""
    return jnp.asarray([2.0 / ((n - 1) * h) for n, h in zip(shape, spacing_mm, strict=True)], jnp.float32)


def smooth_noise(
    key: jax.Array, shape: tuple[int, ...], spacing_mm: tuple[float, ...], smoothness_mm: float, channels: int | None = None
) -> Float[Array, "*shape"]:
    """A smooth zero-mean Gaussian random field on a grid, correlation ~ `smoothness_mm`.

    White noise is drawn on a grid of spacing `smoothness_mm / 2` covering the same
    extent, smoothed there (std 2 of its voxels, i.e. about `smoothness_mm`) and
    linearly upsampled: the cost does not grow with the smoothness. Unit variance is
    not guaranteed; callers scale the field.
    """
    extent = [(n - 1) * h for n, h in zip(shape, spacing_mm, strict=True)]
    coarse = tuple(max(int(np.ceil(e / (smoothness_mm / 2.0))) + 1, 2) for e in extent)
    tail = () if channels is None else (channels,)
    # smoothing and upsampling are one linear operator per axis (as gaussian_smooth then resize_linear)
    operators = [smooth_resize_operator(m, n, 2.0) for m, n in zip(coarse, shape, strict=True)]
    return apply_separable(jax.random.normal(key, (*coarse, *tail)), operators)


def sample_anatomy(
    key: jax.Array, shape: tuple[int, ...], spacing_mm: tuple[float, ...], cfg: AnatomyConfig = AnatomyConfig()
) -> SubjectAnatomy:
    """Draw one subject's anatomy on a field grid of `shape` with voxel `spacing_mm`."""
    k_w, k_size, k_gm, k_wm = jax.random.split(key, 4)
    d = len(shape)
    per_mm = normalised_per_mm(shape, spacing_mm)
    w = smooth_noise(k_w, shape, spacing_mm, cfg.smoothness_mm, channels=d) * border_taper(shape, 0.15)[..., None]
    rms_mm = jnp.sqrt(jnp.mean(jnp.sum((w / per_mm) ** 2, -1)))
    w = w * (cfg.deformation_mm / jnp.maximum(rms_mm, 1e-12))
    exp_w = integrate_velocity(w)
    return SubjectAnatomy(
        exp_w=exp_w,
        exp_minus_w=invert_displacement(exp_w, initial=integrate_velocity(-w)),
        size=1.0 + cfg.size_sd * jnp.clip(jax.random.normal(k_size), -2.0, 2.0),
        gm_gain=cfg.contrast_sd * jax.random.normal(k_gm),
        wm_gain=cfg.contrast_sd * jax.random.normal(k_wm),
    )
