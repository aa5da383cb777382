"""Strided convolutions on the CPU: XLA's own lowering against `cnn.space_to_depth_conv`, side by side.

XLA:CPU differentiates a strided convolution with respect to its input through a
convolution of the dilated gradient, off its fast path. `longbrain_jax.cnn.conv_general_dilated`
computes a strided layer on the CPU as a stride-1 convolution of the space-to-depth input
instead. This script times, in one process on the same arrays, the strided layer shapes the
project's CNNs use (NODER's encoder, the autoencoder's encoder and discriminator) at `--shape`:
forward pass and gradient with respect to input and kernel, both ways; then the autoencoder's
training step of each phase (2 scans, channels 8, 16, 32, the default discriminator and
perceptual widths) with either convolution in every layer.

    python benchmarks/strided_conv.py [--shape 60x72x60] [--repeats 2]
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from _common import compiled_seconds, print_results  # noqa: E402

from longbrain_jax import cnn  # noqa: E402
from longbrain_jax.latent import autoencoder as ae  # noqa: E402


def _layers(shape: tuple[int, ...]) -> list[tuple[str, tuple[int, ...], int, int, int]]:
    """(name, input spatial shape, in channels, out channels, kernel) of the project's strided layers at `shape`."""
    half = tuple(-(-n // 2) for n in shape)
    return [
        ("NODER encoder 1 (3 -> 8, k3)", shape, 3, 8, 3),
        ("autoencoder down (8 -> 8, k3)", shape, 8, 8, 3),
        ("autoencoder down (16 -> 16, k3)", half, 16, 16, 3),
        ("discriminator 1 (1 -> 32, k4)", shape, 1, 32, 4),
        ("discriminator 2 (32 -> 64, k4)", half, 32, 64, 4),
    ]


def _conv(conv_fn, strides):
    numbers = ("NDHWC", "DHWIO", "NDHWC") if len(strides) == 3 else ("NHWC", "HWIO", "NHWC")
    return lambda x, w: conv_fn(x, w, strides, "SAME", dimension_numbers=numbers)


def _gradient(conv):
    """(x, w, cotangent) -> the gradients of `conv` with respect to x and w."""
    return lambda x, w, cotangent: jax.vjp(conv, x, w)[1](cotangent)


def _autoencoder_steps(shape: tuple[int, ...], conv: type, repeats: int) -> tuple[float, float]:
    """Seconds of the warm-up and the adversarial training step with every layer of the autoencoder `conv`."""
    saved, ae.Conv = ae.Conv, functools.partial(conv, kernel_init=cnn.lecun_normal)
    try:
        cfg = ae.AutoencoderConfig(ndim=len(shape), channels=(8, 16, 32), batch_size=2)
        state = ae.init_state(jax.random.key(0), cfg, shape)
        scans = jax.random.uniform(jax.random.key(1), (2, *shape), minval=-1.0, maxval=1.0)
        step = lambda adversarial: lambda s, x: ae.train_step(s, x, jax.random.key(2), adversarial, cfg=cfg)  # noqa: E731
        return compiled_seconds(step(False), state, scans, repeats=repeats), compiled_seconds(step(True), state, scans, repeats=repeats)
    finally:
        ae.Conv = saved


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="60x72x60", help="spatial grid, e.g. 60x72x60 (3 mm)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-autoencoder", action="store_true", help="layers only")
    args = parser.parse_args(argv)
    shape = tuple(int(n) for n in args.shape.split("x"))
    strides = (2,) * len(shape)
    xla, ours = _conv(jax.lax.conv_general_dilated, strides), _conv(cnn.conv_general_dilated, strides)
    record: dict = {"shape": list(shape), "backend": jax.default_backend(), "layers": {}}
    rows = []
    for name, spatial, cin, cout, k in _layers(shape):
        x = jax.random.normal(jax.random.key(0), (1, *spatial, cin))
        w = jax.random.normal(jax.random.key(1), (k,) * len(shape) + (cin, cout)) * 0.1
        cotangent = jnp.ones_like(xla(x, w))
        f = record["layers"][name] = {
            "xla_forward_s": compiled_seconds(xla, x, w, repeats=args.repeats), "ours_forward_s": compiled_seconds(ours, x, w, repeats=args.repeats),
            "xla_gradient_s": compiled_seconds(_gradient(xla), x, w, cotangent, repeats=args.repeats),
            "ours_gradient_s": compiled_seconds(_gradient(ours), x, w, cotangent, repeats=args.repeats),
        }  # fmt: skip
        rows.append((f"{name} at {'x'.join(map(str, spatial))}",
                     f"forward {f['xla_forward_s'] * 1e3:6.1f} -> {f['ours_forward_s'] * 1e3:6.1f} ms, gradient "
                     f"{f['xla_gradient_s'] * 1e3:7.1f} -> {f['ours_gradient_s'] * 1e3:6.1f} ms ({f['xla_gradient_s'] / f['ours_gradient_s']:.1f}x)"))  # fmt: skip
    if not args.no_autoencoder:
        (warm_xla, adv_xla), (warm_ours, adv_ours) = _autoencoder_steps(shape, nn.Conv, args.repeats), _autoencoder_steps(shape, cnn.Conv, args.repeats)
        record["autoencoder"] = {"warm_up_step_xla_s": warm_xla, "warm_up_step_ours_s": warm_ours,
                                 "adversarial_step_xla_s": adv_xla, "adversarial_step_ours_s": adv_ours}  # fmt: skip
        rows.append(("autoencoder warm-up step, 2 scans", f"{warm_xla:.2f} -> {warm_ours:.2f} s ({warm_xla / warm_ours:.1f}x)"))
        rows.append(("autoencoder adversarial step, 2 scans", f"{adv_xla:.2f} -> {adv_ours:.2f} s ({adv_xla / adv_ours:.1f}x)"))
    print_results(f"Strided convolutions, XLA's lowering -> space-to-depth ({record['backend']}, {args.shape})", rows, record)
    return record


if __name__ == "__main__":
    main()
