"""Longitudinal registration with temporally parameterised displacement INRs (Shuaibu et al. 2025)."""

from longbrain_jax.registration.losses import LossConfig, monotonic_penalty, subject_loss
from longbrain_jax.registration.network import DisplacementConfig
from longbrain_jax.registration.train import RegistrationConfig, register, registration_block

__all__ = ["DisplacementConfig", "LossConfig", "RegistrationConfig", "monotonic_penalty", "register", "registration_block", "subject_loss"]
