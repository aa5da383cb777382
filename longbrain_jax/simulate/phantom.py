"""A geometric brain phantom that ages by a known diffeomorphism.

Small and fast (no template files): an ellipsoidal brain of white matter inside a
grey-matter shell, two lateral ventricles and two hippocampi. Aging is a stationary
velocity field w pushing tissue away from the ventricles' centre line, scaled by the
years since baseline and a per-group rate, integrated by scaling and squaring. The
true map phi_t = exp(t r w) takes baseline points to where they are at time t, so
I_t(phi_t(x)) = I_0(x) and |J(phi_t)| > 1 where tissue grows (the registration
convention); the scan is I_t = I_0 o exp(-t r w). Used by the tests
and the demo; the template-based simulator is the realistic one.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from longbrain_jax.cohort import Cohort
from longbrain_jax.grid import gaussian_smooth, integrate_velocity, normalised_grid, warp, warp_labels

PHANTOM_LABELS = {"background": 0, "white_matter": 2, "grey_matter": 3, "ventricles": 4, "hippocampus": 17}
_INTENSITY = {0: 0.0, 2: 1.0, 3: 0.65, 4: 0.15, 17: 0.55}


@dataclasses.dataclass(frozen=True)
class PhantomConfig:
    """Sizes and rates of the phantom cohort.

    **Arguments:**

    - `num_subjects`: N; alternating healthy / dementia groups.
    - `shape`: spatial grid, 2 or 3 axes (voxels).
    - `voxel_mm`: isotropic voxel size in mm (sets the affine).
    - `scans`: (min, max) scans per subject, drawn uniformly.
    - `age_range`: (first, last) possible scan ages in years.
    - `expansion_per_year`: ventricle-push velocity per year for (healthy, dementia),
      in normalised units.
    - `noise_std`: Gaussian noise added to intensities.
    """

    num_subjects: int = 6
    shape: tuple[int, ...] = (32, 32)
    voxel_mm: float = 2.0
    scans: tuple[int, int] = (2, 4)
    age_range: tuple[float, float] = (60.0, 75.0)
    expansion_per_year: tuple[float, float] = (0.03, 0.09)
    noise_std: float = 0.02


def _anatomy(shape: tuple[int, ...], scale: jax.Array) -> jax.Array:
    """(*shape) int label map of one subject; `scale` (D,) stretches the brain."""
    x = normalised_grid(shape) / scale
    d = len(shape)
    r = lambda c, radii: jnp.sqrt(jnp.sum(((x - jnp.asarray(c)) / jnp.asarray(radii)) ** 2, -1))  # noqa: E731
    brain = r([0.0] * d, [0.8] * d)
    labels = jnp.where(brain < 1.0, 3, 0)
    labels = jnp.where(brain < 0.85, 2, labels)
    for side in (-1.0, 1.0):
        c_vent = [0.0] * d
        c_vent[1] = 0.16 * side
        labels = jnp.where(r(c_vent, [0.32, 0.11] + [0.14] * (d - 2)) < 1.0, 4, labels)
        c_hip = [0.0] * d
        c_hip[0], c_hip[1] = 0.45, 0.4 * side
        labels = jnp.where(r(c_hip, [0.14, 0.08] + [0.1] * (d - 2)) < 1.0, 17, labels)
    return labels.astype(jnp.int32)


def _push_velocity(shape: tuple[int, ...]) -> jax.Array:
    """(*shape, D) smooth velocity pointing away from the ventricles' centre line.

    Its flow moves tissue outwards, so the ventricles grow and the tissue around
    them is compressed; the magnitude falls off with distance (peak about 0.3).
    """
    x = normalised_grid(shape)
    radial = x.at[..., 0].set(0.0)
    dist2 = jnp.sum(radial**2, -1, keepdims=True)
    return radial * jnp.exp(-dist2 / 0.08) * jnp.exp(-(x[..., :1] ** 2) / 0.3)


def make_phantom_cohort(key: jax.Array, cfg: PhantomConfig = PhantomConfig()) -> tuple[Cohort, np.ndarray]:
    """Simulate the phantom cohort.

    **Returns:** the cohort (labels included, group 'healthy' / 'dementia') and the
    true displacement of phi_t (baseline -> scan t, see the module docstring),
    (N, T_max, *shape, D) in normalised units (zeros in padding).
    """
    n, shape, d = cfg.num_subjects, tuple(cfg.shape), len(cfg.shape)
    t_max = cfg.scans[1]
    affine = np.diag([cfg.voxel_mm] * 3 + [1.0])
    affine[:3, 3] = -cfg.voxel_mm * (np.array(list(shape) + [1] * (3 - d))[:3] - 1) / 2
    velocity = _push_velocity(shape)
    lut = jnp.zeros(18).at[jnp.array(list(_INTENSITY))].set(jnp.array(list(_INTENSITY.values())))

    @jax.jit
    def scan(base: jax.Array, years_times_rate: jax.Array, key: jax.Array):
        step = velocity * years_times_rate
        inverse = integrate_velocity(-step)
        img = warp(gaussian_smooth(lut[base], 0.7), inverse)
        img = img + cfg.noise_std * jax.random.normal(key, shape)
        return img, warp_labels(base, inverse), integrate_velocity(step)

    volumes = np.zeros((n, t_max, *shape), np.float32)
    labels = np.zeros((n, t_max, *shape), np.int32)
    disp = np.zeros((n, t_max, *shape, d), np.float32)
    ages = np.zeros((n, t_max), np.float32)
    mask = np.zeros((n, t_max), bool)
    groups = []
    for i in range(n):
        k_scale, k_count, k_ages, k_noise = jax.random.split(jax.random.fold_in(key, i), 4)
        group = i % 2
        groups.append(("healthy", "dementia")[group])
        base = _anatomy(shape, 1.0 + 0.05 * jax.random.normal(k_scale, (d,)))
        count = int(jax.random.randint(k_count, (), cfg.scans[0], cfg.scans[1] + 1))
        subject_ages = np.sort(np.asarray(jax.random.uniform(k_ages, (count,), minval=cfg.age_range[0], maxval=cfg.age_range[1])))
        rate = cfg.expansion_per_year[group]
        for t, age in enumerate(subject_ages):
            years_times_rate = jnp.float32(rate * float(age - subject_ages[0]))
            volumes[i, t], labels[i, t], disp[i, t] = scan(base, years_times_rate, jax.random.fold_in(k_noise, t))
        ages[i, :count] = subject_ages
        mask[i, :count] = True
    cohort = Cohort(
        volumes=volumes,
        mask=mask,
        ages=ages,
        affines=np.repeat(affine[None], n, 0),
        subject_ids=tuple(f"{i + 1:03d}" for i in range(n)),
        session_ids=tuple(tuple(f"{t + 1}" for t in range(int(mask[i].sum()))) for i in range(n)),
        groups=tuple(groups),
        sexes=tuple("F" if i % 4 < 2 else "M" for i in range(n)),
        labels=labels,
    )
    return cohort, disp
