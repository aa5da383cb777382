"""How a cohort of spatiotemporal INRs is fitted (`FitConfig`): the network, the two
training stages, sampling, held-out scans, chunking and checkpoints."""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

from longbrain_jax.config import check_literals
from longbrain_jax.fit.train import Sampling, StageConfig
from longbrain_jax.inr import spatiotemporal as st


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """Cohort fitting. Defaults are the paper's (METHODS.md section 1).

    **Arguments:**

    - `inr`: the network.
    - `shared`: the shared initialisation theta* (paper: 250 steps, lr 1e-4, 0.1% of voxels).
    - `shared_subjects_per_step`: subjects per theta* step (paper: 3).
    - `shared_pool`: most subjects loaded for theta* (a seeded random subset; fewer if
      the memory budget says so, `fit.plan`).
    - `finetune`: the per-subject stage (paper: 100 steps, lr 1e-3, 1% of voxels).
    - `foreground_fraction`: share of points drawn from foreground voxels (paper: 0.9).
    - `foreground_threshold`: normalised intensity above which a voxel is foreground.
    - `time_curvature`: weight of the temporal curvature penalty (`fit.train.Sampling`;
      0, the paper's, switches it off); `time_step_years`, `time_horizon_years`: its
      difference step and how far past the last training scan it reaches.
    - `holdout`: "none"; "extrapolation" (hold out the last scan of subjects with >= 3
      scans); "interpolation_extrapolation" (also a middle scan of subjects with >= 4).
    - `chunk_size`: most subjects trained together; None: as many as the memory budget
      allows (`fit.plan`). Rounded up to a device multiple.
    - `steps_per_call`: steps per compiled call (progress and checkpoint granularity).
    - `checkpoint_every`: steps between checkpoints (a multiple of `steps_per_call`).
    - `eval_block`: most voxels per reconstruction block when scoring; None: planned.
    - `seed`: the PRNG seed of every draw.
    """

    inr: st.INRConfig = st.INRConfig()
    shared: StageConfig = StageConfig(steps=250, learning_rate=1e-4, sample_fraction=0.001)
    shared_subjects_per_step: int = 3
    shared_pool: int = 64
    finetune: StageConfig = StageConfig(steps=100, learning_rate=1e-3, sample_fraction=0.01)
    foreground_fraction: float = 0.9
    foreground_threshold: float = -0.9
    time_curvature: float = 0.0
    time_step_years: float = 2.0
    time_horizon_years: float = 10.0
    holdout: Literal["none", "extrapolation", "interpolation_extrapolation"] = "none"
    chunk_size: int | None = None
    steps_per_call: int = 10
    checkpoint_every: int = 50
    eval_block: int | None = None
    seed: int = 0

    def __post_init__(self):
        check_literals(self)
        if not 0.0 <= self.foreground_fraction <= 1.0:
            raise ValueError(f"foreground_fraction must be in [0, 1], got {self.foreground_fraction}")
        if min(self.chunk_size or 1, self.eval_block or 1, self.steps_per_call, self.shared_subjects_per_step, self.shared_pool) < 1:
            raise ValueError("chunk_size, eval_block, steps_per_call, shared_subjects_per_step and shared_pool must be >= 1")
        if self.time_curvature < 0 or self.time_step_years <= 0 or self.time_horizon_years < 0:
            raise ValueError("need time_curvature >= 0, time_step_years > 0 and time_horizon_years >= 0")
        if self.checkpoint_every < 1 or self.checkpoint_every % self.steps_per_call:
            raise ValueError(f"checkpoint_every ({self.checkpoint_every}) must be a multiple of steps_per_call ({self.steps_per_call})")

    def sampling(self, stage: StageConfig, shape: tuple[int, ...], max_scans: int) -> Sampling:
        """The static loss description of one stage (times in the network's units)."""
        years = 1.0 / self.inr.age_scale
        return Sampling(shape, stage.num_points(int(np.prod(shape)), max_scans), self.foreground_fraction,
                        self.time_curvature, self.time_step_years * years, self.time_horizon_years * years)  # fmt: skip


#: Named starting points for `longbrain fit --preset NAME` (`FitConfig` fields given as options
#: beside it still apply). Figures: benchmarks/RESULTS.md, "The published INR against ours".
PRESETS: dict[str, FitConfig] = {
    # the paper's settings (the defaults): width 512, theta* 250 steps, 100 fine-tuning steps at 1%
    # of voxels; about 26-27 dB train PSNR on 1 mm slices at CPU widths (64-128)
    "paper": FitConfig(),
    # the authors' published network: 2 combined WIRE layers + a WIRE output, isotropic coordinates
    "published": FitConfig(inr=st.INRConfig.published()),
    # >= 30 dB train PSNR on 1 mm 2D slices (167 x 204: 32.0 / 31.1 dB healthy / dementia-like) at
    # about a minute per subject on 2 CPU cores: width 64, theta* 100 steps, 1000 steps at 5%
    "slices-30db": FitConfig(inr=st.INRConfig(width=64), shared=StageConfig(steps=100, learning_rate=1e-3, sample_fraction=0.025),
                             finetune=StageConfig(steps=1000, learning_rate=1e-3, sample_fraction=0.05)),  # fmt: skip
}
