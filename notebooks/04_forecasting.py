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
# # 4. Forecasting future scans
#
# Every forecaster on the same held-out scans (the middle and last scan of each
# subject), scored the same way: image similarity (SSIM, PSNR, MAE) and regional volume
# error measured by one segmentation U-Net on prediction and truth alike.
#
# - `last_observation` and `voxelwise_linear`: the references a method must beat.
# - `mrextrap` (seed 003): an autoencoder whose latent codes are extrapolated along a
#   straight line per subject (slope prior from the population), then decoded.
# - `noder` (seed 004): a neural ODE over a deformation: the last known scan is warped
#   forward in time by a learned velocity field.
# - `inr`: the spatiotemporal INR of notebook 2 evaluated at the held-out ages.
#
# **Time:** about 6 minutes on 2 CPU cores at the small size (2D at 4 mm, 8 subjects,
# networks trained for a few hundred steps: the numbers show the instrument, not the
# methods at their best; `benchmarks/forecasting.py` has the figures at scale).

# %%
import os
import tempfile
from pathlib import Path

from IPython.display import Image, Markdown, display

from longbrain_jax.fit import FitConfig, StageConfig
from longbrain_jax.forecast import ForecastConfig, results_markdown, run_forecasting
from longbrain_jax.forecast.report import curve_figure, forecast_figure, linearity_figure
from longbrain_jax.inr import INRConfig
from longbrain_jax.io import LoadConfig, read_bids
from longbrain_jax.latent.autoencoder import AutoencoderConfig
from longbrain_jax.noder import NODERConfig
from longbrain_jax.segmenter import SegmenterConfig
from longbrain_jax.simulate import SimulationConfig, simulate_cohort
from longbrain_jax.simulate.simulator import PIPELINE

SIZE = os.environ.get("LONGBRAIN_NOTEBOOK_SIZE", "small")  # "test": every cell with the fewest steps (the test suite)
work = Path(tempfile.mkdtemp(prefix="longbrain-nb4-"))
sim = SimulationConfig(num_subjects=128 if SIZE == "accelerator" else 8, sampling="regular", regular_ages=(50.0, 58.0, 67.0, 75.0),
                       ndim=3 if SIZE == "accelerator" else 2, resolution_mm=2.0 if SIZE == "accelerator" else 4.0,
                       chunk_size=None if SIZE == "accelerator" else 8, seed=4)  # fmt: skip
cohort = read_bids(simulate_cohort(work / "bids", sim), LoadConfig(label_pipeline=PIPELINE))
if SIZE == "accelerator":
    cfg = ForecastConfig()  # every forecaster, the diffusion model included, at the default (paper-like) sizes
else:
    steps = {"test": 0.05, "small": 1.0}[SIZE]  # share of the small size's training steps
    n = lambda k: max(2, int(k * steps))  # noqa: E731
    cfg = ForecastConfig(
        # the test size runs every cell with the cheap forecasters and MRExtrap (NODER and the INR are the suite's own tests)
        methods=("last_observation", "voxelwise_linear", "mrextrap") + (("noder", "inr") if SIZE == "small" else ()),
        autoencoder=AutoencoderConfig(ndim=2, channels=(8, 16, 32), discriminator_channels=(8, 16, 16), perceptual_channels=(8, 16),
                                      steps=n(300), batch_size=8, learning_rate=2e-3, adversarial_start=n(200)),
        noder=NODERConfig(iterations=n(60)),
        inr=FitConfig(inr=INRConfig(ndim=2, width=64), shared=StageConfig(n(50), 1e-3, 0.05), finetune=StageConfig(n(300), 1e-3, 0.1),
                      time_curvature=0.01),
        segmenter=SegmenterConfig(channels=(8, 16, 32), steps=n(800), learning_rate=3e-3),
    )  # fmt: skip

# %% [markdown]
# ## Run the experiment
#
# `run_forecasting` trains what each forecaster needs on the known scans only, then
# forecasts, scores and (optionally) writes every prediction, chunk by chunk under the
# memory budget. The command: `longbrain forecast BIDS OUT`.

# %%
result = run_forecasting(cohort, cfg)
display(Markdown(results_markdown(result)))

# %% [markdown]
# Read the volume columns against the row "segmenter on the true scan": that is the
# instrument's own error (the U-Net's volumes on the true held-out scan against the true
# labels). A forecaster's volume error cannot be told apart from one below it; at 4 mm the
# hippocampus is a few pixels of a slice, so its percentage is the least reliable.

# %% [markdown]
# ## One subject's held-out scans and every forecast

# %%
forecast_figure(result, work / "forecasts.png")
display(Image(filename=str(work / "forecasts.png")))

# %% [markdown]
# ## Error against the number of scans used
#
# The last scan predicted from the first k known scans, k = 1 .. all: a forecaster that
# uses a subject's history should improve with k.

# %%
if result.curve:
    curve_figure(result, work / "curve.png")
    display(Image(filename=str(work / "curve.png")))

# %% [markdown]
# ## MRExtrap's assumption: straight lines in latent space
#
# Decode points on the straight line between a subject's first and last known latent
# codes and measure regional volumes along it: MRExtrap's extrapolation is only as good
# as these curves are straight (R^2 of a line per structure).

# %%
if result.linearity is not None:
    linearity_figure(result.linearity, work / "linearity.png")
    display(Image(filename=str(work / "linearity.png")))

# %% [markdown]
# Next: `05_diffusion.py` generates whole future deformation sequences, with their spread.
