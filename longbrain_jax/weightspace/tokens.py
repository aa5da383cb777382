"""INR parameter streams as data: neuron tokens and flat vectors.

Every row of every selected weight matrix, with its bias appended, is one token
(inr2vec, De Luigi et al. 2023): neuron j of a layer with weights (n_in, n_out) gives
[w[:, j], b[j]] of length n_in + 1. The hidden layers of the spatiotemporal INR are
all width x width, so every token of P_space, P_time and P_com has length width + 1
and any combination of streams is one set of tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from longbrain_jax.inr.spatiotemporal import GROUPS
from longbrain_jax.inr.tokens import flat_weights, group_tokens

# The stream combinations of the paper's Table 2.
COMBINATIONS: tuple[tuple[str, ...], ...] = (
    ("P_space",),
    ("P_time",),
    ("P_com",),
    ("P_space", "P_com"),
    ("P_time", "P_com"),
    ("P_space", "P_time", "P_com"),
)


def _check(streams: Sequence[str]) -> None:
    if not streams:
        raise ValueError("select at least one parameter stream")
    unknown = [s for s in streams if s not in GROUPS]
    if unknown:
        raise ValueError(f"unknown parameter stream(s) {unknown}; expected some of {GROUPS}")


def stream_tokens(params: dict, streams: Sequence[str]) -> np.ndarray:
    """(N, n_tokens, width + 1) tokens of the selected streams of stacked cohort parameters."""
    _check(streams)
    per_layer = [t for s in streams for t in group_tokens(params, s)]
    if not per_layer:
        raise ValueError(f"streams {tuple(streams)} hold no layers in this network")
    return np.concatenate(per_layer, axis=1).astype(np.float32)


def stream_vectors(params: dict, streams: Sequence[str]) -> np.ndarray:
    """(N, P) flat parameters of the selected streams (tokens flattened in order)."""
    _check(streams)
    return np.concatenate([flat_weights(params, s) for s in streams], axis=1).astype(np.float32)


def combination_name(streams: Sequence[str]) -> str:
    """"P_space+P_com" style name of a stream combination."""
    return "+".join(streams)
