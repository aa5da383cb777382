"""Pure-function INR layers: dense maps, SIREN sine, real WIRE (Gabor), ReLU, Fourier features.

A layer's parameters are a plain dict of arrays; `init_layer(key, n_in, n_out, kind,
...)` makes them and `apply_layer(params, h, kind, ...)` maps (..., n_in) features to
(..., n_out). Weights are stored (n_in, n_out), so neuron j's incoming weights are the
column `w[:, j]` (the "row" of a PyTorch (n_out, n_in) weight).

Kinds:

- `"sine"` (SIREN, Sitzmann et al. 2020): sin(w0 (h W + b)). First layer W ~ U(-1/n_in,
  1/n_in); later layers W ~ U(-sqrt(6/n_in)/w0, sqrt(6/n_in)/w0); bias U(-1/sqrt(n_in),
  1/sqrt(n_in)).
- `"wire"` (real Gabor wavelet, Saragadam et al. 2023, as in the spatiotemporal-INR
  authors' code): cos(w0 (h W_f + b_f)) exp(-(s0 (h W_s + b_s))^2), two linear maps per
  layer, PyTorch's default U(-1/sqrt(n_in), 1/sqrt(n_in)) initialisation.
- `"relu"`: max(h W + b, 0), PyTorch's default initialisation.
- `"linear"`: h W + b (output layers); SIREN-style U(-sqrt(6/n_in)/w0, ...) when
  `w0` is given, PyTorch's default otherwise.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

KINDS = ("sine", "wire", "relu", "linear")
_TWO_PI = 2.0 * math.pi
_HALF_PI = 0.5 * math.pi


# -- activations ----------------------------------------------------------------------
def _wrap(x: Array) -> Array:
    """x reduced to [-pi, pi] (sin(x) = sin(wrap(x)))."""
    return x - jnp.round(x * (1.0 / _TWO_PI)) * _TWO_PI


def _sin_wrapped(r: Array) -> Array:
    """sin(r) for r in [-pi, pi]: fold onto [-pi/2, pi/2], degree-11 odd Taylor polynomial."""
    r = jnp.where(r > _HALF_PI, math.pi - r, jnp.where(r < -_HALF_PI, -math.pi - r, r))
    r2 = r * r
    return r * (1.0 + r2 * (-1 / 6 + r2 * (1 / 120 + r2 * (-1 / 5040 + r2 * (1 / 362880 + r2 * (-1 / 39916800))))))


@jax.custom_jvp
def sin(x: Float[Array, "*s"]) -> Float[Array, "*s"]:
    """sin(x) as one fused polynomial (max error 6e-6 for |x| <= 100 in float32).

    XLA's CPU `sin` is scalar code that costs several times the matmul feeding it in
    SIREN-sized layers; this vectorises, and its custom JVP reuses the same
    polynomial for cos, so the backward pass does not differentiate through the
    range reduction. On GPU it is as fast as the native sine.
    """
    return _sin_wrapped(_wrap(x))


@sin.defjvp
def _sin_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    r = _wrap(x)
    return _sin_wrapped(r), _sin_wrapped(_wrap(r + _HALF_PI)) * dx


def cos(x: Float[Array, "*s"]) -> Float[Array, "*s"]:
    """cos(x) = sin(x + pi/2) through the same fused polynomial."""
    return sin(_wrap(x) + _HALF_PI)


# -- layers -----------------------------------------------------------------------------
def _uniform(key: PRNGKeyArray, shape: tuple[int, ...], bound: float) -> Array:
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def init_dense(key: PRNGKeyArray, n_in: int, n_out: int, weight_bound: float | None = None) -> dict[str, Array]:
    """{"w": (n_in, n_out), "b": (n_out,)}; U(+-weight_bound) weights (default 1/sqrt(n_in)), U(+-1/sqrt(n_in)) bias."""
    kw, kb = jax.random.split(key)
    default = 1.0 / math.sqrt(n_in)
    return {
        "w": _uniform(kw, (n_in, n_out), default if weight_bound is None else weight_bound),
        "b": _uniform(kb, (n_out,), default),
    }


def dense(params: dict[str, Array], h: Float[Array, "... n_in"]) -> Float[Array, "... n_out"]:
    """h W + b."""
    return h @ params["w"] + params["b"]


def init_layer(
    key: PRNGKeyArray, n_in: int, n_out: int, kind: str, w0: float = 30.0, first: bool = False
) -> dict[str, object]:
    """Parameters of one layer of `kind` (see the module docstring)."""
    if kind == "sine":
        bound = 1.0 / n_in if first else math.sqrt(6.0 / n_in) / w0
        return init_dense(key, n_in, n_out, bound)
    if kind == "wire":
        kf, ks = jax.random.split(key)
        return {"freq": init_dense(kf, n_in, n_out), "scale": init_dense(ks, n_in, n_out)}
    if kind == "relu":
        return init_dense(key, n_in, n_out)
    if kind == "linear":
        return init_dense(key, n_in, n_out, None if first else math.sqrt(6.0 / n_in) / w0)
    raise ValueError(f"unknown layer kind {kind!r}; expected one of {KINDS}")


def apply_layer(
    params: dict[str, object], h: Float[Array, "... n_in"], kind: str, w0: float = 30.0, s0: float = 10.0
) -> Float[Array, "... n_out"]:
    """One layer of `kind`: (..., n_in) -> (..., n_out)."""
    if kind == "sine":
        return sin(w0 * dense(params, h))
    if kind == "wire":
        return cos(w0 * dense(params["freq"], h)) * jnp.exp(-jnp.square(s0 * dense(params["scale"], h)))
    if kind == "relu":
        return jax.nn.relu(dense(params, h))
    if kind == "linear":
        return dense(params, h)
    raise ValueError(f"unknown layer kind {kind!r}; expected one of {KINDS}")


def layer_flops(n_in: int, n_out: int, kind: str) -> int:
    """Multiply-add FLOPs of one forward pass of one point through the layer's linear maps."""
    return 2 * n_in * n_out * (2 if kind == "wire" else 1)


# -- Fourier features ---------------------------------------------------------------------
def init_fourier(key: PRNGKeyArray, n_in: int, n_features: int, scale: float) -> dict[str, Array]:
    """Random Fourier features (Tancik et al. 2020): B ~ N(0, scale^2), (n_in, n_features)."""
    return {"B": scale * jax.random.normal(key, (n_in, n_features), jnp.float32)}


def fourier_features(params: dict[str, Array], x: Float[Array, "... D"]) -> Float[Array, "... 2F"]:
    """[sin(2 pi x B), cos(2 pi x B)]; B is fixed (no gradient flows into it)."""
    z = _TWO_PI * (x @ jax.lax.stop_gradient(params["B"]))
    return jnp.concatenate([sin(z), cos(z)], axis=-1)

