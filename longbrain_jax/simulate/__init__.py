"""Synthetic longitudinal cohorts with known ground truth.

`Simulator` generates cohorts from the MNI152 template with brain-age drift
(healthy and dementia-like), literature atrophy rates and scanner effects, and
writes them as BIDS with their ground truth.
"""

from longbrain_jax.simulate.anatomy import AnatomyConfig
from longbrain_jax.simulate.atrophy import AtrophyConfig
from longbrain_jax.simulate.brain_age import BrainAgeConfig
from longbrain_jax.simulate.scanner import ScannerConfig
from longbrain_jax.simulate.simulator import SimulationConfig, Simulator, read_volumes, simulate_cohort
from longbrain_jax.simulate.template import REGIONS, load_template

__all__ = [
    "REGIONS",
    "AnatomyConfig",
    "AtrophyConfig",
    "BrainAgeConfig",
    "ScannerConfig",
    "SimulationConfig",
    "Simulator",
    "load_template",
    "read_volumes",
    "simulate_cohort",
]
