"""The denoiser: a factorised (space + time) network over a subject's sequence of velocity frames.

Input: F noisy frames (F, *c, D) on the velocity grid (D = 2 or 3 components, one
frame per follow-up), the baseline scan on that grid (*c) and its gradient (*c, D),
and the conditions. Output: the prediction (eps or v) for every frame, (F, *c, D).

- **Space**: every frame goes through the same small U-Net of residual convolution
  blocks (2D or 3D by the grid); the baseline and its gradient are input channels of
  every frame (the paper embeds the baseline's gradient for the same reason: where
  tissue boundaries are is where anatomy changes).
- **Time**: at every level, a temporal self-attention block lets each voxel's frames
  attend to each other (keys masked to the subject's real frames), so a sequence is
  generated jointly, not frame by frame. This is the (2+1)D / (3+1)D factorisation of
  the paper's latent diffusion transformer, with convolutions for the spatial part
  (at the grids a CPU trains, 16^3 to 32^3, they are cheaper than patch attention).
- **Conditioning** (adaLN-style: every block's GroupNorm output is scaled and shifted
  by a projection of the embedding, zero-initialised so each block starts as the
  identity): the diffusion step (sinusoidal), the group and sex (learned embeddings,
  with one extra "unknown" index each, which conditioning dropout also uses for
  classifier-free guidance), the baseline age, and per frame the frame's age and its
  interval since the baseline (sinusoidal + MLP, as the paper's age encoding).

Sizes are `DenoiserConfig`: channels per level and attention heads; the CPU default
is small, the paper-like sizes are a configuration (`benchmarks/diffusion.py`).
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from longbrain_jax.cnn import Conv


@dataclasses.dataclass(frozen=True)
class DenoiserConfig:
    """The denoiser's sizes.

    **Arguments:**

    - `channels`: convolution channels per U-Net level (the grid halves between levels;
      the velocity grid is padded to a multiple of 2**(levels - 1)).
    - `blocks`: residual blocks per level.
    - `heads`: attention heads of the temporal attention (channels divisible by it).
    - `embedding`: width of the condition embedding.
    - `groups`: GroupNorm groups (at most the channels).
    """

    channels: tuple[int, ...] = (32, 64)
    blocks: int = 1
    heads: int = 4
    embedding: int = 128
    groups: int = 8

    def __post_init__(self):
        if not self.channels or self.blocks < 1 or self.embedding < 8:
            raise ValueError(f"need channels, blocks >= 1 and embedding >= 8: {self}")
        bad = [c for c in self.channels if c % self.heads]
        if bad:
            raise ValueError(f"channels {bad} are not divisible by heads={self.heads}")

    @property
    def factor(self) -> int:
        return 2 ** (len(self.channels) - 1)


def sinusoid(x: Float[Array, "*b"], dim: int, max_period: float = 10_000.0) -> Float[Array, "*b dim"]:
    """Sinusoidal encoding of scalars (the transformer's positional encoding), as the paper's age and step encodings."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = x[..., None] * freqs
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def _mlp(x: Array, width: int) -> Array:
    return nn.Dense(width)(nn.swish(nn.Dense(width)(x)))


class ResBlock(nn.Module):
    """GroupNorm -> adaLN (scale, shift from the embedding) -> swish -> conv, twice, plus the skip."""

    channels: int
    groups: int

    @nn.compact
    def __call__(self, h: Float[Array, "B *c C"], emb: Float[Array, "B E"]) -> Float[Array, "B *c C2"]:
        d = h.ndim - 2
        expand = (slice(None),) + (None,) * d
        skip = h if h.shape[-1] == self.channels else Conv(self.channels, (1,) * d)(h)
        x = Conv(self.channels, (3,) * d)(nn.swish(nn.GroupNorm(min(self.groups, h.shape[-1]))(h)))
        scale, shift = jnp.split(nn.Dense(2 * self.channels, kernel_init=nn.initializers.zeros)(nn.swish(emb)), 2, axis=-1)
        x = nn.GroupNorm(min(self.groups, self.channels))(x) * (1.0 + scale[expand]) + shift[expand]
        x = Conv(self.channels, (3,) * d, kernel_init=nn.initializers.zeros)(nn.swish(x))
        return skip + x


class TemporalAttention(nn.Module):
    """Each voxel's frames attend to each other (keys limited to real frames); residual, zero-initialised output."""

    heads: int
    groups: int

    @nn.compact
    def __call__(self, h: Float[Array, "B F *c C"], frame_mask: Bool[Array, "B F"]) -> Float[Array, "B F *c C"]:
        b, f, *spatial, c = h.shape
        x = nn.GroupNorm(min(self.groups, c))(h.reshape(b * f, *spatial, c)).reshape(h.shape)
        x = jnp.moveaxis(x, 1, -2).reshape(-1, f, c)  # (B * voxels, F, C)
        voxels = math.prod(spatial)
        keys = jnp.repeat(frame_mask, voxels, axis=0)  # (B * voxels, F)
        mask = nn.make_attention_mask(jnp.ones_like(keys), keys)
        x = nn.MultiHeadDotProductAttention(self.heads, out_kernel_init=nn.initializers.zeros)(x, x, mask=mask)
        x = jnp.moveaxis(x.reshape(b, *spatial, f, c), -2, 1)
        return h + x


class Denoiser(nn.Module):
    """(B, F, *c, D) noisy frames + conditions -> (B, F, *c, D) prediction (see the module docstring).

    `cond_ids` (B, 2) int: group and sex indices (the last index of each = unknown);
    `scalars` (B, F, 3): the diffusion step index (0 .. steps - 1), the frame's age and its
    interval since the baseline (years; together they give the baseline age);
    `image` (B, *c, 1 + D): the baseline and its gradient on the grid.
    """

    cfg: DenoiserConfig
    num_groups: int
    num_sexes: int

    @nn.compact
    def __call__(
        self,
        x: Float[Array, "B F *c D"],
        image: Float[Array, "B *c K"],
        cond_ids: Int[Array, "B 2"],
        scalars: Float[Array, "B F 3"],
        frame_mask: Bool[Array, "B F"],
    ) -> Float[Array, "B F *c D"]:
        cfg = self.cfg
        b, f, *spatial, d_out = x.shape
        d = len(spatial)
        e = cfg.embedding
        # the embedding: per subject (group, sex) + per frame (step, ages), summed per frame
        subject = nn.Embed(self.num_groups + 1, e)(cond_ids[:, 0]) + nn.Embed(self.num_sexes + 1, e)(cond_ids[:, 1])
        scale = jnp.array([1.0, 10.0, 10.0])  # steps as they are; ages and intervals at 0.1-year resolution
        per_frame = jnp.concatenate([sinusoid(scalars[..., k] * scale[k], e) for k in range(3)], -1)
        emb = _mlp(per_frame, e) + subject[:, None]  # (B, F, E)
        emb = emb.reshape(b * f, e)

        image = jnp.broadcast_to(image[:, None], (b, f, *spatial, image.shape[-1]))
        h = jnp.concatenate([x, image], axis=-1).reshape(b * f, *spatial, -1)
        h = Conv(cfg.channels[0], (3,) * d)(h)
        frames = lambda t: t.reshape(b, f, *t.shape[1:])  # noqa: E731
        flat = lambda t: t.reshape(b * f, *t.shape[2:])  # noqa: E731
        skips = []
        for level, c in enumerate(cfg.channels):
            for _ in range(cfg.blocks):
                h = ResBlock(c, cfg.groups)(h, emb)
            h = flat(TemporalAttention(cfg.heads, cfg.groups)(frames(h), frame_mask))
            if level < len(cfg.channels) - 1:
                skips.append(h)
                h = Conv(cfg.channels[level + 1], (3,) * d, strides=(2,) * d)(h)
        for c, skip in zip(reversed(cfg.channels[:-1]), reversed(skips), strict=True):
            n, *sp, ch = h.shape
            h = jax.image.resize(h, (n, *[2 * s for s in sp], ch), "nearest")
            h = jnp.concatenate([Conv(c, (1,) * d)(h), skip], axis=-1)
            for _ in range(cfg.blocks):
                h = ResBlock(c, cfg.groups)(h, emb)
            h = flat(TemporalAttention(cfg.heads, cfg.groups)(frames(h), frame_mask))
        h = nn.swish(nn.GroupNorm(min(cfg.groups, h.shape[-1]))(h))
        out = Conv(d_out, (3,) * d, kernel_init=nn.initializers.zeros)(h)
        return frames(out)
