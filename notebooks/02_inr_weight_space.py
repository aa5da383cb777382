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
# # 2. Cohort INRs and their weight space
#
# One spatiotemporal INR per subject, I(x, t), fitted for the whole cohort in one
# vmapped program (seed 000: shared initialisation theta*, then a per-subject fine-tune).
# Then: reconstructions at the scanned ages and between them, the parameter groups
# P_space / P_time / P_com, an embedding of the weights coloured by group, and the
# classification experiment (INR-weight encoder and logistic regression against SFCN,
# the change-image PCA and an oracle that reads the simulator's truth), all on one split.
#
# **Time:** about 2-3 minutes on 2 CPU cores at the small size (2D at 4 mm, 12 anatomies
# as healthy and dementia-like twins, width 32). The figures at scale:
# `benchmarks/trajectory_classification.py` and `benchmarks/RESULTS.md`.

# %%
import os
import tempfile
from pathlib import Path

import jax
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display

from longbrain_jax.classification import ClassifyConfig, TrainConfig, results_table, run_classification
from longbrain_jax.fit import FitConfig, StageConfig, fit_cohort, load_fit
from longbrain_jax.fit.evaluate import reconstruct_volumes, role_summary
from longbrain_jax.inr.spatiotemporal import INRConfig
from longbrain_jax.io import read_bids
from longbrain_jax.report import markdown_table, weight_embedding
from longbrain_jax.simulate import SimulationConfig, read_volumes, simulate_cohort
from longbrain_jax.weightspace.tokens import stream_vectors

SIZE = os.environ.get("LONGBRAIN_NOTEBOOK_SIZE", "small")  # "test": every cell with the fewest steps (the test suite)
small = SIZE != "accelerator"
few = 0.1 if SIZE == "test" else 1.0  # share of the small size's steps
sim = SimulationConfig(num_subjects=12 if small else 225, paired=True, ndim=2 if small else 3, resolution_mm=4.0 if small else 2.0,
                       chunk_size=8 if small else None, seed=0)  # fmt: skip
fit_cfg = FitConfig(
    inr=INRConfig(ndim=sim.ndim, width=32 if small else 512),
    shared=StageConfig(steps=int(50 * few) if small else 250, learning_rate=1e-3, sample_fraction=0.05 if small else 0.001),
    finetune=StageConfig(steps=int(200 * few) if small else 100, learning_rate=1e-3, sample_fraction=0.1 if small else 0.01),
    holdout="interpolation_extrapolation",
)
work = Path(tempfile.mkdtemp(prefix="longbrain-nb2-"))
bids = simulate_cohort(work / "bids", sim)
cohort = read_bids(bids)
print(f"{cohort.num_subjects} subjects ({sim.num_subjects} anatomies, each healthy and dementia-like), {int(cohort.mask.sum())} scans, grid {cohort.spatial_shape}")

# %% [markdown]
# ## Fit every subject in one program
#
# `fit_cohort` plans its chunk of subjects from the memory budget, shards the subject
# axis over the devices, checkpoints and can resume (`resume=True`); the command is
# `longbrain fit BIDS OUT`. The middle and last scans of subjects with enough scans are
# held out, so the fit is also a forecast.

# %%
result = fit_cohort(cohort, work / "fit", fit_cfg)
keys = ("role", "group", "n", "psnr", "ssim", "carried_forward_psnr")
display(Markdown(markdown_table(list(keys), [[r[k] for k in keys] for r in role_summary(result, cohort.volumes, cohort.groups)])))

# %% [markdown]
# Held-out scans are scored against carrying the last training scan forward (every
# scan has its own noise and bias field, so that is the no-model reference).
#
# ## Reconstructions between the scans
#
# An INR is a function of age: render it at the scanned ages and at ages never scanned.

# %%
i = int(np.argmax(cohort.num_scans))
n = int(cohort.num_scans[i])
ages = np.sort(np.concatenate([cohort.ages[i, :n], (cohort.ages[i, :n - 1] + cohort.ages[i, 1:n]) / 2]))
fitted = load_fit(work / "fit")  # what `longbrain fit` wrote: config, stacked parameters, subjects
one = jax.tree_util.tree_map(lambda x: x[i], fitted.params)  # subject i's INR
recon = reconstruct_volumes(one, ages, cohort.spatial_shape, fit_cfg.inr)
fig, axes = plt.subplots(1, len(ages), figsize=(1.8 * len(ages), 2.2))
for ax, age, vol in zip(axes, ages, recon):
    ax.imshow(np.rot90(vol), cmap="gray", vmin=-1, vmax=1)
    ax.set_title(f"{age:.1f} y" + ("" if np.isclose(cohort.ages[i, :n], age).any() else " (no scan)"), fontsize=8)
    ax.axis("off")
plt.show()

# %% [markdown]
# ## The weights as data
#
# The network is split into a spatial stream (P_space: layers of x only), a temporal
# stream (P_time: layers of t only) and the layers that combine them (P_com). A
# subject's aging lives in P_time and P_com, its anatomy mostly in P_space. Below, the
# first two principal components of each group of weights, coloured by diagnosis: the
# twins share their anatomy, so P_space does not separate them.

# %%
weight_embedding({stream: stream_vectors(fitted.params, [stream]) for stream in ("P_space", "P_time", "P_com")}, fitted.groups)
plt.show()

# %% [markdown]
# ## Classification from the weights, against the scans
#
# `run_classification` splits by anatomy (both twins of a test anatomy are tested, one
# per training anatomy is trained on), then trains the inr2vec-style token encoder and a
# logistic regression on each combination of streams, SFCN on the scans, PCA + logistic
# regression on each subject's change image, and any features you pass (here an oracle:
# the simulator's true regional volume slopes). At this size the accuracies have wide
# uncertainty (a handful of test subjects); `folds=5` gives k-fold mean +- sd.

# %%
epochs = int(30 * few)
cls_cfg = ClassifyConfig(
    token_widths=(32, 64), head_width=32, encoder=TrainConfig(epochs=epochs, batch_size=8, learning_rate=1e-3),
    baseline=TrainConfig(epochs=epochs, batch_size=8, learning_rate=1e-3), sfcn_channels=(8, 16, 16),
    sfcn=TrainConfig(epochs=epochs, batch_size=8, learning_rate=1e-3), features=TrainConfig(epochs=100, learning_rate=0.05),
    combinations=(("P_space",), ("P_time",), ("P_time", "P_com"))[: 1 if SIZE == "test" else 3],
) if small else ClassifyConfig(folds=5)
rows = read_volumes(bids / "derivatives" / "simulator" / "volumes.tsv")
oracle = []
for sid in cohort.subject_ids:
    mine = [r for r in rows if r["participant_id"] == f"sub-{sid}"]
    age = np.array([float(r["age"]) for r in mine])
    oracle.append([np.polyfit(age, np.log([float(r[f"{name}_pv_mm3"]) for r in mine]), 1)[0] if len(mine) > 1 else 0.0
                   for name in ("hippocampus", "lateral_ventricles", "cortical_gm", "cerebral_wm")])
results = run_classification(fitted, cohort, cls_cfg, features={"oracle: true volume slopes": np.array(oracle, np.float32)})
display(Markdown(results_table(results)))

# %% [markdown]
# Next: `03_registration.py`, the deformation behind the change, in continuous time.
