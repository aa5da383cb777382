"""Cohort fitting of spatiotemporal INRs: sampling, shared init, vmapped and sharded fine-tune, checkpoints."""

from longbrain_jax.cohort import scan_roles
from longbrain_jax.fit.cohort_fit import FitConfig, FitResult, fit_cohort
from longbrain_jax.fit.outputs import FittedCohort, load_fit, write_reconstructions
from longbrain_jax.fit.train import StageConfig
from longbrain_jax.inr.tokens import flat_weights, group_tokens, layer_tokens

__all__ = [
    "FitConfig",
    "FitResult",
    "FittedCohort",
    "StageConfig",
    "fit_cohort",
    "flat_weights",
    "group_tokens",
    "layer_tokens",
    "load_fit",
    "scan_roles",
    "write_reconstructions",
]
