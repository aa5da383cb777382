"""The 4D deformation diffusion model (arXiv 2604.22700): a subject's future anatomy as a diffeomorphic sequence.

- `svf`: stage 1, every follow-up registered to its baseline as a stationary velocity field.
- `schedule`: the noise schedule and the samplers (DDIM, DPM-Solver++ 2M), written by hand.
- `denoiser`: the factorised space/time network.
- `model`: stage 2, the conditional diffusion model over a subject's velocity frames.
- `generate`: `longbrain generate train` / `sample` (train, load, sample, write).
"""

from longbrain_jax.diffusion.config import DiffusionConfig
from longbrain_jax.diffusion.denoiser import DenoiserConfig
from longbrain_jax.diffusion.svf import SVFConfig

__all__ = ["DenoiserConfig", "DiffusionConfig", "SVFConfig"]
