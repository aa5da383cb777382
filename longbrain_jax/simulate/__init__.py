"""Synthetic longitudinal cohorts with known ground truth.

`simulator.py` is the realistic one (MNI152 anatomy, brain-age drift, literature
atrophy rates, scanner effects); `phantom.py` is a tiny geometric one for fast tests.
"""

from longbrain_jax.simulate.anatomy import AnatomyConfig
from longbrain_jax.simulate.atrophy import AtrophyConfig
from longbrain_jax.simulate.brain_age import BrainAgeConfig
from longbrain_jax.simulate.phantom import PHANTOM_LABELS, PhantomConfig, make_phantom_cohort
from longbrain_jax.simulate.scanner import ScannerConfig
from longbrain_jax.simulate.simulator import SimulationConfig, Simulator, read_volumes, simulate_cohort
from longbrain_jax.simulate.template import REGIONS, load_template

__all__ = [
    "PHANTOM_LABELS",
    "REGIONS",
    "AnatomyConfig",
    "AtrophyConfig",
    "BrainAgeConfig",
    "PhantomConfig",
    "ScannerConfig",
    "SimulationConfig",
    "Simulator",
    "load_template",
    "make_phantom_cohort",
    "read_volumes",
    "simulate_cohort",
]
