"""Rigid / affine alignment of follow-ups to their baseline (and of baselines to the MNI152 template).

Real follow-ups are scanned at another head position every visit; every other method
of the project assumes they are aligned. This package does what ANTs' longitudinal
pipeline or NiftyReg do first, for a whole cohort in one compiled program per chunk:

- `parameters.py`: rigid / affine parameter vectors, centred and scaled to mm.
- `similarity.py`: NCC and a differentiable Mattes mutual information.
- `pyramid.py`: the multi-resolution levels and the gradient-carrying sampler.
- `register.py`: the optimisers (Levenberg-Marquardt, Adam) and the batched pair program.
- `cohort.py`: `align_dataset` (an aligned BIDS dataset), `align_cohort`, `AlignedSource`.
- `config.py`: `AlignConfig`.

Transforms are written as ITK text files (`io.transforms`), fixed point -> moving point,
so `antsApplyTransforms -i followup -r baseline -t xfm.txt` applies them.
"""

from longbrain_jax.align.cohort import AlignedSource, CohortTransforms, align_cohort, align_dataset, estimate_transforms
from longbrain_jax.align.config import AlignConfig
from longbrain_jax.align.register import PairResult, align_pairs, register_pair, register_pairs

__all__ = [
    "AlignConfig",
    "AlignedSource",
    "CohortTransforms",
    "PairResult",
    "align_cohort",
    "align_dataset",
    "align_pairs",
    "estimate_transforms",
    "register_pair",
    "register_pairs",
]
