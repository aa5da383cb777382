# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 5. The 4D deformation diffusion model: samples, spread, counterfactual groups
#
# Seed 002. Stage 1 registers each follow-up to its baseline as a stationary velocity
# field (SVF, exponentiated by scaling and squaring, so no map folds). Stage 2 trains a
# conditional diffusion model over a subject's sequence of velocity frames, conditioned
# on the baseline scan, group, sex, baseline age and each frame's age. Sampling draws
# several futures per subject; swapping the group gives a counterfactual.
#
# **Time:** about 3 minutes on 2 CPU cores at the small size (2D at 4 mm, 24 training
# subjects, 600 denoiser steps: far too few for calibrated samples; the point is the
# workflow. `benchmarks/diffusion.py` trains at scale).

# %%
import csv
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from longbrain_jax.diffusion import DiffusionConfig
from longbrain_jax.diffusion.denoiser import DenoiserConfig
from longbrain_jax.diffusion.generate import load_model, sample_model, train_model
from longbrain_jax.diffusion.svf import SVFConfig
from longbrain_jax.io import LoadConfig, load_image, read_bids
from longbrain_jax.report import jacobian_overlay
from longbrain_jax.simulate import SimulationConfig, simulate_cohort
from longbrain_jax.simulate.simulator import PIPELINE

SIZE = os.environ.get("LONGBRAIN_NOTEBOOK_SIZE", "small")  # "test": every cell with the fewest steps (the test suite)
small = SIZE != "accelerator"
few = 0.02 if SIZE == "test" else 1.0  # share of the small size's steps
work = Path(tempfile.mkdtemp(prefix="longbrain-nb5-"))
sim = SimulationConfig(num_subjects=12 if small else 200, paired=True, ndim=2 if small else 3, resolution_mm=4.0 if small else 2.0,
                       chunk_size=8 if small else None, seed=5)  # fmt: skip
cohort = read_bids(simulate_cohort(work / "bids", sim), LoadConfig(label_pipeline=PIPELINE))
cfg = DiffusionConfig(svf=SVFConfig(steps=int(100 * few)), denoiser=DenoiserConfig(channels=(16, 32)), steps=int(600 * few), batch_size=8,
                      learning_rate=1e-3, samples=4, sample_steps=10 if SIZE == "test" else 25, checkpoint_every=300) if small else DiffusionConfig()  # fmt: skip
print(f"{cohort.num_subjects} subjects, {int(cohort.mask.sum())} scans, grid {cohort.spatial_shape}")

# %% [markdown]
# ## Train (stage 1 and stage 2)
#
# `train_model` writes the model folder (`longbrain generate train BIDS MODEL`):
# resumable, its stage-1 velocities kept until training ends.

# %%
model_dir = train_model(cohort, work / "model", cfg)
with open(model_dir / "losses.tsv") as f:
    losses = np.array([float(r["loss"]) for r in csv.DictReader(f, delimiter="\t")])
plt.figure(figsize=(5, 2.5))
plt.plot(np.convolve(losses, np.ones(min(25, losses.size)) / min(25, losses.size), mode="valid"))
plt.xlabel("step")
plt.ylabel("L1 loss (running mean)")
plt.show()

# %% [markdown]
# ## Sample futures, and the counterfactual group
#
# Each subject's baseline only; 5 and 10 years after it; `samples` sequences each. Then
# the same subjects with every group set to dementia-like.

# %%
model = load_model(model_dir)
subjects = cohort.select([0, 1])  # a healthy / dementia-like twin pair
sampled = sample_model(model, subjects, work / "samples", years=(5.0, 10.0))
counterfactual = sample_model(model, subjects, work / "as-dementia", years=(5.0, 10.0), group="dementia")
for i, sid in enumerate(subjects.subject_ids):
    print(f"sub-{sid}: {subjects.groups[i]}, baseline {subjects.ages[i, 0]:.1f} y")

# %% [markdown]
# ## Mean |J| of the samples over the anatomy, its spread, and the counterfactual
#
# Per subject: the mean over samples of |J| 10 years on (as generated, and with the
# group set to dementia-like), and the sd over samples. A generated scan is the baseline
# pulled through the sampled map (scan_t = baseline o phi, phi from the future grid to the
# baseline's), so here |J| < 1 (blue) where a structure grew, such as the ventricles, and
# > 1 where tissue shrank: the opposite sign of the simulator's truth in notebook 1, which
# lives on the baseline grid.

# %%
def last_age(folder: Path, sid: str, desc: str) -> np.ndarray:
    """The subject's map at the last sampled age (file names sort by age)."""
    return load_image(sorted((folder / f"sub-{sid}").glob(f"sub-{sid}_age-*_desc-{desc}_jacdet.nii.gz"))[-1])[0]


rows, titles = [], []
for i, sid in enumerate(subjects.subject_ids):
    rows.append([last_age(sampled, sid, "mean"), last_age(counterfactual, sid, "mean"), 1.0 + last_age(sampled, sid, "sd")])
    titles.append([f"mean |J|, {subjects.groups[i]}", "mean |J|, as dementia", "1 + sd over samples"])
jacobian_overlay([subjects.volumes[i, 0] for i in range(2)], rows, [f"sub-{s}" for s in subjects.subject_ids], titles,
                 masks=[subjects.labels[i, 0] > 0 for i in range(2)], span=0.3)  # fmt: skip
plt.show()

# %% [markdown]
# ## Regional volumes of the generated futures
#
# `generated.tsv` carries the baseline's labels along each sample's map and measures
# every region: the spread over samples is the model's uncertainty.

# %%
with open(sampled / "generated.tsv") as f:
    gen = list(csv.DictReader(f, delimiter="\t"))
for sid in subjects.subject_ids:
    mine = [r for r in gen if r["participant_id"] == sid]
    for age in sorted({r["age"] for r in mine}):
        v = np.array([float(r["volume_lateral_ventricles"]) for r in mine if r["age"] == age])
        print(f"sub-{sid} at {float(age):.1f} y: lateral ventricles {v.mean():.0f} +- {v.std():.0f} mm^3 over {v.size} samples")

# %% [markdown]
# Next: `06_your_own_data.py` runs the pipeline on a BIDS dataset you bring.
