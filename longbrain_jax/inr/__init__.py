"""Implicit neural representations as pure functions: layers and the spatiotemporal INR."""

from longbrain_jax.inr import layers, spatiotemporal
from longbrain_jax.inr.spatiotemporal import GROUPS, INRConfig

__all__ = ["GROUPS", "INRConfig", "layers", "spatiotemporal"]
