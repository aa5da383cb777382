"""Longitudinal cohorts: one subject's scans (`Subject`) and many, padded (`Cohort`).

A cohort stores every subject's scans in one array padded to the longest series,
with a boolean `mask` saying which time slots hold a real scan, so irregular
sampling vectorises:

- `volumes`: (N, T_max, *spatial) float32 intensities.
- `ages`: (N, T_max) float32, age at each scan in years (0 in padding).
- `times`: (N, T_max) float32, years since that subject's baseline (0 in padding).
- `mask`: (N, T_max) bool, True where a scan exists.
- `labels`: (N, T_max, *spatial) int32 label maps, or None.
- `affines`: (N, 4, 4) float64 voxel -> world (RAS+ mm) NIfTI affines.

`spatial` is (X, Y) for 2D slices and (X, Y, Z) for volumes; everything is generic in
D = len(spatial). Splits are by subject (or by a coarser unit such as the anatomy
shared by a paired healthy / dementia-like subject), never by scan.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class Subject:
    """One subject's scans in chronological order.

    **Arguments:**

    - `subject_id`: BIDS label without the `sub-` prefix.
    - `session_ids`: (T,) BIDS session labels without the `ses-` prefix.
    - `ages`: (T,) age at each scan in years, strictly increasing.
    - `volumes`: (T, *spatial) float32 intensities.
    - `affine`: (4, 4) voxel -> world (RAS+ mm) affine shared by all scans.
    - `labels`: (T, *spatial) int32 label maps, or None.
    - `group`: e.g. `"healthy"` or `"dementia"`; `""` when unknown.
    - `sex`: as given in participants.tsv; `""` when unknown.
    - `metadata`: any other participants.tsv columns.
    """

    subject_id: str
    session_ids: tuple[str, ...]
    ages: np.ndarray
    volumes: np.ndarray
    affine: np.ndarray
    labels: np.ndarray | None = None
    group: str = ""
    sex: str = ""
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        ages = np.asarray(self.ages, np.float32)
        volumes = np.asarray(self.volumes, np.float32)
        object.__setattr__(self, "ages", ages)
        object.__setattr__(self, "volumes", volumes)
        object.__setattr__(self, "affine", np.asarray(self.affine, np.float64))
        object.__setattr__(self, "session_ids", tuple(self.session_ids))
        t = len(self.session_ids)
        if t == 0:
            raise ValueError(f"subject {self.subject_id!r} has no scans")
        if ages.shape != (t,) or volumes.shape[0] != t:
            raise ValueError(
                f"subject {self.subject_id!r}: {t} sessions but ages {ages.shape} and volumes {volumes.shape}"
            )
        if volumes.ndim not in (3, 4):
            raise ValueError(f"subject {self.subject_id!r}: volumes must be (T, *spatial) with 2 or 3 spatial axes")
        if np.any(np.diff(ages) <= 0) or not np.all(np.isfinite(ages)):
            raise ValueError(f"subject {self.subject_id!r}: ages must be finite and strictly increasing, got {ages}")
        if self.affine.shape != (4, 4):
            raise ValueError(f"subject {self.subject_id!r}: affine must be 4x4, got {self.affine.shape}")
        if self.labels is not None:
            labels = np.asarray(self.labels, np.int32)
            if labels.shape != volumes.shape:
                raise ValueError(f"subject {self.subject_id!r}: labels {labels.shape} != volumes {volumes.shape}")
            object.__setattr__(self, "labels", labels)

    @property
    def num_scans(self) -> int:
        return len(self.session_ids)

    @property
    def times(self) -> np.ndarray:
        """(T,) years since this subject's baseline scan."""
        return self.ages - self.ages[0]

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.volumes.shape[1:])


@dataclasses.dataclass(frozen=True, eq=False)
class Cohort:
    """Many subjects' scans, padded to `T_max` time slots (see the module docstring)."""

    volumes: np.ndarray
    mask: np.ndarray
    ages: np.ndarray
    affines: np.ndarray
    subject_ids: tuple[str, ...]
    session_ids: tuple[tuple[str, ...], ...]
    groups: tuple[str, ...]
    sexes: tuple[str, ...]
    labels: np.ndarray | None = None
    metadata: tuple[dict[str, Any], ...] = ()

    def __post_init__(self):
        n, t_max = self.mask.shape
        if self.volumes.shape[:2] != (n, t_max) or self.ages.shape != (n, t_max):
            raise ValueError(f"volumes {self.volumes.shape} / ages {self.ages.shape} do not match mask {self.mask.shape}")
        if self.affines.shape != (n, 4, 4):
            raise ValueError(f"affines must be (N, 4, 4), got {self.affines.shape}")
        for name in ("subject_ids", "session_ids", "groups", "sexes"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries for {n} subjects")
        if len(set(self.subject_ids)) != n:
            raise ValueError("subject ids must be unique")
        if self.labels is not None and self.labels.shape != self.volumes.shape:
            raise ValueError(f"labels {self.labels.shape} != volumes {self.volumes.shape}")
        if not self.metadata:
            object.__setattr__(self, "metadata", tuple({} for _ in range(n)))

    # -- construction -------------------------------------------------------------
    @classmethod
    def from_subjects(cls, subjects: Sequence[Subject]) -> Cohort:
        """Pad subjects onto one array. All must share one spatial shape."""
        if not subjects:
            raise ValueError("a cohort needs at least one subject")
        shape = subjects[0].spatial_shape
        for s in subjects:
            if s.spatial_shape != shape:
                raise ValueError(f"subject {s.subject_id!r} has spatial shape {s.spatial_shape}, expected {shape}")
        n, t_max = len(subjects), max(s.num_scans for s in subjects)
        volumes = np.zeros((n, t_max, *shape), np.float32)
        ages = np.zeros((n, t_max), np.float32)
        mask = np.zeros((n, t_max), bool)
        with_labels = [s.labels is not None for s in subjects]
        labels = np.zeros((n, t_max, *shape), np.int32) if all(with_labels) else None
        if any(with_labels) and not all(with_labels):
            warnings.warn("only some subjects have label maps; the cohort keeps none", stacklevel=2)
        for i, s in enumerate(subjects):
            volumes[i, : s.num_scans] = s.volumes
            ages[i, : s.num_scans] = s.ages
            mask[i, : s.num_scans] = True
            if labels is not None:
                labels[i, : s.num_scans] = s.labels
        return cls(
            volumes=volumes,
            mask=mask,
            ages=ages,
            affines=np.stack([s.affine for s in subjects]),
            subject_ids=tuple(s.subject_id for s in subjects),
            session_ids=tuple(s.session_ids for s in subjects),
            groups=tuple(s.group for s in subjects),
            sexes=tuple(s.sex for s in subjects),
            labels=labels,
            metadata=tuple(dict(s.metadata) for s in subjects),
        )

    def subject(self, i: int) -> Subject:
        """Subject `i` without padding."""
        t = int(self.mask[i].sum())
        return Subject(
            subject_id=self.subject_ids[i],
            session_ids=self.session_ids[i],
            ages=self.ages[i, :t],
            volumes=self.volumes[i, :t],
            affine=self.affines[i],
            labels=None if self.labels is None else self.labels[i, :t],
            group=self.groups[i],
            sex=self.sexes[i],
            metadata=self.metadata[i],
        )

    def select(self, indices: Sequence[int] | np.ndarray) -> Cohort:
        """The sub-cohort of the given subject indices (T_max trimmed to fit)."""
        idx = np.asarray(indices, dtype=int)
        if idx.size == 0:
            raise ValueError("cannot select an empty cohort")
        t_max = max(int(self.mask[idx].sum(1).max()), 1)
        pick = lambda seq: tuple(seq[i] for i in idx)  # noqa: E731
        return Cohort(
            volumes=self.volumes[idx, :t_max],
            mask=self.mask[idx, :t_max],
            ages=self.ages[idx, :t_max],
            affines=self.affines[idx],
            subject_ids=pick(self.subject_ids),
            session_ids=pick(self.session_ids),
            groups=pick(self.groups),
            sexes=pick(self.sexes),
            labels=None if self.labels is None else self.labels[idx, :t_max],
            metadata=pick(self.metadata),
        )

    def longitudinal(self, min_scans: int = 2, method: str = "this method") -> Cohort:
        """Subjects with at least `min_scans` scans; warns naming the ones skipped."""
        keep = np.flatnonzero(self.num_scans >= min_scans)
        skipped = [self.subject_ids[i] for i in np.flatnonzero(self.num_scans < min_scans)]
        if skipped:
            warnings.warn(
                f"{method} needs {min_scans} scans per subject; skipping {len(skipped)} subject(s): "
                + ", ".join(f"sub-{s}" for s in skipped),
                stacklevel=2,
            )
        if keep.size == 0:
            raise ValueError(f"no subject has the {min_scans} scans {method} needs")
        return self.select(keep)

    # -- derived views ------------------------------------------------------------
    @property
    def num_subjects(self) -> int:
        return self.mask.shape[0]

    @property
    def max_scans(self) -> int:
        return self.mask.shape[1]

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.volumes.shape[2:])

    @property
    def ndim(self) -> int:
        """Number of spatial axes D (2 or 3)."""
        return len(self.spatial_shape)

    @property
    def num_scans(self) -> np.ndarray:
        """(N,) scans per subject."""
        return self.mask.sum(1)

    @property
    def single_scan(self) -> np.ndarray:
        """(N,) True for subjects with one scan (kept, but skipped by methods that need two)."""
        return self.num_scans < 2

    @property
    def times(self) -> np.ndarray:
        """(N, T_max) years since each subject's baseline; 0 in padding."""
        return np.where(self.mask, self.ages - self.ages[:, :1], 0.0).astype(np.float32)

    def group_index(self, classes: Sequence[str] | None = None) -> tuple[np.ndarray, tuple[str, ...]]:
        """(N,) integer class per subject and the class names (sorted unless given)."""
        classes = tuple(sorted(set(self.groups))) if classes is None else tuple(classes)
        unknown = sorted(set(self.groups) - set(classes))
        if unknown:
            raise ValueError(f"groups {unknown} are not among the classes {classes}")
        return np.array([classes.index(g) for g in self.groups], np.int32), classes


# -- scan roles ---------------------------------------------------------------------------
ROLES = ("padding", "train", "interpolation", "extrapolation")
HOLDOUTS = ("none", "extrapolation", "interpolation_extrapolation")


def scan_roles(mask: np.ndarray, holdout: str) -> np.ndarray:
    """(N, T) int8 role of every scan slot: 0 padding, 1 train, 2 interpolation, 3 extrapolation.

    Scans are in age order. "extrapolation" holds out the last scan where >= 3 scans
    exist (two remain to fit a trajectory); "interpolation_extrapolation" also holds
    out the middle one of the remaining scans where >= 4 exist.
    """
    roles = mask.astype(np.int8)
    if holdout == "none":
        return roles
    for i, n in enumerate(mask.sum(1)):
        if n >= 3:
            roles[i, n - 1] = 3
        if holdout == "interpolation_extrapolation" and n >= 4:
            roles[i, (n - 1) // 2] = 2
    return roles


# -- subject-level splits -----------------------------------------------------------
def _units(n: int, units: Sequence[Any] | None) -> tuple[np.ndarray, np.ndarray]:
    """Unique unit keys and the unit index of each subject."""
    if units is None:
        return np.arange(n), np.arange(n)
    if len(units) != n:
        raise ValueError(f"units has {len(units)} entries for {n} subjects")
    keys, inverse = np.unique(np.asarray([str(u) for u in units]), return_inverse=True)
    return keys, inverse


def _unit_strata(strata: Sequence[Any] | None, inverse: np.ndarray, n_units: int) -> np.ndarray:
    """A stratum per unit: the sorted set of its members' strata (one stratum if none)."""
    if strata is None:
        return np.zeros(n_units, int)
    members: list[set[str]] = [set() for _ in range(n_units)]
    for s, u in zip(strata, inverse, strict=True):
        members[u].add(str(s))
    names = ["|".join(sorted(m)) for m in members]
    return np.unique(names, return_inverse=True)[1]


def _shuffled_by_stratum(key: jax.Array, unit_strata: np.ndarray) -> list[np.ndarray]:
    """For each stratum, its units in a random order drawn from `key`."""
    out = []
    for s in np.unique(unit_strata):
        members = np.flatnonzero(unit_strata == s)
        perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, int(s)), members.size))
        out.append(members[perm])
    return out


def train_test_split(
    key: jax.Array,
    num_subjects: int,
    test_fraction: float = 1 / 3,
    strata: Sequence[Any] | None = None,
    units: Sequence[Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Split subject indices into train and test, by unit, stratified.

    **Arguments:**

    - `key`: PRNG key.
    - `num_subjects`: N.
    - `test_fraction`: share of units (per stratum) put in the test set.
    - `strata`: (N,) class per subject to balance across the sets (e.g. groups).
    - `units`: (N,) key per subject; subjects sharing a key (the two versions of one
      anatomy, say) always land in the same set.

    **Returns:** sorted train and test subject indices; they are disjoint and cover N.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    _, inverse = _units(num_subjects, units)
    n_units = inverse.max() + 1
    test_units = []
    for members in _shuffled_by_stratum(key, _unit_strata(strata, inverse, n_units)):
        n_test = int(round(test_fraction * members.size))
        test_units.append(members[:n_test])
    is_test = np.isin(inverse, np.concatenate(test_units))
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def stratified_kfold(
    key: jax.Array,
    num_subjects: int,
    k: int,
    strata: Sequence[Any] | None = None,
    units: Sequence[Any] | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """K (train, test) index pairs; each unit is in exactly one test fold.

    Units of each stratum are dealt round-robin over the folds after a shuffle
    (continuing where the previous stratum stopped), so fold sizes and class shares
    differ by at most one unit. Repeat with other keys for repeated k-fold.
    """
    _, inverse = _units(num_subjects, units)
    n_units = inverse.max() + 1
    if not 2 <= k <= n_units:
        raise ValueError(f"k must be between 2 and the number of units ({n_units}), got {k}")
    fold_of_unit = np.empty(n_units, int)
    offset = 0
    for members in _shuffled_by_stratum(key, _unit_strata(strata, inverse, n_units)):
        fold_of_unit[members] = (np.arange(members.size) + offset) % k
        offset += members.size
    fold = fold_of_unit[inverse]
    return [(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in range(k)]


def one_version_per_unit(key: jax.Array, indices: np.ndarray, units: Sequence[Any], labels: np.ndarray) -> np.ndarray:
    """Keep one subject per unit among `indices`, alternating classes over shuffled units.

    The paper's training set holds one version (healthy or dementia-like) of each
    anatomy; units are visited in a random order and take class 0, 1, 0, 1, ... where
    they have it, so the kept set stays balanced.

    **Returns:** the kept subject indices, sorted.
    """
    indices = np.asarray(indices)
    unit_keys = np.asarray([str(units[i]) for i in indices])
    names = np.unique(unit_keys)
    order = names[np.asarray(jax.random.permutation(key, names.size))]
    kept = []
    for k, name in enumerate(order):
        members = indices[unit_keys == name]
        wanted = [m for m in members if labels[m] == k % 2]
        kept.append(wanted[0] if wanted else members[0])
    return np.sort(np.array(kept, dtype=int))
