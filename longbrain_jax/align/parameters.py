"""Rigid and affine transforms as parameter vectors, centred and scaled for optimisation.

A transform maps FIXED world points (RAS+ mm) to MOVING world points, as in
`io.transforms`:

    T(p) = c + L (p - c) + t,

centred at `c` (the fixed image's centre of mass), so rotations and translations are
nearly decoupled. Parameters (all in mm, so one optimiser step moves every kind by a
comparable distance):

| transform | D = 3 | D = 2 |
|---|---|---|
| rigid  | 3 Euler angles x radius, 3 translations | 1 angle x radius, 2 translations |
| affine | 9 entries of (L - I) x radius, 3 translations | 4 entries of (L - I) x radius, 2 translations |

`radius` is the root-mean-square distance of the fixed image's mass from `c` (about
60 mm for a brain): an angle of a / radius radians moves the brain's edge by about
a mm. Rotations are R = Rz Ry Rx (angles in radians about the frame's axes).

A 2D image lives in 3D world space (a slice is (X, Y, 1) in NIfTI); its transforms act
in the plane of its first two voxel axes, spanned by the first two columns of `frame`,
and leave the normal alone (a 3D matrix whose out-of-plane part is the identity). For
3D images `frame` is the identity (angles about the world x, y, z axes).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

TRANSFORMS = ("rigid", "affine")


class Geometry(NamedTuple):
    """Where a pair's parameters live (arrays, so a cohort of pairs is vmapped).

    **Fields:** `centre` (3,) world mm, the centre of rotation; `frame` (3, 3) an
    orthonormal basis whose first D columns span the image axes; `radius` () mm, the
    scale of angles and linear parameters.
    """

    centre: Float[Array, "3"]
    frame: Float[Array, "3 3"]
    radius: Float[Array, ""]


def num_parameters(transform: str, ndim: int) -> int:
    """Degrees of freedom: rigid 6 (3D) / 3 (2D), affine 12 / 6."""
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim}")
    rotations = 1 if ndim == 2 else 3
    return (rotations if transform == "rigid" else ndim * ndim) + ndim


def image_frame(affine: Float[Array, "4 4"], ndim: int) -> Float[Array, "3 3"]:
    """(3, 3) orthonormal frame: the identity in 3D; in 2D the in-plane axes of the affine, then the normal."""
    if ndim == 3:
        return jnp.eye(3, dtype=jnp.float32)
    a = jnp.asarray(affine, jnp.float32)[:3, :2]
    e1 = a[:, 0] / jnp.linalg.norm(a[:, 0])
    e2 = a[:, 1] - (a[:, 1] @ e1) * e1
    e2 = e2 / jnp.linalg.norm(e2)
    return jnp.stack([e1, e2, jnp.cross(e1, e2)], axis=1)


def rotation(angles: Float[Array, " A"], ndim: int) -> Float[Array, "D D"]:
    """(D, D) rotation of 1 (2D) or 3 (3D: R = Rz Ry Rx) angles in radians."""
    if ndim == 2:
        c, s = jnp.cos(angles[0]), jnp.sin(angles[0])
        return jnp.stack([jnp.stack([c, -s]), jnp.stack([s, c])])
    cx, cy, cz = jnp.cos(angles)
    sx, sy, sz = jnp.sin(angles)
    one, zero = jnp.ones_like(cx), jnp.zeros_like(cx)
    rx = jnp.stack([jnp.stack([one, zero, zero]), jnp.stack([zero, cx, -sx]), jnp.stack([zero, sx, cx])])
    ry = jnp.stack([jnp.stack([cy, zero, sy]), jnp.stack([zero, one, zero]), jnp.stack([-sy, zero, cy])])
    rz = jnp.stack([jnp.stack([cz, -sz, zero]), jnp.stack([sz, cz, zero]), jnp.stack([zero, zero, one])])
    return rz @ ry @ rx


def linear_part(params: Float[Array, " P"], geometry: Geometry, transform: str, ndim: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(D, D) linear part in the frame and (D,) translation in mm of a parameter vector."""
    if transform == "rigid":
        a = 1 if ndim == 2 else 3
        return rotation(params[:a] / geometry.radius, ndim), params[a:]
    k = ndim * ndim
    return jnp.eye(ndim, dtype=params.dtype) + params[:k].reshape(ndim, ndim) / geometry.radius, params[k:]


def to_matrix(params: Float[Array, " P"], geometry: Geometry, transform: str, ndim: int) -> Float[Array, "4 4"]:
    """The (4, 4) world transform (fixed point -> moving point) of a parameter vector."""
    lin, shift = linear_part(params, geometry, transform, ndim)
    f = geometry.frame
    inplane, normal = f[:, :ndim], f[:, ndim:]
    world = inplane @ lin @ inplane.T + normal @ normal.T
    offset = geometry.centre - world @ geometry.centre + inplane @ shift
    top = jnp.concatenate([world, offset[:, None]], axis=1)
    return jnp.concatenate([top, jnp.array([[0.0, 0.0, 0.0, 1.0]], top.dtype)], axis=0)


def affine_inverse(matrix: Float[Array, "4 4"]) -> Float[Array, "4 4"]:
    """Inverse of a (4, 4) affine in closed form (the adjugate of its 3 x 3 part; cheaper to compile than LU)."""
    a, t = matrix[:3, :3], matrix[:3, 3]
    cof = lambda i, j: a[(i + 1) % 3, (j + 1) % 3] * a[(i + 2) % 3, (j + 2) % 3] - a[(i + 1) % 3, (j + 2) % 3] * a[(i + 2) % 3, (j + 1) % 3]  # noqa: E731
    adj = jnp.stack([jnp.stack([cof(j, i) for j in range(3)]) for i in range(3)])  # adj[i, j] = cofactor(j, i)
    inv = adj / (a[0] @ adj[:, 0])
    top = jnp.concatenate([inv, (-inv @ t)[:, None]], axis=1)
    return jnp.concatenate([top, jnp.array([[0.0, 0.0, 0.0, 1.0]], top.dtype)], axis=0)


def translation_only(shift_mm: Float[Array, "3"], geometry: Geometry, transform: str, ndim: int) -> Float[Array, " P"]:
    """Parameters of a pure world translation (its in-plane part in 2D), e.g. the centre-of-mass start."""
    p = num_parameters(transform, ndim)
    return jnp.zeros((p,), jnp.float32).at[p - ndim :].set(geometry.frame[:, :ndim].T @ shift_mm)


def rigid_to_affine(params: Float[Array, " P"], geometry: Geometry, ndim: int) -> Float[Array, " Q"]:
    """Affine parameters of the same transform as rigid `params` (an affine stage's start)."""
    rot, shift = linear_part(params, geometry, "rigid", ndim)
    return jnp.concatenate([((rot - jnp.eye(ndim)) * geometry.radius).reshape(-1), shift])


def rotation_angle_deg(linear: np.ndarray) -> float:
    """Angle in degrees of the rotation nearest a (3, 3) linear map (its polar factor)."""
    u, _, vt = np.linalg.svd(np.asarray(linear, np.float64))
    r = u @ vt
    return float(np.degrees(np.arccos(np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0))))


def motion_summary(matrix: np.ndarray, centre: np.ndarray) -> tuple[float, float]:
    """Rotation (degrees, of the linear part's nearest rotation) and translation (mm, of `centre`) of a world transform."""
    m = np.asarray(matrix, np.float64)
    c = np.asarray(centre, np.float64)
    return rotation_angle_deg(m[:3, :3]), float(np.linalg.norm(m[:3, :3] @ c + m[:3, 3] - c))


def transform_error(estimate: np.ndarray, truth: np.ndarray, centre: np.ndarray) -> tuple[float, float]:
    """Rotation error (degrees, the angle of R_est R_true^T) and translation error (mm, |T_est(c) - T_true(c)|)."""
    e, t = np.asarray(estimate, np.float64), np.asarray(truth, np.float64)
    c = np.asarray(centre, np.float64)
    angle = rotation_angle_deg(_polar(e[:3, :3]) @ _polar(t[:3, :3]).T)
    return angle, float(np.linalg.norm((e[:3, :3] - t[:3, :3]) @ c + e[:3, 3] - t[:3, 3]))


def _polar(linear: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(linear)
    return u @ vt
