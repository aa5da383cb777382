"""A convolutional KL-autoencoder with a spatial latent (2D or 3D), as MRExtrap uses it.

The architecture and loss follow the latent-diffusion autoencoders MRExtrap builds on
(Rombach et al. 2022; Pinaya et al. 2022): residual blocks with group norm and
swish, stride-2 convolutions down to a latent of `latent_channels` channels at
1 / 2**(levels - 1) of the resolution (4 channels in the paper), a Gaussian posterior
(mean, log-variance) and a mirrored decoder. Training loss per scan:

    L = |x - x_hat|_1 + b1 * perceptual(x, x_hat) + b2 * adversarial(x_hat) + b3 * KL(q(z|x) || N(0, I))

with the paper's b1 = 1, b2 = 1e-3, b3 = 1e-6 and the adversarial term switched on
only after a warm-up (`adversarial_start`).

**The perceptual term.** LPIPS (Zhang et al. 2018) compares features of a network
pretrained on ImageNet; nothing can be downloaded here. We use the same LPIPS
computation (channel-normalised features, squared difference, averaged over space and
layers) on a *fixed, randomly initialised* convolutional network
(`RandomFeatures`, seeded, never trained). Liu, Chen and Yang, "Generic perceptual
loss for modeling structured output dependencies" (CVPR 2021), show that the
multi-scale structure of randomly weighted deep CNNs carries most of what makes a
perceptual loss work; unlike a natural-image network, it has no bias towards
photographs, and it works the same in 2D and 3D.

**The adversarial term.** A PatchGAN discriminator (Isola et al. 2017) with the
hinge loss of the latent-diffusion autoencoders; the generator term is
-mean(D(x_hat)). Training compiles one program for the warm-up and one for after it,
rather than one with the discriminator behind a traced switch (`lax.cond`): XLA:CPU runs
convolutions inside a conditional's branch off its fast path, and the discriminator's
update there took 44 s per step against 5.3 s outside one (3D 60 x 72 x 60, 2 scans;
`benchmarks/autoencoder_step.py`).

Images are (B, *spatial) with intensities in about [-1, 1]; spatial sizes are padded
(edge values) to a multiple of 2**(levels - 1) and cropped back, so any grid works.
Parameters are plain pytrees (flax linen used functionally), checkpointed with orbax.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, Int

from longbrain_jax.cnn import Conv, crop, pad_to_multiple, padded_shape
from longbrain_jax.config import read_config, write_config
from longbrain_jax.engine.checkpoint import StateCheckpoints, load_tree, save_tree
from longbrain_jax.engine.training import (
    all_finite,
    block_steps,
    optimiser_update,
    padded_scans,
    repeat_steps,
    step_key,
)
from longbrain_jax.memory import Budget, Program, plan_batch


# -- networks ---------------------------------------------------------------------------
class ResBlock(nn.Module):
    """GroupNorm -> swish -> conv3 twice, plus a (1x1-projected) skip."""

    channels: int
    groups: int = 8

    @nn.compact
    def __call__(self, x):
        d = x.ndim - 2
        h = Conv(self.channels, (3,) * d)(nn.swish(nn.GroupNorm(min(self.groups, x.shape[-1]))(x)))
        h = Conv(self.channels, (3,) * d)(nn.swish(nn.GroupNorm(min(self.groups, self.channels))(h)))
        skip = x if x.shape[-1] == self.channels else Conv(self.channels, (1,) * d)(x)
        return skip + h


class Encoder(nn.Module):
    """(B, *spatial, 1) -> posterior mean and log-variance, each (B, *spatial / 2**(L-1), latent_channels)."""

    channels: Sequence[int]
    latent_channels: int
    groups: int = 8

    @nn.compact
    def __call__(self, x):
        d = x.ndim - 2
        h = Conv(self.channels[0], (3,) * d)(x)
        for level, c in enumerate(self.channels):
            h = ResBlock(c, self.groups)(h)
            if level < len(self.channels) - 1:
                h = Conv(c, (3,) * d, strides=(2,) * d)(h)
        h = nn.swish(nn.GroupNorm(min(self.groups, h.shape[-1]))(ResBlock(self.channels[-1], self.groups)(h)))
        moments = Conv(2 * self.latent_channels, (3,) * d)(h)
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)


class Decoder(nn.Module):
    """(B, *latent_spatial, latent_channels) -> (B, *spatial, 1)."""

    channels: Sequence[int]
    groups: int = 8

    @nn.compact
    def __call__(self, z):
        d = z.ndim - 2
        h = Conv(self.channels[-1], (3,) * d)(z)
        h = ResBlock(self.channels[-1], self.groups)(h)
        for level, c in reversed(list(enumerate(self.channels))):
            h = ResBlock(c, self.groups)(h)
            if level > 0:
                b, *spatial, ch = h.shape
                h = jax.image.resize(h, (b, *[2 * n for n in spatial], ch), "nearest")
                h = Conv(c, (3,) * d)(h)
        h = nn.swish(nn.GroupNorm(min(self.groups, h.shape[-1]))(h))
        return Conv(1, (3,) * d)(h)


class PatchDiscriminator(nn.Module):
    """PatchGAN: (B, *spatial, 1) -> a map of real/fake logits (B, *spatial / 2**len(channels[:-1]), 1)."""

    channels: Sequence[int] = (32, 64, 128)
    groups: int = 8

    @nn.compact
    def __call__(self, x):
        d = x.ndim - 2
        h = nn.leaky_relu(Conv(self.channels[0], (4,) * d, strides=(2,) * d)(x), 0.2)
        for i, c in enumerate(self.channels[1:]):
            stride = 2 if i < len(self.channels) - 2 else 1
            h = Conv(c, (4,) * d, strides=(stride,) * d)(h)
            h = nn.leaky_relu(nn.GroupNorm(min(self.groups, c))(h), 0.2)
        return Conv(1, (4,) * d)(h)


class RandomFeatures(nn.Module):
    """A fixed random CNN for the perceptual term: a list of feature maps, one per stage."""

    channels: Sequence[int] = (16, 32, 64)

    @nn.compact
    def __call__(self, x):
        d = x.ndim - 2
        features = []
        for i, c in enumerate(self.channels):
            if i:
                x = nn.pool(x, 0.0, jax.lax.add, (2,) * d, (2,) * d, "SAME") / 2.0**d  # flax's avg_pool, whose int divisor strict promotion refuses
            x = nn.relu(Conv(c, (3,) * d)(x))
            features.append(x)
        return features


# -- configuration ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class AutoencoderConfig:
    """The autoencoder, its discriminator, its loss and its training.

    **Arguments:**

    - `ndim`: 2 or 3 spatial axes.
    - `channels`: channels per level; the latent is 2**(len(channels) - 1) times coarser
      per axis (paper-like 3D: (64, 128, 256) for a 4x-coarser latent).
    - `latent_channels`: channels of the spatial latent (paper: 4).
    - `groups`: GroupNorm groups.
    - `discriminator_channels`, `perceptual_channels`: the PatchGAN and the random
      feature network (see the module docstring).
    - `perceptual_weight`, `adversarial_weight`, `kl_weight`: b1, b2, b3 (paper: 1, 1e-3, 1e-6).
    - `adversarial_start`: training steps before the adversarial term is switched on
      (the paper: after 100 of 230 epochs).
    - `steps`, `batch_size`, `learning_rate` (Adam, autoencoder and discriminator),
      `checkpoint_every` (steps), `seed`.
    """

    ndim: int = 3
    channels: tuple[int, ...] = (32, 64, 128)
    latent_channels: int = 4
    groups: int = 8
    discriminator_channels: tuple[int, ...] = (32, 64, 128)
    perceptual_channels: tuple[int, ...] = (16, 32, 64)
    perceptual_weight: float = 1.0
    adversarial_weight: float = 1e-3
    kl_weight: float = 1e-6
    adversarial_start: int = 2000
    steps: int = 5000
    batch_size: int = 8
    learning_rate: float = 1e-4
    checkpoint_every: int = 500
    seed: int = 0

    def __post_init__(self):
        if self.ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {self.ndim}")
        if not self.channels or self.latent_channels < 1:
            raise ValueError("need at least one level and one latent channel")
        if self.steps < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ValueError(f"need steps >= 1, batch_size >= 1, learning_rate > 0, got {self}")

    @property
    def factor(self) -> int:
        """Downsampling factor per axis from image to latent."""
        return 2 ** (len(self.channels) - 1)


def _modules(cfg: AutoencoderConfig):
    return (
        Encoder(cfg.channels, cfg.latent_channels, cfg.groups),
        Decoder(cfg.channels, cfg.groups),
        PatchDiscriminator(cfg.discriminator_channels, cfg.groups),
        RandomFeatures(cfg.perceptual_channels),
    )


def latent_shape(shape: Sequence[int], cfg: AutoencoderConfig) -> tuple[int, ...]:
    """(*latent_spatial, latent_channels) of an image of spatial `shape`."""
    return (*(n // cfg.factor for n in padded_shape(shape, cfg.factor)), cfg.latent_channels)


def init(key: jax.Array, cfg: AutoencoderConfig, shape: Sequence[int]) -> dict[str, Any]:
    """Parameters {"encoder", "decoder", "discriminator", "features"} for images of spatial `shape`."""
    return _init(key, cfg, tuple(int(n) for n in shape))


@functools.partial(jax.jit, static_argnums=(1, 2))  # one compiled program, not one per layer
def _init(key: jax.Array, cfg: AutoencoderConfig, shape: tuple[int, ...]) -> dict[str, Any]:
    enc, dec, disc, feats = _modules(cfg)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    x = jnp.zeros((1, *padded_shape(shape, cfg.factor), 1), jnp.float32)
    z = jnp.zeros((1, *latent_shape(shape, cfg)), jnp.float32)
    return {
        "encoder": enc.init(k1, x)["params"],
        "decoder": dec.init(k2, z)["params"],
        "discriminator": disc.init(k3, x)["params"],
        "features": feats.init(k4, x)["params"],  # fixed: never updated
    }


def encode(params: dict, images: Float[Array, "B *s"], cfg: AutoencoderConfig) -> tuple[Array, Array]:
    """Posterior mean and log-variance of the latents, each (B, *latent_spatial, latent_channels)."""
    enc = _modules(cfg)[0]
    return enc.apply({"params": params["encoder"]}, pad_to_multiple(images, cfg.factor))


def decode(params: dict, latents: Float[Array, "B *l c"], cfg: AutoencoderConfig, shape: Sequence[int]) -> Float[Array, "B *s"]:
    """Images (B, *shape) from latents."""
    dec = _modules(cfg)[1]
    return crop(dec.apply({"params": params["decoder"]}, latents), shape)[..., 0]


def perceptual_distance(features_params: dict, x: Array, y: Array, cfg: AutoencoderConfig) -> Float[Array, " B"]:
    """LPIPS-style distance on the fixed random features, per image ((B, *p, 1) inputs)."""
    feats = _modules(cfg)[3]
    fx = feats.apply({"params": features_params}, x)
    fy = feats.apply({"params": features_params}, y)
    total = 0.0
    for a, b in zip(fx, fy, strict=True):
        a = a / (jnp.linalg.norm(a, axis=-1, keepdims=True) + 1e-6)
        b = b / (jnp.linalg.norm(b, axis=-1, keepdims=True) + 1e-6)
        total = total + jnp.mean(jnp.sum((a - b) ** 2, axis=-1), axis=tuple(range(1, a.ndim - 1)))
    return total / len(fx)


def kl_divergence(mean: Array, logvar: Array) -> Float[Array, " B"]:
    """KL(N(mean, exp(logvar)) || N(0, I)) summed over the latent, per image."""
    axes = tuple(range(1, mean.ndim))
    return 0.5 * jnp.sum(mean**2 + jnp.exp(logvar) - 1.0 - logvar, axis=axes)


# -- training -------------------------------------------------------------------------------
class AutoencoderState(NamedTuple):
    params: dict
    opt_state: Any  # the autoencoder's (encoder + decoder)
    disc_opt_state: Any
    step: Array


class Losses(NamedTuple):
    total: Array
    l1: Array
    perceptual: Array
    adversarial: Array
    kl: Array
    discriminator: Array


def _optimizer(cfg: AutoencoderConfig) -> optax.GradientTransformation:
    return optax.adam(cfg.learning_rate, b1=0.5, b2=0.9)


def init_state(key: jax.Array, cfg: AutoencoderConfig, shape: Sequence[int]) -> AutoencoderState:
    return _init_state(key, cfg, tuple(int(n) for n in shape))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _init_state(key: jax.Array, cfg: AutoencoderConfig, shape: tuple[int, ...]) -> AutoencoderState:
    params = _init(key, cfg, shape)
    tx = _optimizer(cfg)
    ae = {"encoder": params["encoder"], "decoder": params["decoder"]}
    return AutoencoderState(params, tx.init(ae), tx.init(params["discriminator"]), jnp.zeros((), jnp.int32))


def discriminator_update(state: AutoencoderState, real: Float[Array, "B *p 1"], fake: Float[Array, "B *p 1"], cfg: AutoencoderConfig):
    """One Adam step of the discriminator on its hinge loss: (its new params, optimiser state, loss).
    `real` and `fake` are padded scans and their reconstructions (no gradient flows into `fake`)."""
    disc = _modules(cfg)[2]

    def hinge(p):
        d_real = disc.apply({"params": p}, real)
        d_fake = disc.apply({"params": p}, jax.lax.stop_gradient(fake))
        return 0.5 * (jnp.mean(nn.relu(1.0 - d_real)) + jnp.mean(nn.relu(1.0 + d_fake)))

    loss, grads = jax.value_and_grad(hinge)(state.params["discriminator"])
    updates, opt_state = optimiser_update(_optimizer(cfg), grads, state.disc_opt_state, state.params["discriminator"])
    return optax.apply_updates(state.params["discriminator"], updates), opt_state, loss


@functools.partial(jax.jit, static_argnames=("cfg", "adversarial"))
def train_step(
    state: AutoencoderState, images: Float[Array, "B *s"], key: jax.Array, adversarial: bool, *, cfg: AutoencoderConfig
) -> tuple[AutoencoderState, Losses]:
    """One Adam step of the autoencoder and, if `adversarial` (a Python bool: a program for
    each phase, see the module docstring), of the discriminator; its loss is 0 otherwise."""
    enc, dec, disc, _ = _modules(cfg)
    x = pad_to_multiple(images, cfg.factor)
    fixed = {"features": state.params["features"], "discriminator": state.params["discriminator"]}

    def ae_loss(ae):
        mean, logvar = enc.apply({"params": ae["encoder"]}, x)
        z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape)
        x_hat = dec.apply({"params": ae["decoder"]}, z)
        l1 = jnp.mean(jnp.abs(x - x_hat))
        perceptual = jnp.mean(perceptual_distance(fixed["features"], x, x_hat, cfg))
        kl = jnp.mean(kl_divergence(mean, logvar))
        adv = -jnp.mean(disc.apply({"params": fixed["discriminator"]}, x_hat)) if adversarial else jnp.zeros((), x_hat.dtype)
        total = l1 + cfg.perceptual_weight * perceptual + cfg.kl_weight * kl + cfg.adversarial_weight * adv
        return total, (l1, perceptual, adv, kl, x_hat)

    ae = {"encoder": state.params["encoder"], "decoder": state.params["decoder"]}
    (total, (l1, perceptual, adv, kl, x_hat)), grads = jax.value_and_grad(ae_loss, has_aux=True)(ae)
    tx = _optimizer(cfg)
    updates, opt_state = optimiser_update(tx, grads, state.opt_state, ae)
    ae = optax.apply_updates(ae, updates)
    params = {**state.params, **ae}

    unchanged = (state.params["discriminator"], state.disc_opt_state, jnp.zeros((), total.dtype))
    params["discriminator"], disc_opt_state, d_loss = discriminator_update(state, x, x_hat, cfg) if adversarial else unchanged
    new = AutoencoderState(params, opt_state, disc_opt_state, state.step + 1)
    return new, Losses(total, l1, perceptual, adv, kl, d_loss)


# -- memory -------------------------------------------------------------------------------------------
def train_batch(cfg: AutoencoderConfig, shape: Sequence[int], budget: Budget, held_bytes: int = 0) -> int:
    """The training batch under `budget` (at most `cfg.batch_size`; `held_bytes`: the training
    scans on the device beside it). Smaller than asked changes training: say so."""
    shape = tuple(int(n) for n in shape)
    state = jax.eval_shape(lambda: _init_state(jax.random.key(0), cfg, shape))

    def trace(b):  # the scans are counted in held_bytes; a batch of b drawn from b scans
        return train_block.trace(state, jax.ShapeDtypeStruct((b, *shape), jnp.float32), jnp.int32(b), jnp.int32(0), jnp.int32(1),
                                 cfg=dataclasses.replace(cfg, batch_size=b), max_steps=1, adversarial=cfg.adversarial_start < cfg.steps)  # fmt: skip

    program = Program(trace, ("autoencoder-train", cfg, shape))
    return plan_batch("autoencoder: training", "scans per batch", budget, cfg.batch_size,
                      lambda b, exact: program(b, exact) + held_bytes, compile_bytes=program.compile_bytes).sizes["scans per batch"]  # fmt: skip


def inference_batch(params_shapes, cfg: AutoencoderConfig, shape: Sequence[int], budget: Budget, upper: int = 16) -> int:
    """Scans encoded (and latents decoded) per call under `budget`."""
    shape = tuple(int(n) for n in shape)
    s = jax.ShapeDtypeStruct
    enc = Program(lambda b: _encode_mean.trace(params_shapes, s((b, *shape), jnp.float32), cfg), ("autoencoder-encode", cfg, shape))
    dec = Program(lambda b: _decode.trace(params_shapes, s((b, *latent_shape(shape, cfg)), jnp.float32), cfg, shape),
                  ("autoencoder-decode", cfg, shape))  # fmt: skip
    return plan_batch("autoencoder: encoding", "scans per batch", budget, upper,
                      lambda b, exact: max(enc(b, exact), dec(b, exact))).sizes["scans per batch"]  # fmt: skip


@functools.partial(jax.jit, static_argnames=("cfg", "max_steps", "adversarial"), donate_argnums=0)
def train_block(
    state: AutoencoderState, images: Float[Array, "M *s"], count: Int[Array, ""], first_step: Array, num_steps: Array, *,
    cfg: AutoencoderConfig, max_steps: int, adversarial: bool,
) -> tuple[AutoencoderState, Losses]:  # fmt: skip
    """`num_steps` (<= `max_steps`) training steps in one compiled loop (`engine.training.repeat_steps`),
    all of one phase (`adversarial`: the steps from `cfg.adversarial_start` on); each draws a batch of
    the first `count` `images` (on the device, `engine.training.padded_scans`) with the engine's key
    for the step (`engine.training.step_key`); a step whose loss or new parameters are not finite is skipped.
    Returns the state and every step's `Losses` (`max_steps` rows, zero past `num_steps`)."""

    def body(state, i):
        step = first_step + i
        k_batch, k_noise = jax.random.split(step_key(jnp.int32(cfg.seed), "autoencoder", jnp.int32(0), step))
        batch = images[jax.random.randint(k_batch, (cfg.batch_size,), 0, count)]
        new, losses = train_step(state, batch, k_noise, adversarial, cfg=cfg)
        ok = jnp.isfinite(losses.total) & all_finite(new.params)
        return jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, state), losses

    return repeat_steps(body, state, num_steps, max_steps)


def train_autoencoder(
    images: np.ndarray,
    cfg: AutoencoderConfig,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: Callable[[int, int, Losses], None] | None = None,
    steps_per_call: int | None = None,
) -> tuple[dict, np.ndarray]:
    """Train on single scans; returns (params, loss history (steps, 6) in `Losses` order).

    **Arguments:**

    - `images`: (M, *spatial) float32 scans in about [-1, 1] (any scans: the model is
      cross-sectional), held on the device.
    - `cfg`: see `AutoencoderConfig`; `cfg.ndim` must match the images.
    - `checkpoint_dir`: orbax checkpoints every `cfg.checkpoint_every` steps; with
      `resume`, training continues from the latest one and ends where an
      uninterrupted run would (batches are drawn from the engine's per-step keys).
    - `progress`: called as `progress(step, steps, losses)` after every block of
      `steps_per_call` steps (compiled as one loop), with the block's last losses.
    - `steps_per_call`: default `engine.training.block_steps(50, convolutional=True)`: one
      step per call on the CPU, where a compiled loop slowed this network's step 4-24x
      (`benchmarks/compiled_loops.py`).
    """
    steps_per_call = steps_per_call or block_steps(50, convolutional=True)
    images = np.asarray(images, np.float32)
    if images.ndim != cfg.ndim + 1 or images.shape[0] < 1:
        raise ValueError(f"images must be (M, *spatial) with {cfg.ndim} spatial axes, got {images.shape}")
    shape = images.shape[1:]
    state = init_state(jax.random.fold_in(jax.random.key(cfg.seed), 0), cfg, shape)
    ckpt = StateCheckpoints(checkpoint_dir) if checkpoint_dir is not None else None
    history = np.zeros((cfg.steps, len(Losses._fields)), np.float32)

    start = 0
    try:
        if ckpt is not None and resume and (latest := ckpt.latest_meta()) is not None:
            step, meta = latest
            restored = ckpt.restore(step, {"state": state, "history": history})
            state, history, start = restored["state"], np.asarray(restored["history"]), int(meta["step"])
        (data,), count = padded_scans(images)
        step = start
        while step < cfg.steps:
            k = min(steps_per_call, cfg.steps - step)  # blocks end on checkpoints and the warm-up; one program serves every length
            if ckpt is not None:
                k = min(k, cfg.checkpoint_every - step % cfg.checkpoint_every)
            adversarial = step >= cfg.adversarial_start
            if not adversarial:
                k = min(k, cfg.adversarial_start - step)
            state, losses = train_block(state, data, count, jnp.int32(step), jnp.int32(k), cfg=cfg, max_steps=steps_per_call, adversarial=adversarial)
            losses = Losses(*(x[:k] for x in losses))
            history[step : step + k] = np.asarray(jnp.stack(losses, axis=1))
            step += k
            if progress is not None:
                progress(step, cfg.steps, Losses(*(x[-1] for x in losses)))
            if ckpt is not None and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
                ckpt.save(step, {"state": state, "history": history}, {"step": step})
    finally:
        if ckpt is not None:
            ckpt.close()
    return jax.device_get(state.params), history


@functools.partial(jax.jit, static_argnames=("cfg",))
def _encode_mean(params, images, cfg):
    return encode(params, images, cfg)[0]


def encode_scans(params: dict, images: np.ndarray, cfg: AutoencoderConfig, batch_size: int | None = None) -> np.ndarray:
    """Posterior means (M, *latent_spatial, c) of many scans, `batch_size` at a time (default: planned)."""
    batch_size = batch_size or inference_batch(jax.eval_shape(lambda: params), cfg, images.shape[1:], Budget.resolve())
    out = [np.asarray(_encode_mean(params, jnp.asarray(images[i : i + batch_size]), cfg)) for i in range(0, len(images), batch_size)]
    return np.concatenate(out)


@functools.partial(jax.jit, static_argnames=("cfg", "shape"))
def _decode(params, latents, cfg, shape):
    return decode(params, latents, cfg, shape)


def decode_latents(params: dict, latents: np.ndarray, cfg: AutoencoderConfig, shape: Sequence[int], batch_size: int | None = None) -> np.ndarray:
    """Images (M, *shape) from latents (M, *latent_spatial, c), `batch_size` at a time (default: planned)."""
    shape = tuple(int(n) for n in shape)
    batch_size = batch_size or inference_batch(jax.eval_shape(lambda: params), cfg, shape, Budget.resolve())
    out = [np.asarray(_decode(params, jnp.asarray(latents[i : i + batch_size]), cfg, shape)) for i in range(0, len(latents), batch_size)]
    return np.concatenate(out)


def save_autoencoder(path: str | os.PathLike, params: dict, cfg: AutoencoderConfig, shape: Sequence[int]) -> None:
    """Write the parameters (orbax) and the config + image shape (JSON) under `path`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_tree(path / "params", params)
    write_config(cfg, path / "config.json", shape=[int(n) for n in shape])


def load_autoencoder(path: str | os.PathLike) -> tuple[dict, AutoencoderConfig, tuple[int, ...]]:
    """(params, config, image shape) written by `save_autoencoder`."""
    path = Path(path)
    cfg = read_config(AutoencoderConfig, path / "config.json")
    shape = tuple(json.loads((path / "config.json").read_text())["shape"])
    target = jax.eval_shape(lambda k: init(k, cfg, shape), jax.random.key(0))
    return load_tree(path / "params", target), cfg, shape
