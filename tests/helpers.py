"""What several test modules build: affines, subjects, a tiny 2D cohort and the tiny fit configuration."""

import numpy as np

from longbrain_jax.cohort import Cohort, Subject
from longbrain_jax.fit import FitConfig, StageConfig
from longbrain_jax.inr import INRConfig


def affine_mm(voxel=(2.0, 2.0, 2.0), origin=(-10.0, -12.0, -8.0)) -> np.ndarray:
    """A 4x4 voxel -> world affine with the given voxel sizes and origin."""
    a = np.diag([*voxel, 1.0])
    a[:3, 3] = origin
    return a


def make_subject(i, scans, shape=(6, 5, 4), rng=None, group="healthy"):
    rng = rng or np.random.default_rng(i)
    return Subject(
        subject_id=f"s{i}",
        session_ids=[f"{t}" for t in range(scans)],
        ages=60.0 + np.cumsum(rng.uniform(0.5, 3.0, scans)),
        volumes=rng.random((scans, *shape)),
        affine=affine_mm(),
        labels=rng.integers(0, 3, (scans, *shape)),
        group=group,
    )


SHAPE = (12, 14)
TINY = FitConfig(
    inr=INRConfig(ndim=2, width=12, stream_layers=2, combined_layers=1, spatial_activation="sine",
                  combined_activation="sine", w0=6.0),
    shared=StageConfig(steps=6, learning_rate=3e-3, sample_fraction=0.3),
    finetune=StageConfig(steps=12, learning_rate=3e-3, sample_fraction=0.3),
    shared_subjects_per_step=2, chunk_size=4, steps_per_call=2, checkpoint_every=4,
)  # fmt: skip


def blob_cohort(n: int = 6, seed: int = 0) -> Cohort:
    """2D discs that shrink with age (faster for 'dementia'), irregular scans, background at -1."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    t_max = 4
    volumes = np.full((n, t_max, *SHAPE), -1.0, np.float32)
    ages = np.zeros((n, t_max), np.float32)
    mask = np.zeros((n, t_max), bool)
    groups = tuple("dementia" if i % 2 else "healthy" for i in range(n))
    for i in range(n):
        k = 2 + i % 3
        ages[i, :k] = np.sort(rng.uniform(50, 75, k))
        mask[i, :k] = True
        for t in range(k):
            r = 4.5 - (0.08 if i % 2 else 0.03) * (ages[i, t] - 50)
            d = np.hypot(yy - 5.5 - 0.3 * i % 2, xx - 6.5)
            volumes[i, t] = np.where(d < r, 0.6 - 0.04 * d, -1.0) + 0.01 * rng.standard_normal(SHAPE)
    return Cohort(
        volumes=volumes, mask=mask, ages=ages, affines=np.tile(np.diag([2.0, 2.0, 2.0, 1.0]), (n, 1, 1)),
        subject_ids=tuple(f"{i:02d}" for i in range(n)), session_ids=tuple(tuple(f"{t}" for t in range(int(mask[i].sum()))) for i in range(n)),
        groups=groups, sexes=("",) * n,
    )  # fmt: skip
