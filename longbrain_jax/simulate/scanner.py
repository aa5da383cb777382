"""What the scanner adds: bias field, intensity scale, Rician noise, misalignment."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from longbrain_jax.simulate.anatomy import normalised_per_mm, smooth_noise


@dataclasses.dataclass(frozen=True)
class ScannerConfig:
    """Acquisition effects, drawn per scan.

    **Arguments:**

    - `snr`: white-matter signal over the noise std (Rician magnitude noise).
    - `bias_sd`: std of the smooth log bias field (multiplicative inhomogeneity).
    - `bias_smoothness_mm`: its Gaussian spatial correlation, in mm.
    - `scale_range`: per-scan global intensity scale, uniform.
    - `rotation_deg`, `translation_mm`: follow-ups are misaligned by a rigid motion
      with angles uniform in +-rotation_deg and shifts in +-translation_mm (0: off).
    """

    snr: float = 30.0
    bias_sd: float = 0.08
    bias_smoothness_mm: float = 50.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    rotation_deg: float = 0.0
    translation_mm: float = 0.0


def log_bias_field(key: jax.Array, shape: tuple[int, ...], spacing_mm: tuple[float, ...], cfg: ScannerConfig) -> Float[Array, "*s"]:
    """A smooth zero-mean log bias field with std `cfg.bias_sd`."""
    b = smooth_noise(key, shape, spacing_mm, cfg.bias_smoothness_mm)
    b = b - jnp.mean(b)
    return b * (cfg.bias_sd / jnp.maximum(jnp.std(b), 1e-12))


def rician(key: jax.Array, image: Float[Array, "*s"], sigma: float | Float[Array, ""]) -> Float[Array, "*s"]:
    """Magnitude of the image plus complex Gaussian noise of std `sigma` per channel."""
    k_re, k_im = jax.random.split(key)
    re = image + sigma * jax.random.normal(k_re, image.shape)
    im = sigma * jax.random.normal(k_im, image.shape)
    return jnp.sqrt(re**2 + im**2)


def _rotation(angles: Float[Array, " A"], d: int) -> Float[Array, "D D"]:
    if d == 2:
        c, s = jnp.cos(angles[0]), jnp.sin(angles[0])
        return jnp.array([[c, -s], [s, c]])
    rx, ry, rz = angles
    mx = jnp.array([[1, 0, 0], [0, jnp.cos(rx), -jnp.sin(rx)], [0, jnp.sin(rx), jnp.cos(rx)]])
    my = jnp.array([[jnp.cos(ry), 0, jnp.sin(ry)], [0, 1, 0], [-jnp.sin(ry), 0, jnp.cos(ry)]])
    mz = jnp.array([[jnp.cos(rz), -jnp.sin(rz), 0], [jnp.sin(rz), jnp.cos(rz), 0], [0, 0, 1]])
    return mz @ my @ mx


class RigidMotion(NamedTuple):
    """x -> R x + t about the grid centre, in mm; applied to normalised points."""

    rotation: Float[Array, "D D"]
    shift_mm: Float[Array, " D"]
    per_mm: Float[Array, " D"]

    def apply(self, points: Float[Array, "... D"]) -> Float[Array, "... D"]:
        return ((points / self.per_mm) @ self.rotation.T + self.shift_mm) * self.per_mm

    def invert(self, points: Float[Array, "... D"]) -> Float[Array, "... D"]:
        return (((points / self.per_mm) - self.shift_mm) @ self.rotation) * self.per_mm


def sample_rigid(key: jax.Array, shape: tuple[int, ...], spacing_mm: tuple[float, ...], cfg: ScannerConfig) -> RigidMotion:
    """A random rigid motion: angles uniform in +-rotation_deg, shifts in +-translation_mm."""
    d = len(shape)
    k_rot, k_shift = jax.random.split(key)
    angles = jnp.deg2rad(cfg.rotation_deg) * jax.random.uniform(k_rot, (1 if d == 2 else 3,), minval=-1.0, maxval=1.0)
    shift = cfg.translation_mm * jax.random.uniform(k_shift, (d,), minval=-1.0, maxval=1.0)
    return RigidMotion(_rotation(angles, d), shift, normalised_per_mm(shape, spacing_mm))
