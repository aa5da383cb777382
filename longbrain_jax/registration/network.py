"""The temporally parameterised displacement INR u(x, t) (Shuaibu et al. 2025).

A SIREN body (w0 = 30) on normalised coordinates x (D components in [-1, 1]) and a
time sub-network g(t) = Linear(10 -> F)(LeakyReLU_0.2(Linear(1 -> 10)(t))) whose F
features are concatenated to the input of EVERY hidden layer after the first and to
the output layer (concatenating only at the first layer was shown to fail: the field
barely changes with t). Widths follow the authors' code: D -> W0, then each layer keeps
its input width (previous width + F), and the output maps width + F -> D:
3 -> 256, 320 -> 320, 384 -> 384, 448 -> 448, 512 -> 512, 576 -> 3 at the defaults.

phi_t(x) = x + u(x, t) maps follow-up I_t onto the baseline I_0 (I_t o phi_t ~ I_0);
u is in normalised units and t in years since baseline. `displacement` evaluates one
point; vmap it over points (and subjects). Its Jacobians are exact (`jax.jacfwd`).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from longbrain_jax.grid import det
from longbrain_jax.inr import layers


@dataclasses.dataclass(frozen=True)
class DisplacementConfig:
    """Architecture of the displacement INR.

    **Arguments:**

    - `ndim`: spatial dimension D.
    - `width`: width of the first layer (paper: 256).
    - `hidden_layers`: SIREN layers after the first (paper: 4, giving 5 hidden layers).
    - `time_features`: F, the width of g(t) (paper: 64).
    - `time_hidden`: hidden width of g (paper: 10).
    - `w0`: SIREN frequency (paper: 30).
    - `output_scale`: the output layer's weights are scaled by this at initialisation so
      u starts near zero (the identity map).
    - `time_scale`: years per unit of the time input (g sees t / time_scale). The paper's
      follow-ups span 3 years (1 is right); for decades of follow-up use about 10, or
      the time features grow large and the field oscillates in t.
    """

    ndim: int = 3
    width: int = 256
    hidden_layers: int = 4
    time_features: int = 64
    time_hidden: int = 10
    w0: float = 30.0
    output_scale: float = 1e-2
    time_scale: float = 1.0

    def __post_init__(self):
        if self.ndim not in (2, 3) or self.width < 1 or self.hidden_layers < 0 or self.time_features < 1 or self.time_scale <= 0:
            raise ValueError(f"invalid displacement INR config: {self}")

    def widths(self) -> list[tuple[int, int]]:
        """(n_in, n_out) of the first, hidden and output layers."""
        out = [(self.ndim, self.width)]
        w = self.width
        for _ in range(self.hidden_layers):
            w += self.time_features
            out.append((w, w))
        out.append((w + self.time_features, self.ndim))
        return out


@functools.partial(jax.jit, static_argnums=1)  # one compiled program, not one per layer shape
def init(key: PRNGKeyArray, cfg: DisplacementConfig) -> dict:
    """Parameters of one displacement INR."""
    shapes = cfg.widths()
    keys = jax.random.split(key, len(shapes) + 2)
    body = [layers.init_layer(keys[0], *shapes[0], "sine", cfg.w0, first=True)]
    body += [layers.init_layer(k, *s, "sine", cfg.w0) for k, s in zip(keys[1:-3], shapes[1:-1], strict=True)]
    out = layers.init_layer(keys[-3], *shapes[-1], "linear", cfg.w0)
    out = {"w": out["w"] * cfg.output_scale, "b": jnp.zeros_like(out["b"])}
    time = {
        "hidden": layers.init_dense(keys[-2], 1, cfg.time_hidden),
        "out": layers.init_dense(keys[-1], cfg.time_hidden, cfg.time_features),
    }
    return {"body": body, "output": out, "time": time}


def time_features(params: dict, t: Float[Array, ""], cfg: DisplacementConfig) -> Float[Array, " F"]:
    """g(t): Linear(1 -> 10), LeakyReLU(0.2), Linear(10 -> F), on t / time_scale."""
    h = jax.nn.leaky_relu(layers.dense(params["time"]["hidden"], jnp.reshape(t, (1,)) / cfg.time_scale), 0.2)
    return layers.dense(params["time"]["out"], h)


def displacement(params: dict, x: Float[Array, " D"], t: Float[Array, ""], cfg: DisplacementConfig) -> Float[Array, " D"]:
    """u(x, t) at one point (normalised units)."""
    g = time_features(params, t, cfg)
    h = layers.apply_layer(params["body"][0], x, "sine", cfg.w0)
    for p in params["body"][1:]:
        h = layers.apply_layer(p, jnp.concatenate([h, g]), "sine", cfg.w0)
    return layers.dense(params["output"], jnp.concatenate([h, g]))


def spatial_jacobian(params: dict, x: Float[Array, " D"], t: Float[Array, ""], cfg: DisplacementConfig) -> Float[Array, "D D"]:
    """d phi_t / dx = I + du/dx at one point, exact (forward mode)."""
    du = jax.jacfwd(displacement, argnums=1)(params, x, t, cfg)
    return jnp.eye(x.shape[0], dtype=du.dtype) + du


def jacobian_determinant(params: dict, x: Float[Array, " D"], t: Float[Array, ""], cfg: DisplacementConfig) -> Float[Array, ""]:
    """|J| = det(d phi_t / dx) at one point (> 1: the follow-up's tissue maps to a larger baseline volume)."""
    return det(spatial_jacobian(params, x, t, cfg))


def jacobian_determinant_rate(
    params: dict, x: Float[Array, " D"], t: Float[Array, ""], cfg: DisplacementConfig
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """(|J|, d|J|/dt) at one point: forward mode in t through forward mode in x."""
    return jax.jvp(lambda s: jacobian_determinant(params, x, s, cfg), (t,), (jnp.ones_like(t),))


def velocity(params: dict, x: Float[Array, " D"], t: Float[Array, ""], cfg: DisplacementConfig) -> Float[Array, " D"]:
    """du/dt at one point (normalised units per year)."""
    return jax.jvp(lambda s: displacement(params, x, s, cfg), (t,), (jnp.ones_like(t),))[1]


def num_params(params: dict) -> int:
    return int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))
