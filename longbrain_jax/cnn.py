"""The convolution layer every flax CNN in the project uses (autoencoder, U-Net, SFCN, NODER's encoder).

`Conv` is `flax.linen.Conv` with `lecun_normal` below as its kernel initialiser: flax's
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


Conv = functools.partial(nn.Conv, kernel_init=lecun_normal)


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
