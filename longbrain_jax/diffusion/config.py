"""The 4D deformation diffusion model's configuration: stage 1 (SVFs), the denoiser, training and sampling."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

from longbrain_jax.config import check_literals
from longbrain_jax.diffusion.denoiser import DenoiserConfig
from longbrain_jax.diffusion.svf import SVFConfig


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
    """Everything `longbrain generate` trains and samples with.

    **Arguments:**

    - `svf`: stage 1, the pairwise stationary-velocity registration of every follow-up
      to its baseline; its velocity grid (`svf.velocity_factor` coarser than the scans)
      is the grid the diffusion model generates on.
    - `denoiser`: the factorised space/time network's sizes.
    - `frames`: what a frame is. "rate": the follow-up's SVF divided by its interval since
      the baseline (normalised units per year), so a subject whose anatomy changes at a
      steady pace has near-identical frames at every age, and generating at an unseen age
      (a later one, an irregular one) asks for the frame the others already imply; this is
      this project's answer to the paper's missing temporal consistency (measured by the
      monotone share). "velocity": the SVF itself, as the paper.
    - `diffusion_steps`, `schedule`: the discrete forward process (paper: 1000, cosine).
    - `prediction`: what the network predicts, "v" (default) or "eps" (paper); `loss`: "l1"
      (paper) or "l2". On sequences whose rate the group sets (`tests/test_diffusion.py`, 16
      subjects, 1000 steps, 20 DPM-Solver steps), eps-prediction's samples spread 8x more than
      the data (sd 0.0012 against 0.0003 per year) and lost the groups' difference; v-prediction's
      spread 0.00015 and kept it (0.0023 against 0.0031; truth 0.002 and 0.004).
    - `steps`, `batch_size`, `learning_rate`, `ema`: AdamW training (subjects per batch;
      `ema` the decay of the parameters' exponential moving average, which sampling uses).
    - `cond_dropout`: probability of replacing group and sex by "unknown" in training,
      so one network gives conditional and unconditional predictions (classifier-free
      guidance).
    - `sampler`: "ddim" (deterministic, eta 0) or "dpm2m" (DPM-Solver++ 2M, second order);
      `sample_steps`: its steps; `guidance`: the classifier-free guidance scale (1: plain
      conditional sampling); `samples`: sequences drawn per subject; `clip`: the predicted
      clean frames are clipped to [-clip, clip] at every sampling step (frames have unit
      RMS; at the noisiest steps an eps-prediction's x0 is divided by sqrt(alpha_bar) ~ 0.03,
      which a barely trained network turns into fields that fold); 0: no clipping.
    - `trajectory`: how a sampled sequence becomes SVFs. "monotone" (default): one direction
      per sequence, the least-squares rate through its frames, walked at a non-decreasing pace
      (`model.monotone_path`), so each voxel's volume change keeps its sign over time (the
      consistency the paper lacks); "frames": each generated frame as drawn, as the paper.
      Sampling only: a trained model can be sampled either way.
    - `unfold_sigmas`: a drawn sequence whose map folds anywhere on the image grid (|J| <= 0)
      has all its SVFs smoothed with the first of these Gaussian widths (velocity-grid voxels)
      that leaves none folding (`model.unfold`); sequences that do not fold are kept as drawn.
      Stage 1's fields never folded, but a sample's stray fine-scale detail can (1.9e-5 of
      voxels in `benchmarks/diffusion.py`, 0 with this guard: RESULTS.md). () keeps every draw
      as it is (the paper's; the folding share is then measured, not guarded). Sampling only.
    - `checkpoint_every`: training steps between checkpoints (resume restarts there).
    - `seed`.
    """

    # models recorded before `unfold_sigmas` existed sampled every draw as it was (`config.config_from_dict`)
    RECORDED_BEFORE: ClassVar[dict[str, object]] = {"unfold_sigmas": ()}

    svf: SVFConfig = SVFConfig()
    denoiser: DenoiserConfig = DenoiserConfig()
    frames: Literal["rate", "velocity"] = "rate"
    diffusion_steps: int = 1000
    schedule: Literal["cosine", "linear"] = "cosine"
    prediction: Literal["eps", "v"] = "v"
    loss: Literal["l1", "l2"] = "l1"
    steps: int = 3000
    batch_size: int = 8
    learning_rate: float = 3e-4
    ema: float = 0.999
    cond_dropout: float = 0.1
    sampler: Literal["ddim", "dpm2m"] = "dpm2m"
    sample_steps: int = 25
    guidance: float = 1.0
    samples: int = 8
    clip: float = 8.0
    trajectory: Literal["monotone", "frames"] = "monotone"
    unfold_sigmas: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    checkpoint_every: int = 500
    seed: int = 0

    def __post_init__(self):
        check_literals(self)
        problems = [
            name
            for name, ok in (
                ("diffusion_steps >= 2", self.diffusion_steps >= 2),
                ("steps >= 0", self.steps >= 0),
                ("batch_size >= 1", self.batch_size >= 1),
                ("learning_rate > 0", self.learning_rate > 0),
                ("0 <= ema < 1", 0 <= self.ema < 1),
                ("0 <= cond_dropout < 1", 0 <= self.cond_dropout < 1),
                ("1 <= sample_steps <= diffusion_steps", 1 <= self.sample_steps <= self.diffusion_steps),
                ("guidance >= 0", self.guidance >= 0),
                ("samples >= 1", self.samples >= 1),
                ("clip >= 0", self.clip >= 0),
                ("checkpoint_every >= 1", self.checkpoint_every >= 1),
                ("unfold_sigmas finite, > 0 and increasing", all(0 < s < float("inf") for s in self.unfold_sigmas)
                 and list(self.unfold_sigmas) == sorted(set(self.unfold_sigmas))),
            )
            if not ok
        ]
        if problems:
            raise ValueError(f"DiffusionConfig needs {', '.join(problems)}: {self}")
