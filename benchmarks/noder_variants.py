"""NODER settings compared on one simulated cohort: label Dice and MAE of held-out scans.

Simulates 8 subjects (2D, 3 mm, regular ages 50 / 58 / 67 / 75), holds out the 58 and
75-year scans, and fits NODER with each variant (150 iterations) next to last
observation carried forward (whose labels are the last known scan's). The variants are
relative to the settings before the defaults changed (time_scale 10, velocity_scale 0.01).

    python benchmarks/noder_variants.py [default,smooth0.5,factor12,timescale100]
"""

import dataclasses
import sys
import tempfile
import time

import numpy as np

from longbrain_jax import segmenter as sg
from longbrain_jax.cohort import scan_roles
from longbrain_jax.forecast import forecasters as fc
from longbrain_jax.io import LoadConfig, read_bids
from longbrain_jax.noder import NODERConfig
from longbrain_jax.simulate import SimulationConfig, simulate_cohort
from longbrain_jax.simulate.simulator import PIPELINE

with tempfile.TemporaryDirectory() as tmp:
    simulate_cohort(f"{tmp}/bids", SimulationConfig(num_subjects=8, resolution_mm=3.0, ndim=2, chunk_size=8, sampling="regular"))
    cohort = read_bids(f"{tmp}/bids", LoadConfig(label_pipeline=PIPELINE))
roles = scan_roles(cohort.mask, "interpolation_extrapolation")
known = roles == 1
base = NODERConfig(iterations=150, time_scale=10.0, velocity_scale=0.01)
variants = {
    "default": base,
    "smooth0.5": dataclasses.replace(base, smooth_weight=0.5),
    "factor12": dataclasses.replace(base, velocity_factor=12, smoothing_sigma=3.0),
    "timescale100": dataclasses.replace(base, time_scale=100.0, velocity_scale=0.001),
}


def dice(f, role):
    held = np.argwhere(roles == role)
    pairs = [sg.class_dice(sg.label_classes(f.labels[i, j]), sg.label_classes(cohort.labels[i, j])) for i, j in held]
    return float(np.mean([np.nanmean(list(d.values())) for d in pairs]))


def mae(f, role):
    return float(np.mean([np.abs(f.images[i, j] - cohort.volumes[i, j]).mean() for i, j in np.argwhere(roles == role)]))


locf = fc.last_observation(cohort.volumes, cohort.ages, known, cohort.labels)
print(f"{'variant':<14} {'Dice int':>8} {'Dice ext':>8} {'MAE int':>8} {'MAE ext':>8} {'folding':>8} {'s':>6}")
print(f"{'last obs.':<14} {dice(locf, 2):8.3f} {dice(locf, 3):8.3f} {mae(locf, 2):8.4f} {mae(locf, 3):8.4f}")
for name in (sys.argv[1].split(",") if len(sys.argv) > 1 else variants):
    start = time.time()
    f = fc.noder_forecast(cohort.volumes, cohort.ages, known, cohort.labels, variants[name], source="baseline")
    print(f"{name:<14} {dice(f, 2):8.3f} {dice(f, 3):8.3f} {mae(f, 2):8.4f} {mae(f, 3):8.4f} {f.extra['folding'].max():8.4f} {time.time() - start:6.0f}")
