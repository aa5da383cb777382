"""NODER's velocity network with its upsampling and smoothing as one separable operator, against a full-grid filter.

NODER's velocity network decodes a coarse velocity grid, resizes it linearly to the image
grid and smooths it with a Gaussian. `noder.Velocity` applies both as one (n, m) matrix per
axis (`grid.resize_smooth_operator`); before, it resized and then filtered the full grid
(`grid.resize_linear`, `grid.gaussian_smooth`: 17 taps per axis at sigma 2), whose gradient
XLA:CPU computes slowly, once per ODE stage, forwards and backwards. This script times, side
by side in one process on the same parameters, both formulations: the velocity network's
gradient, the flow to the scan times (prediction's cost) and one training gradient (one
subject, 4 scans over 9.1 years: the simulated cohorts' spacing).

    python benchmarks/noder_step.py [--shape 60x72x60] [--repeats 3]
    python benchmarks/noder_step.py --shape 121x145x121 --repeats 1   # a 1.5 mm MNI grid
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _common import compiled_seconds, print_results  # noqa: E402

from longbrain_jax import grid, noder  # noqa: E402
from longbrain_jax.cnn import Conv  # noqa: E402


class FilteredVelocity(noder.Velocity):
    """`noder.Velocity` as it was: the coarse grid resized to the image grid, then filtered there."""

    @nn.compact
    def __call__(self, u, t):
        cfg, d = self.cfg, len(self.shape)
        h = u[None] * 10.0
        for c in cfg.encoder_channels:
            h = nn.swish(Conv(c, (3,) * d, strides=(2,) * d)(h))
        h = jnp.tanh(nn.Dense(cfg.latent_size)(h.reshape(-1)))
        h = jnp.concatenate([h, jnp.reshape(t / cfg.time_scale, (1,))])
        h = nn.swish(nn.Dense(cfg.hidden)(h))
        coarse = noder.coarse_shape(self.shape, cfg.velocity_factor)
        v = nn.Dense(int(np.prod(coarse)) * d, kernel_init=nn.initializers.zeros)(h)
        v = grid.resize_linear(v.reshape(*coarse, d), self.shape)
        return grid.gaussian_smooth(v, cfg.smoothing_sigma, ndim=d) * cfg.velocity_scale


def measure(shape: tuple[int, ...], velocity: type, repeats: int) -> dict[str, float]:
    """Seconds of the velocity gradient, the flow and a training gradient with `noder.Velocity` set to `velocity`."""
    saved, noder.Velocity = noder.Velocity, velocity
    try:
        cfg, key = noder.NODERConfig(), jax.random.key(0)
        params = noder.init(key, shape, cfg)
        params = jax.tree_util.tree_map(lambda p: p + 0.01 * jax.random.normal(key, p.shape), params)  # a flow that moves
        u = 0.01 * jax.random.normal(key, (*shape, len(shape)))
        net = velocity(shape, cfg)
        volumes = jax.random.uniform(key, (4, *shape))
        times, observed = jnp.array([0.0, 3.6, 7.3, 9.1]), jnp.ones(4, bool)
        return {
            "velocity_value": net.apply({"params": params}, u, 1.0),
            "velocity_gradient_s": compiled_seconds(lambda p, u, g: jax.vjp(lambda p, u: net.apply({"params": p}, u, 1.0), p, u)[1](g), params, u, u, repeats=repeats),
            "flow_s": compiled_seconds(lambda p: noder.flow(p, times, shape, cfg), params, repeats=repeats),
            "training_gradient_s": compiled_seconds(jax.grad(lambda p: noder.subject_loss(p, volumes, times, observed, cfg).total), params, repeats=repeats),
        }  # fmt: skip
    finally:
        noder.Velocity = saved


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="60x72x60", help="spatial grid, e.g. 60x72x60 (3 mm) or 121x145x121 (1.5 mm)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    shape = tuple(int(n) for n in args.shape.split("x"))
    filtered, separable = measure(shape, FilteredVelocity, args.repeats), measure(shape, noder.Velocity, args.repeats)
    difference = float(jnp.max(jnp.abs(filtered.pop("velocity_value") - separable.pop("velocity_value"))))
    record = {"backend": jax.default_backend(), "shape": list(shape), "filtered": filtered, "separable": separable,
              "max_velocity_difference": difference}  # fmt: skip
    rows = [(name.replace("_s", "").replace("_", " "), f"{filtered[name]:.3f} -> {separable[name]:.3f} s ({filtered[name] / separable[name]:.1f}x)")
            for name in filtered]  # fmt: skip
    rows.append(("largest velocity difference (normalised units / year)", f"{difference:.1e}"))
    print_results(f"NODER, full-grid filter -> separable operator ({record['backend']}, {args.shape})", rows, record)
    return record


if __name__ == "__main__":
    main()
