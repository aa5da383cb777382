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
# # 1. A longitudinal cohort and its ground truth
#
# Simulate a cohort of healthy and dementia-like agers (or point `BIDS` at your own
# dataset), validate and read it, plot each subject's regional volumes and brain age
# over time, and look at the simulator's true deformation: |J| of the map from the
# baseline to each follow-up, over the anatomy.
#
# **Time:** about 1 minute on 2 CPU cores at the small size below (2D axial slices at
# 4 mm). `LONGBRAIN_NOTEBOOK_SIZE=accelerator` gives 3D at 2 mm with 64 subjects.

# %%
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from longbrain_jax.io import LoadConfig, derivative_path, load_image, read_bids, scan_bids
from longbrain_jax.report import jacobian_overlay
from longbrain_jax.simulate import SimulationConfig, read_volumes, simulate_cohort
from longbrain_jax.simulate.simulator import PIPELINE

SIZE = os.environ.get("LONGBRAIN_NOTEBOOK_SIZE", "small")  # "test" / "small" (CPU, a minute) or "accelerator"
if SIZE != "accelerator":
    sim = SimulationConfig(num_subjects=8, resolution_mm=4.0, ndim=2, chunk_size=8, seed=0)
else:
    sim = SimulationConfig(num_subjects=64, resolution_mm=2.0, ndim=3, seed=0)
work = Path(tempfile.mkdtemp(prefix="longbrain-nb1-"))

# %% [markdown]
# ## Simulate, then read it back as any BIDS dataset
#
# `simulate_cohort` writes BIDS (`sub-*/ses-*/anat/*_T1w.nii.gz`, `participants.tsv`
# with groups, sessions with ages) and the truth under `derivatives/simulator/`. The
# same command line: `longbrain simulate OUT --subjects 8 --dim 2 --resolution 4`.
# `scan_bids` validates every file without reading the voxels (what
# `longbrain inspect` prints); `read_bids` reads the scans into one padded `Cohort`.

# %%
bids = simulate_cohort(work / "bids", sim)
dataset = scan_bids(bids)
print(f"{dataset.num_subjects} subjects, {int(dataset.mask.sum())} scans, {dataset.ndim}D grid {dataset.spatial_shape}")
print("groups:", {g: dataset.groups.count(g) for g in sorted(set(dataset.groups))})

cohort = read_bids(bids, LoadConfig(label_pipeline=PIPELINE))
print("volumes", cohort.volumes.shape, "(subjects, scans, *grid); mask", cohort.mask.shape, "; ages of subject 0:", cohort.ages[0, cohort.mask[0]])

# %% [markdown]
# ## Regional volumes and brain age over time
#
# `volumes.tsv` holds, per scan, the brain age the simulator drove the anatomy to and
# each region's exact (partial-volume) volume. Dementia-like subjects age faster
# between two ages drawn per subject: their ventricles grow and hippocampi shrink
# faster.

# %%
rows = read_volumes(bids / "derivatives" / PIPELINE / "volumes.tsv")
colours = {"healthy": "tab:blue", "dementia": "tab:red"}
fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
for sid in sorted({r["participant_id"] for r in rows}):
    mine = [r for r in rows if r["participant_id"] == sid]
    age = np.array([float(r["age"]) for r in mine])
    c = colours[mine[0]["group"]]
    axes[0].plot(age, [float(r["brain_age"]) - float(r["age"]) for r in mine], "-o", color=c, ms=3)
    axes[1].plot(age, [float(r["hippocampus_pv_mm3"]) / float(mine[0]["hippocampus_pv_mm3"]) for r in mine], "-o", color=c, ms=3)
    axes[2].plot(age, [float(r["lateral_ventricles_pv_mm3"]) / float(mine[0]["lateral_ventricles_pv_mm3"]) for r in mine], "-o", color=c, ms=3)
for ax, title in zip(axes, ["brain age - age (years)", "hippocampus (x baseline)", "lateral ventricles (x baseline)"]):
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("age (years)")
axes[0].legend(handles=[plt.Line2D([], [], color=c, label=g) for g, c in colours.items()])
plt.tight_layout()

# %% [markdown]
# ## The true deformation over the anatomy
#
# For every follow-up the simulator writes |J| of phi_t, the map from the baseline to
# that scan, on the baseline grid: below 1 where tissue shrank since baseline (blue),
# above 1 where it grew (red: the ventricles). One healthy and one dementia-like
# subject, every follow-up.

# %%
picks = [cohort.groups.index(g) for g in ("healthy", "dementia")]
jacobians, titles = [], []
for i in picks:
    sid, n = cohort.subject_ids[i], int(cohort.num_scans[i])
    jacobians.append([load_image(derivative_path(bids, sid, cohort.session_ids[i][j], "jacdet", PIPELINE))[0] for j in range(1, n)])
    titles.append([f"+{cohort.ages[i, j] - cohort.ages[i, 0]:.1f} y" for j in range(1, n)])
names = [f"sub-{cohort.subject_ids[i]} ({cohort.groups[i]})" for i in picks]
jacobian_overlay([cohort.volumes[i, 0] for i in picks], jacobians, names, titles, masks=[cohort.labels[i, 0] > 0 for i in picks])
plt.show()

# %% [markdown]
# Next: `02_inr_weight_space.py` fits one spatiotemporal INR per subject of such a
# cohort in one program and classifies the groups from the weights.
