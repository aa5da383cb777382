"""Foreground-weighted voxel sampling over each subject's training scans.

`prepare_subjects` turns a chunk of a cohort into fixed-shape arrays (`SubjectData`,
leading subject axis) that a vmapped, jitted step can sample from without host work:
the flat (scan, voxel) indices of every foreground voxel of the training scans are
listed once per subject, so drawing a foreground point is one uniform draw and one
gather. Padding (scan slots a subject does not have, held-out scans, padded subjects)
is never drawn: a subject with no training scan gets zero-weight points.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from longbrain_jax.grid import voxel_to_normalised


class SubjectData(NamedTuple):
    """Per-subject arrays for sampling; add a leading subject axis for a chunk.

    - `volumes`: (T, V) intensities, spatial axes flattened (C order).
    - `times`: (T,) time inputs of the network (padding slots hold 0).
    - `train`: (T,) bool, scans the loss may see.
    - `train_slots`: (T,) int32, the training scan slots first, then zeros.
    - `num_train`: () int32, number of training scans.
    - `foreground`: (T * V,) int32, flat indices t * V + v of foreground voxels of
      training scans first, then zeros.
    - `num_foreground`: () int32.
    """

    volumes: Float[Array, "T V"]
    times: Float[Array, " T"]
    train: Bool[Array, " T"]
    train_slots: Int[Array, " T"]
    num_train: Int[Array, ""]
    foreground: Int[Array, " TV"]
    num_foreground: Int[Array, ""]


def prepare_subjects(
    volumes: np.ndarray, times: np.ndarray, train: np.ndarray, threshold: float
) -> SubjectData:
    """Host-side (numpy) `SubjectData` for a chunk.

    **Arguments:**

    - `volumes`: (n, T, *spatial) float32 intensities.
    - `times`: (n, T) network time inputs.
    - `train`: (n, T) bool, scans to fit (observed and not held out).
    - `threshold`: intensities above it are foreground (e.g. -0.9 for scans scaled to
      [-1, 1] with background at -1).
    """
    n, t_max = train.shape
    flat = np.ascontiguousarray(volumes, np.float32).reshape(n, t_max, -1)
    v = flat.shape[2]
    foreground = np.zeros((n, t_max * v), np.int32)
    num_foreground = np.zeros(n, np.int32)
    train_slots = np.zeros((n, t_max), np.int32)
    for i in range(n):
        slots = np.flatnonzero(train[i])
        train_slots[i, : slots.size] = slots
        hits = np.flatnonzero((flat[i] > threshold) & train[i][:, None])
        foreground[i, : hits.size] = hits
        num_foreground[i] = hits.size
    return SubjectData(
        volumes=flat,
        times=np.where(train | (times != 0), times, 0).astype(np.float32),
        train=train.astype(bool),
        train_slots=train_slots,
        num_train=train.sum(1).astype(np.int32),
        foreground=foreground,
        num_foreground=num_foreground,
    )


def _index_below(key: PRNGKeyArray, count: Array, shape: tuple[int, ...]) -> Array:
    """Uniform integers in [0, count) (0 when count is 0)."""
    u = jax.random.uniform(key, shape)
    count = jnp.asarray(count, jnp.int32)
    return jnp.minimum((u * count.astype(u.dtype)).astype(jnp.int32), jnp.maximum(count - 1, 0))


def sample_points(
    key: PRNGKeyArray, data: SubjectData, spatial_shape: tuple[int, ...], num_points: int, foreground_fraction: float
) -> tuple[Float[Array, "P D"], Int[Array, " P"], Float[Array, " P"], Float[Array, " P"]]:
    """Draw `num_points` voxels of one subject's training scans.

    A `foreground_fraction` of them come uniformly from foreground voxels (all
    voxels if a subject has none), the rest uniformly from all voxels of a uniformly
    chosen training scan.

    **Returns:** `(coords, scan, values, weights)`: normalised coordinates (P, D), the
    scan slot of each point (P,), its intensity (P,) and its loss weight (P,), 1 where
    the subject has a training scan and 0 otherwise.
    """
    num_voxels = data.volumes.shape[1]
    n_fg = int(round(foreground_fraction * num_points))
    k_fg, k_slot, k_vox = jax.random.split(key, 3)
    fg = data.foreground[_index_below(k_fg, data.num_foreground, (n_fg,))]
    slot = data.train_slots[_index_below(k_slot, data.num_train, (num_points,))]
    anywhere = slot * num_voxels + jax.random.randint(k_vox, (num_points,), 0, num_voxels)
    fg = jnp.where(data.num_foreground > 0, fg, anywhere[:n_fg])
    flat = jnp.concatenate([fg, anywhere[n_fg:]])
    scan, voxel = flat // num_voxels, flat % num_voxels
    index = jnp.stack(jnp.unravel_index(voxel, spatial_shape), axis=-1).astype(jnp.float32)
    coords = voxel_to_normalised(index, spatial_shape)
    values = data.volumes.reshape(-1)[flat]
    weights = jnp.broadcast_to((data.num_train > 0).astype(jnp.float32), (num_points,))
    return coords, scan, values, weights
