"""The convolution layer every flax CNN in the project uses (autoencoder, U-Net, SFCN, NODER's encoder).

`Conv` is `flax.linen.Conv` with `lecun_normal` below as its kernel initialiser and
`conv_general_dilated` below as its convolution.

**Strided convolutions on the CPU.** XLA:CPU differentiates a strided convolution with
respect to its input through a convolution of the dilated input gradient, which misses its
fast convolution path: alone, the gradient of a stride-2 3D layer costs 20-130x its forward pass
(60 x 72 x 60, 1 -> 32 channels, kernel 4, the discriminator's first layer: forward 26 ms,
gradient 3.4 s; `benchmarks/strided_conv.py`). On the CPU `conv_general_dilated` computes a
strided convolution as the same stride-1 convolution of the space-to-depth input (each
s x s x s block of voxels becomes s^3 x C channels; the kernel is zero-padded to a multiple of
s taps and split alike), which is exact and whose gradient takes the fast path (that layer's:
30 ms; the 3D autoencoder's adversarial step 25 s -> 14 s). On accelerators XLA's own lowering is kept.

**Initialiser.** `lecun_normal` is flax's
own default distribution (a truncated normal of variance 1 / fan_in, fan_in = kernel
volume x input channels), drawn as a (fan_in, out) matrix and reshaped to the kernel's
(*kernel_size, in, out) shape. The reshape is for compile time only: with JAX's default
partitionable threefry, XLA:CPU takes 1-3 s to compile a random draw whose shape has
rank >= 3 (measured with JAX 0.10.2 on the 2-core CI machine: `jax.random.bits` of
(8, 16) 0.3 s, (3, 8, 16) 1.2 s, (3, 3, 8, 16) 2.8 s), once per distinct kernel shape,
which made initialising a small autoencoder take 20 s. A 2-D draw compiles in ~0.2 s.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


def lecun_normal(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> Float[Array, "*k i o"]:
    """Flax's default kernel initialiser for a kernel of `shape` (*kernel_size, in, out), drawn in 2-D."""
    fan_in = math.prod(shape[:-1])
    return nn.initializers.lecun_normal()(key, (fan_in, shape[-1]), dtype).reshape(shape)


def _channels_last(ndim: int, dimension_numbers) -> bool:
    if dimension_numbers is None:
        return False
    spec = tuple(range(ndim))
    lhs, rhs, out = dimension_numbers
    return tuple(lhs) == (0, ndim - 1, *spec[1:-1]) and tuple(out) == tuple(lhs) and tuple(rhs) == (ndim - 1, ndim - 2, *spec[:-2])


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, precision=None, **kwargs):  # fmt: skip
    """`jax.lax.conv_general_dilated` (same arguments and result), with strided channels-last
    convolutions of up to 3 spatial axes on the CPU computed by `space_to_depth_conv`."""
    dims = None if dimension_numbers is None else jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    undilated = all(int(r) == 1 for r in (lhs_dilation or ())) and all(int(r) == 1 for r in (rhs_dilation or ()))
    if (jax.default_backend() == "cpu" and any(int(s) > 1 for s in window_strides) and undilated and feature_group_count == 1
            and not kwargs and lhs.ndim <= 5 and _channels_last(lhs.ndim, dims)):  # fmt: skip
        window = rhs.shape[:-2]
        pads = jax.lax.padtype_to_pads(lhs.shape[1:-1], window, window_strides, padding) if isinstance(padding, str) else padding
        return space_to_depth_conv(lhs, rhs, tuple(int(s) for s in window_strides), [tuple(map(int, p)) for p in pads], precision)
    return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                                        dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
                                        precision=precision, **kwargs)  # fmt: skip


def space_to_depth_conv(
    x: Float[Array, "N *s C"], kernel: Float[Array, "*k C O"], strides: Sequence[int], padding: Sequence[tuple[int, int]],
    precision=None,
) -> Float[Array, "N *o O"]:  # fmt: skip
    """A strided convolution (cross-correlation; explicit (low, high) `padding` per axis) as a
    stride-1 one: output voxel o reads padded voxels o*s + j, j < k; writing j = q*s + r, the
    offsets r become channels of a grid of s-voxel blocks and the kernel, zero-padded to
    ceil(k/s)*s taps, is split alike. Equals `jax.lax.conv_general_dilated` to rounding."""
    d = x.ndim - 2
    spatial, window = x.shape[1:-1], kernel.shape[:d]
    outs = [(n + lo + hi - k) // s + 1 for n, k, s, (lo, hi) in zip(spatial, window, strides, padding, strict=True)]
    blocks = [-(-k // s) for k, s in zip(window, strides, strict=True)]
    # pad (or crop: lax.pad takes negative widths) each axis to (out - 1 + blocks) whole blocks
    widths = [(lo, (o - 1 + b) * s - n - lo, 0) for n, s, o, b, (lo, _) in zip(spatial, strides, outs, blocks, padding, strict=True)]
    x = jax.lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), *widths, (0, 0, 0)])
    grid = [o - 1 + b for o, b in zip(outs, blocks, strict=True)]
    order = [*range(1, 2 * d + 1, 2), *range(2, 2 * d + 2, 2)]  # (block axes..., offset axes...)
    split = [m for g, s in zip(grid, strides, strict=True) for m in (g, s)]
    x = x.reshape(x.shape[0], *split, x.shape[-1]).transpose(0, *order, 2 * d + 1).reshape(x.shape[0], *grid, -1)
    kernel = jnp.pad(kernel, [(0, b * s - k) for k, s, b in zip(window, strides, blocks, strict=True)] + [(0, 0), (0, 0)])
    split = [m for b, s in zip(blocks, strides, strict=True) for m in (b, s)]
    kernel = kernel.reshape(*split, *kernel.shape[-2:]).transpose(*(o - 1 for o in order), 2 * d, 2 * d + 1)
    kernel = kernel.reshape(*blocks, -1, kernel.shape[-1])
    spec = "DHW"[3 - d :]
    return jax.lax.conv_general_dilated(x, kernel, (1,) * d, "VALID", dimension_numbers=(f"N{spec}C", f"{spec}IO", f"N{spec}C"), precision=precision)


Conv = functools.partial(nn.Conv, kernel_init=lecun_normal, conv_general_dilated=conv_general_dilated)


# -- any grid through a network that halves it: pad up, crop back ---------------------------
def padded_shape(shape: Sequence[int], factor: int) -> tuple[int, ...]:
    """`shape` rounded up to a multiple of `factor` per axis."""
    return tuple(-(-n // factor) * factor for n in shape)


def pad_to_multiple(images: Float[Array, "B *s"], factor: int) -> Float[Array, "B *p 1"]:
    """Edge-pad the spatial axes up to a multiple of `factor` and add a channel axis."""
    shape = images.shape[1:]
    pad = [(0, 0)] + [(0, p - n) for n, p in zip(shape, padded_shape(shape, factor), strict=True)]
    return jnp.pad(images, pad, mode="edge")[..., None]


def crop(images: Float[Array, "B *p C"], shape: Sequence[int]) -> Float[Array, "B *s C"]:
    """The first `shape` voxels of each spatial axis (undoes `pad_to_multiple`, channels kept)."""
    return images[(slice(None), *(slice(0, n) for n in shape))]
