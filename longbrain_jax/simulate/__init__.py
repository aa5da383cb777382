"""Synthetic longitudinal cohorts with known ground truth."""

from longbrain_jax.simulate.phantom import PHANTOM_LABELS, PhantomConfig, make_phantom_cohort

__all__ = ["PHANTOM_LABELS", "PhantomConfig", "make_phantom_cohort"]
