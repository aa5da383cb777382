"""The pairwise baseline: each follow-up registered to the baseline on its own.

What continuous time adds is measured against this. Every (baseline, follow-up) pair
of training scans gets its own displacement INR, trained with the same losses and
settings as the longitudinal model but on that pair alone (so its time input only
tells the baseline from the follow-up). A field at any other time comes from the
pair fields by piecewise-linear interpolation in time, with u = 0 at the baseline,
and by linear extrapolation from the last two known fields past the last scan:
the usual way to get a deformation at an unscanned age from pairwise registrations.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from longbrain_jax import grid
from longbrain_jax.registration.cohort import subject_fields
from longbrain_jax.registration.train import RegistrationConfig, register


class PairwiseFields:
    """Per-subject pair fields on the voxel grid and their interpolation in time.

    `fields[i]` is (K_i, *spatial, D): the displacement (normalised units) of subject
    i's k-th training follow-up at `times[i][k]` (years since baseline).
    """

    def __init__(self, fields: list[np.ndarray], times: list[np.ndarray]):
        self.fields, self.times = fields, times

    def at(self, subject: int, t: float) -> Float[Array, "*spatial D"]:
        """u(x, t) of one subject, linear in t between known fields (u = 0 at t = 0)."""
        if not len(self.times[subject]):
            return jnp.zeros(self.fields[subject].shape[1:], jnp.float32)
        known_t = np.concatenate([[0.0], self.times[subject]])
        first = np.zeros_like(self.fields[subject][:1])
        known_u = np.concatenate([first, self.fields[subject]])
        if t >= known_t[-1]:
            lo, hi = len(known_t) - 2, len(known_t) - 1  # extrapolate from the last two
        else:
            hi = int(np.searchsorted(known_t, t, side="right"))
            lo = hi - 1
        w = (t - known_t[lo]) / (known_t[hi] - known_t[lo])
        return jnp.asarray((1.0 - w) * known_u[lo] + w * known_u[hi])


    def field(self, subject: int, t: float) -> tuple[Float[Array, "*spatial D"], Float[Array, "*spatial"]]:
        """(u, |J|) at time t, |J| by finite differences on the grid (`evaluate.score_fields`)."""
        u = self.at(subject, t)
        return u, grid.jacobian_determinant(u)


def register_pairwise(volumes: np.ndarray, times: np.ndarray, train: np.ndarray, cfg: RegistrationConfig) -> PairwiseFields:
    """Register every training follow-up (train[i, j], j > 0) of every subject to its baseline.

    `volumes` (N, T, *spatial), `times` (N, T) years since baseline, `train` (N, T) bool.
    All pairs are trained in one vmapped program (`train.register`).
    """
    pairs = [(i, j) for i in range(volumes.shape[0]) for j in range(1, volumes.shape[1]) if train[i, j]]
    if not pairs:
        raise ValueError("no training follow-up scans to register pairwise")
    pair_volumes = np.stack([volumes[i, [0, j]] for i, j in pairs])
    pair_times = np.stack([[0.0, times[i, j]] for i, j in pairs]).astype(np.float32)
    state = register(pair_volumes, pair_times, np.ones((len(pairs), 2), bool), cfg)
    shape = tuple(volumes.shape[2:])
    fields = [[] for _ in range(volumes.shape[0])]
    field_times = [[] for _ in range(volumes.shape[0])]
    for p, (i, j) in enumerate(pairs):
        params = jax.tree_util.tree_map(lambda x, p=p: x[p], state.params)
        fields[i].append(np.asarray(subject_fields(params, float(times[i, j]), shape, cfg.network)[0]))
        field_times[i].append(float(times[i, j]))
    return PairwiseFields([np.stack(f) if f else np.zeros((0, *shape, len(shape)), np.float32) for f in fields],
                          [np.asarray(t) for t in field_times])  # fmt: skip
