"""Neuron tokens of a spatiotemporal INR's parameters, and flat weight rows per parameter group.

A token is one neuron's incoming weights with its bias appended (inr2vec, De Luigi et al.
2023): neuron j of a layer with weights (n_in, n_out) gives [w[:, j], b[j]] of length
n_in + 1. A leading subject axis, where present, is kept.
"""

from __future__ import annotations

import jax
import numpy as np

from longbrain_jax.inr import spatiotemporal as st


def layer_tokens(layer: dict) -> np.ndarray:
    """Tokens of one layer: (..., n_out, n_in + 1) rows [w[:, j], b[j]] per neuron j.

    A WIRE layer has two linear maps; their tokens are stacked along the neuron axis.
    """
    if "freq" in layer:
        return np.concatenate([layer_tokens(layer["freq"]), layer_tokens(layer["scale"])], axis=-2)
    w, b = np.asarray(layer["w"]), np.asarray(layer["b"])
    return np.concatenate([np.swapaxes(w, -1, -2), b[..., None]], axis=-1)


def group_tokens(params: st.Params, group: str) -> list[np.ndarray]:
    """Per-layer token arrays of one parameter group (`P_space`, `P_time`, `P_com`)."""
    return [layer_tokens(layer) for layer in st.parameter_groups(params)[group]]


def flat_weights(params: st.Params, group: str) -> np.ndarray:
    """(N, n_params) flat weight table of a group for stacked cohort parameters."""
    tokens = group_tokens(params, group)
    n = tokens[0].shape[0] if tokens else jax.tree_util.tree_leaves(params)[0].shape[0]
    return np.concatenate([t.reshape(n, -1) for t in tokens], axis=1) if tokens else np.zeros((n, 0), np.float32)
