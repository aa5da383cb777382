"""longbrain_jax: longitudinal brain MRI at cohort scale, in JAX.

Pure functions over parameter pytrees; a cohort of per-subject models is the same
pytree with a leading subject axis. See the README for the commands.
"""

from longbrain_jax.cohort import Cohort, Subject, stratified_kfold, train_test_split
from longbrain_jax.errors import InputError

__version__ = "0.1.0"

__all__ = ["Cohort", "InputError", "Subject", "__version__", "stratified_kfold", "train_test_split"]
