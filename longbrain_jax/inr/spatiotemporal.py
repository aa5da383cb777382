"""The semi-disentangled spatiotemporal INR f(x, t) -> intensity (Aulakh, Forkert, Wilms 2025).

Two streams for the first `stream_layers` layers: a spatial stream on the
coordinates x (D = ndim components in [-1, 1]) and a temporal stream on the time
input t. Each stream is an input layer followed by `stream_layers - 1` residual
hidden layers h <- (h + layer(h)) / 2 (the authors' code halves the sum). The
temporal features are then ADDED to the spatial ones, `combined_layers` residual
layers follow, and an output layer gives the intensity (linear by default; WIRE in the
authors' code).

Parameter groups read by the weight-space classifier (input and output layers
excluded): `P_space` = spatial-stream hidden layers, `P_time` = temporal-stream hidden
layers, `P_com` = combined layers. At the paper's width 512 with WIRE spatial and
ReLU temporal layers, P_space has 2.10M and P_time 1.05M parameters as reported;
P_com has 1.58M with 3 combined layers and a linear output (the default). The paper's
1.05M is the authors' code: 2 hidden WIRE combined layers and a WIRE output layer (its
"3 combined layers"; their classifier drops the output layer by shape), which
`INRConfig.published()` builds, with their isotropic coordinates. The default keeps a
linear output: measured side by side (benchmarks/RESULTS.md, "The published INR"), the
WIRE output fitted worse.

Coordinates: the fit passes each axis mapped to [-1, 1] (`grid.normalised_grid`);
`network_coordinates` gives the spatial stream those (`coordinates="axes"`) or, as the
authors' code, the voxel index minus the grid centre over the longest axis
(`"isotropic"`, about [-0.5, 0.5] along it, shorter axes proportionally less).

The time input is the subject's age mapped by `INRConfig.time_input`
((age - age_center) / age_scale, so ages 50-75 span [-1, 1] by default).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from longbrain_jax.config import check_literals
from longbrain_jax.inr import layers

GROUPS = ("P_space", "P_time", "P_com")


@dataclasses.dataclass(frozen=True)
class INRConfig:
    """Architecture of the spatiotemporal INR.

    **Arguments:**

    - `ndim`: spatial dimension D (2 or 3).
    - `width`: hidden width of every layer (paper: 512).
    - `stream_layers`: layers per stream before the merge, input layer included (paper: 5).
    - `combined_layers`: residual layers after the merge (paper: 3).
    - `spatial_activation`, `temporal_activation`, `combined_activation`: layer kinds
      (`"wire"`, `"sine"`, `"relu"`); paper: WIRE, ReLU, WIRE.
    - `output_activation`: the output layer, `"linear"` (default) or `"wire"` (the authors' code).
    - `coordinates`: `"axes"` (each axis in [-1, 1]) or `"isotropic"` (the authors' code); see
      `network_coordinates`.
    - `w0`, `s0`: frequency and Gabor scale of sine/WIRE layers (paper: 10, 10).
    - `fourier_features`: number F of random Fourier features of x fed to the spatial
      stream instead of x itself (0 = raw coordinates, as in the paper).
    - `fourier_scale`: standard deviation of the Fourier frequencies (cycles per unit).
    - `age_center`, `age_scale`: time input t = (age - age_center) / age_scale, years.
    """

    ndim: int = 3
    width: int = 512
    stream_layers: int = 5
    combined_layers: int = 3
    spatial_activation: Literal["wire", "sine", "relu"] = "wire"
    temporal_activation: Literal["wire", "sine", "relu"] = "relu"
    combined_activation: Literal["wire", "sine", "relu"] = "wire"
    output_activation: Literal["linear", "wire"] = "linear"
    coordinates: Literal["axes", "isotropic"] = "axes"
    w0: float = 10.0
    s0: float = 10.0
    fourier_features: int = 0
    fourier_scale: float = 4.0
    age_center: float = 62.5
    age_scale: float = 12.5

    def __post_init__(self):
        if self.ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {self.ndim}")
        if self.width < 1 or self.stream_layers < 1 or self.combined_layers < 0:
            raise ValueError("need width >= 1, stream_layers >= 1, combined_layers >= 0")
        check_literals(self)
        if self.age_scale <= 0:
            raise ValueError(f"age_scale must be > 0, got {self.age_scale}")

    @classmethod
    def published(cls, **changes) -> INRConfig:
        """The network of the authors' published code: 5 + 2 layers, WIRE / ReLU / WIRE, a WIRE output
        layer, isotropic coordinates, width 512 (P_com 1,050,624 parameters, as the paper reports);
        `changes` replace fields (e.g. `ndim`, `width`)."""
        return dataclasses.replace(cls(combined_layers=2, output_activation="wire", coordinates="isotropic"), **changes)

    def time_input(self, age: Float[Array, "*s"]) -> Float[Array, "*s"]:
        """The network's time input for an age in years."""
        return (jnp.asarray(age, jnp.float32) - self.age_center) / self.age_scale


Params = dict


def _stream_init(key: PRNGKeyArray, n_in: int, cfg: INRConfig, kind: str, n_hidden: int) -> dict:
    keys = jax.random.split(key, n_hidden + 1)
    return {
        "input": layers.init_layer(keys[0], n_in, cfg.width, kind, cfg.w0, first=True),
        "hidden": [layers.init_layer(k, cfg.width, cfg.width, kind, cfg.w0) for k in keys[1:]],
    }


@functools.partial(jax.jit, static_argnums=1)  # one compiled program, not one per layer shape
def init(key: PRNGKeyArray, cfg: INRConfig) -> Params:
    """Parameters of one INR (a pytree of float32 arrays)."""
    k_space, k_time, k_com, k_out, k_ff = jax.random.split(key, 5)
    n_space = 2 * cfg.fourier_features if cfg.fourier_features else cfg.ndim
    params = {
        "space": _stream_init(k_space, n_space, cfg, cfg.spatial_activation, cfg.stream_layers - 1),
        "time": _stream_init(k_time, 1, cfg, cfg.temporal_activation, cfg.stream_layers - 1),
        "combined": [
            layers.init_layer(k, cfg.width, cfg.width, cfg.combined_activation, cfg.w0)
            for k in jax.random.split(k_com, cfg.combined_layers)
        ],
        "output": layers.init_layer(k_out, cfg.width, 1, cfg.output_activation, cfg.w0, first=cfg.combined_activation == "relu"),
    }
    if cfg.fourier_features:
        params["fourier"] = layers.init_fourier(k_ff, cfg.ndim, cfg.fourier_features, cfg.fourier_scale)
    return params


def _residual(layer_params: list, h: Array, kind: str, cfg: INRConfig) -> Array:
    for p in layer_params:
        h = 0.5 * (h + layers.apply_layer(p, h, kind, cfg.w0, cfg.s0))
    return h


def network_coordinates(coords: Float[Array, "... D"], shape: tuple[int, ...], cfg: INRConfig) -> Float[Array, "... D"]:
    """The spatial stream's input from normalised coordinates (each axis in [-1, 1], `grid.normalised_grid`)
    on a grid of `shape` voxels: unchanged for `coordinates="axes"`; for `"isotropic"` (voxel index
    - centre) / longest axis, the same scale on every axis."""
    if cfg.coordinates == "axes":
        return coords
    n = jnp.asarray(shape, jnp.float32)
    return coords * (n - 1) / (2.0 * max(shape))


def spatial_features(params: Params, coords: Float[Array, "... D"], cfg: INRConfig) -> Float[Array, "... W"]:
    """The spatial stream at normalised coordinates."""
    h = layers.fourier_features(params["fourier"], coords) if "fourier" in params else coords
    stream = params["space"]
    h = layers.apply_layer(stream["input"], h, cfg.spatial_activation, cfg.w0, cfg.s0)
    return _residual(stream["hidden"], h, cfg.spatial_activation, cfg)


def temporal_features(params: Params, t: Float[Array, "..."], cfg: INRConfig) -> Float[Array, "... W"]:
    """The temporal stream at time inputs t (see `INRConfig.time_input`)."""
    stream = params["time"]
    h = layers.apply_layer(stream["input"], t[..., None], cfg.temporal_activation, cfg.w0, cfg.s0)
    return _residual(stream["hidden"], h, cfg.temporal_activation, cfg)


def head(params: Params, h: Float[Array, "... W"], cfg: INRConfig) -> Float[Array, "..."]:
    """Combined layers and the output layer on merged features."""
    h = _residual(params["combined"], h, cfg.combined_activation, cfg)
    return layers.apply_layer(params["output"], h, cfg.output_activation, cfg.w0, cfg.s0)[..., 0]


def apply(params: Params, coords: Float[Array, "... D"], t: Float[Array, "..."], cfg: INRConfig) -> Float[Array, "..."]:
    """Intensity at coordinates `coords` and time inputs `t` (broadcast against coords[..., 0])."""
    return head(params, spatial_features(params, coords, cfg) + temporal_features(params, t, cfg), cfg)


def apply_indexed(
    params: Params, coords: Float[Array, "P D"], times: Float[Array, " T"], index: Array, cfg: INRConfig
) -> Float[Array, " P"]:
    """`apply` for points at one of a few times: point p is at time `times[index[p]]`.

    The temporal stream runs once per distinct time (T rows) instead of once per point,
    which is how cohort fitting evaluates points sampled across a subject's scans.
    """
    h_time = temporal_features(params, times, cfg)
    return head(params, spatial_features(params, coords, cfg) + h_time[index], cfg)


def parameter_groups(params: Params) -> dict[str, list]:
    """The classifier's parameter groups {P_space, P_time, P_com} (lists of layer dicts)."""
    return {"P_space": params["space"]["hidden"], "P_time": params["time"]["hidden"], "P_com": params["combined"]}


def num_params(tree) -> int:
    """Number of scalars in a pytree (a leading subject axis counts)."""
    return int(sum(x.size for x in jax.tree_util.tree_leaves(tree)))


def flops_per_point(cfg: INRConfig) -> int:
    """Forward FLOPs per point of the matmuls (the temporal stream excluded: it runs per time, not per point)."""
    n_space = 2 * cfg.fourier_features if cfg.fourier_features else cfg.ndim
    w = cfg.width
    total = layers.layer_flops(n_space, w, cfg.spatial_activation)
    total += (cfg.stream_layers - 1) * layers.layer_flops(w, w, cfg.spatial_activation)
    total += cfg.combined_layers * layers.layer_flops(w, w, cfg.combined_activation)
    return total + layers.layer_flops(w, 1, cfg.output_activation)
