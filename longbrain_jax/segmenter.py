"""A small U-Net that segments scans into the structures whose volumes forecasting is scored on.

The role SynthSeg plays in MRExtrap's evaluation: any scan, observed or predicted, is
segmented the same way, so regional volumes of predicted scans can be compared with
the truth. Trained on simulated scans and their true label maps (the simulator
knows them), with cross-entropy + soft Dice; its own Dice on held-out simulated
subjects is reported next to every volume error it is used for.

Volumes are soft by default (`SegmenterConfig.volumes`): the sum of each class's
softmax probability times the voxel volume, as SynthSeg reports them. At a few
voxels across a structure, arg-max labels round every boundary voxel to one side;
the probability sum keeps the fraction (one-off comparison on the 16 extrapolated
2D 3 mm scans of `benchmarks/forecasting.py`, U-Net trained on 197 scans of 48 other
simulated subjects: 7.7 % mean volume error against 8.1 % for arg-max counts).

Classes (`CLASSES`): background, cortical grey matter, cerebral white matter,
lateral ventricles, hippocampus, and everything else inside the head ("other").
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Int

from longbrain_jax import metrics
from longbrain_jax.atlas import REGIONS
from longbrain_jax.cnn import Conv, crop, pad_to_multiple, padded_shape
from longbrain_jax.config import check_literals
from longbrain_jax.engine.training import TrainState, block_steps, init_state, padded_scans, train_steps
from longbrain_jax.memory import Budget, Program, plan_batch

CLASSES = ("background", "cortical_gm", "cerebral_wm", "lateral_ventricles", "hippocampus", "other")
#: the classes whose volumes forecasts are scored on
SCORED = ("hippocampus", "lateral_ventricles", "cortical_gm", "cerebral_wm")
SCORED_IDS = tuple(CLASSES.index(name) for name in SCORED)  # their class ids


def label_classes(labels: np.ndarray) -> np.ndarray:
    """aseg labels (any shape) -> class index into `CLASSES` (int32)."""
    labels = np.asarray(labels)
    out = np.where(labels > 0, CLASSES.index("other"), 0).astype(np.int32)
    for name in CLASSES[1:-1]:
        out[np.isin(labels, REGIONS[name])] = CLASSES.index(name)
    return out


class UNet(nn.Module):
    """(B, *spatial, 1) -> (B, *spatial, classes) logits; spatial sizes divisible by 2**(levels - 1)."""

    channels: Sequence[int] = (16, 32, 64)
    num_classes: int = len(CLASSES)
    groups: int = 8

    @nn.compact
    def __call__(self, x):
        d = x.ndim - 2

        def block(h, c):
            for _ in range(2):
                h = nn.swish(nn.GroupNorm(min(self.groups, c))(Conv(c, (3,) * d)(h)))
            return h

        skips = []
        h = x
        for level, c in enumerate(self.channels):
            h = block(h, c)
            if level < len(self.channels) - 1:
                skips.append(h)
                h = nn.max_pool(h, (2,) * d, strides=(2,) * d)
        for c, skip in zip(reversed(self.channels[:-1]), reversed(skips), strict=True):
            b, *spatial, ch = h.shape
            h = jax.image.resize(h, (b, *[2 * n for n in spatial], ch), "nearest")
            h = block(jnp.concatenate([Conv(c, (1,) * d)(h), skip], axis=-1), c)
        return Conv(self.num_classes, (1,) * d)(h)


@dataclasses.dataclass(frozen=True)
class SegmenterConfig:
    """U-Net widths and training (Adam, cross-entropy + `dice_weight` soft Dice)."""

    channels: tuple[int, ...] = (16, 32, 64)
    steps: int = 1500
    batch_size: int = 8
    learning_rate: float = 2e-3
    dice_weight: float = 1.0
    volumes: Literal["soft", "hard"] = "soft"
    seed: int = 0

    def __post_init__(self):
        check_literals(self)
        if self.steps < 0 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ValueError(f"need steps >= 0, batch_size >= 1, learning_rate > 0: {self}")

    @property
    def factor(self) -> int:
        return 2 ** (len(self.channels) - 1)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _logits(params, images, cfg: SegmenterConfig):
    logits = UNet(cfg.channels).apply({"params": params}, pad_to_multiple(images, cfg.factor))
    return crop(logits, images.shape[1:])


def cross_entropy(logits: Array, onehot: Array) -> Array:
    """Mean softmax cross-entropy of logits (..., C) against one-hot targets (..., C).

    optax's one-hot form, not its integer-label one: that one gathers each voxel's label logit
    and takes `[..., 0]`, whose gradient XLA builds as a scatter-add of constants over every
    voxel and constant-folds while compiling, for over a minute per program at 1.5 mm in 3D.
    """
    return jnp.mean(optax.softmax_cross_entropy(logits, onehot))


def _loss(params, images, classes, cfg: SegmenterConfig):
    logits = _logits(params, images, cfg)
    onehot = jax.nn.one_hot(classes, len(CLASSES))
    ce = cross_entropy(logits, onehot)
    prob = jax.nn.softmax(logits)
    axes = tuple(range(1, images.ndim))
    inter = jnp.sum(prob * onehot, axis=axes)
    dice = (2 * inter + 1.0) / (jnp.sum(prob, axis=axes) + jnp.sum(onehot, axis=axes) + 1.0)
    return ce + cfg.dice_weight * (1.0 - jnp.mean(dice[:, 1:]))


@functools.partial(jax.jit, static_argnums=(1, 2))  # one compiled program, not one per layer
def _init(key: jax.Array, channels: tuple[int, ...], padded: tuple[int, ...]) -> dict:
    return UNet(channels).init(key, jnp.zeros((1, *padded, 1)))["params"]


def train_batch(cfg: SegmenterConfig, shape: tuple[int, ...], budget: Budget, held_bytes: int = 0) -> int:
    """The training batch under `budget` (at most `cfg.batch_size`; `held_bytes`: its training data on the device)."""
    shape = tuple(int(n) for n in shape)
    params = jax.eval_shape(lambda: _init(jax.random.key(0), tuple(cfg.channels), padded_shape(shape, cfg.factor)))
    state = jax.eval_shape(lambda p: init_state(p, optax.adam(cfg.learning_rate)), params)
    s = jax.ShapeDtypeStruct

    def trace(b):  # the data is counted in held_bytes; a batch of b drawn from b scans
        return train_block.trace(state, s((b, *shape), jnp.float32), s((b, *shape), jnp.int32), jnp.int32(b), jnp.int32(0), jnp.int32(1),
                                 cfg=dataclasses.replace(cfg, batch_size=b), max_steps=1)  # fmt: skip

    program = Program(trace, ("segmenter-train", cfg, shape))
    return plan_batch("segmenter: training", "scans per batch", budget, cfg.batch_size,
                      lambda b, exact: program(b, exact) + held_bytes, compile_bytes=program.compile_bytes).sizes["scans per batch"]  # fmt: skip


def inference_batch(cfg: SegmenterConfig, shape: tuple[int, ...], budget: Budget, upper: int = 16) -> int:
    """Scans segmented per call under `budget`."""
    shape = tuple(int(n) for n in shape)
    params = jax.eval_shape(lambda: _init(jax.random.key(0), tuple(cfg.channels), padded_shape(shape, cfg.factor)))
    program = Program(lambda b: _probabilities.trace(params, jax.ShapeDtypeStruct((b, *shape), jnp.float32), cfg), ("segmenter-apply", cfg, shape))
    return plan_batch("segmenter: inference", "scans per batch", budget, upper, program).sizes["scans per batch"]


@functools.partial(jax.jit, static_argnames=("cfg",))
def _probabilities(params, images, cfg: SegmenterConfig):
    return jax.nn.softmax(_logits(params, images, cfg), -1)


@functools.partial(jax.jit, static_argnames=("cfg", "max_steps"), donate_argnums=0)
def train_block(state: TrainState, images, classes, count, first_step, num_steps, *, cfg: SegmenterConfig, max_steps: int) -> tuple[TrainState, Array]:
    """`num_steps` (<= `max_steps`) guarded Adam steps in one compiled loop, each on a batch of the
    first `count` scans of the (device) data (`engine.training.padded_scans`) drawn with the
    engine's key for the step; returns the state and the steps' losses (`max_steps`, zero past `num_steps`)."""

    def loss(params, key, step):
        idx = jax.random.randint(key, (cfg.batch_size,), 0, count)
        value = _loss(params, images[idx], classes[idx], cfg)
        return value, value

    return train_steps(state, loss, optax.adam(cfg.learning_rate), jnp.int32(cfg.seed), "segmenter", jnp.int32(0), first_step, num_steps,
                       max_steps)


def train_segmenter(
    images: np.ndarray, labels: np.ndarray, cfg: SegmenterConfig = SegmenterConfig(),
    progress: Callable[[int, int, float], None] | None = None, steps_per_call: int | None = None,
) -> tuple[dict, np.ndarray]:  # fmt: skip
    """Train on scans (M, *spatial) and their aseg label maps (M, *spatial); returns (params, losses).

    Steps run `steps_per_call` at a time in one compiled loop (`train_block`; default
    `engine.training.block_steps(50, convolutional=True)`: one step per call on the CPU, where
    a compiled loop slowed this network's step 6.6x); `progress(step, steps, loss)` is called
    after each block.
    """
    steps_per_call = steps_per_call or block_steps(50, convolutional=True)
    images = np.asarray(images, np.float32)
    classes = label_classes(labels)
    if images.shape != classes.shape:
        raise ValueError(f"images {images.shape} and labels {classes.shape} differ")
    shape = images.shape[1:]
    params = _init(jax.random.fold_in(jax.random.key(cfg.seed), 0), tuple(cfg.channels), padded_shape(shape, cfg.factor))
    state = init_state(params, optax.adam(cfg.learning_rate))
    (data_x, data_y), count = padded_scans(images, classes)
    losses = np.zeros(cfg.steps, np.float32)
    step = 0
    while step < cfg.steps:
        k = min(steps_per_call, cfg.steps - step)
        state, block = train_block(state, data_x, data_y, count, jnp.int32(step), jnp.int32(k), cfg=cfg, max_steps=steps_per_call)
        losses[step : step + k] = np.asarray(block)[:k]
        step += k
        if progress is not None:
            progress(step, cfg.steps, float(losses[step - 1]))
    return jax.device_get(state.params), losses


def _batches(params: dict, images: np.ndarray, cfg: SegmenterConfig, batch_size: int | None) -> Iterator[tuple[slice, np.ndarray]]:
    """(scans as a slice, their class probabilities (b, *spatial, len(CLASSES))) `batch_size` scans
    at a time (default: planned from the memory budget): callers reduce each batch before the next,
    so host memory holds one batch's probabilities, not the cohort's."""
    batch_size = batch_size or inference_batch(cfg, images.shape[1:], Budget.resolve())
    for i in range(0, len(images), batch_size):
        sel = slice(i, min(i + batch_size, len(images)))
        yield sel, np.asarray(_probabilities(params, jnp.asarray(images[sel], jnp.float32), cfg))


def probabilities(params: dict, images: np.ndarray, cfg: SegmenterConfig, batch_size: int | None = None) -> np.ndarray:
    """Class probabilities (M, *spatial, len(CLASSES)) float32 of scans (M, *spatial)."""
    images = np.asarray(images)
    out = np.empty((*images.shape, len(CLASSES)), np.float32)
    for sel, prob in _batches(params, images, cfg, batch_size):
        out[sel] = prob
    return out


def segment(params: dict, images: np.ndarray, cfg: SegmenterConfig, batch_size: int | None = None) -> np.ndarray:
    """Class maps (M, *spatial) int32 (indices into `CLASSES`) of scans (M, *spatial)."""
    images = np.asarray(images)
    out = np.empty(images.shape, np.int32)
    for sel, prob in _batches(params, images, cfg, batch_size):
        out[sel] = np.argmax(prob, -1)
    return out


def segmented_volumes(params: dict, images: np.ndarray, affine: np.ndarray, cfg: SegmenterConfig) -> np.ndarray:
    """Volumes (M, len(SCORED)) in mm^3 of the `SCORED` classes in scans (M, *spatial), soft or hard per `cfg.volumes`."""
    images = np.asarray(images)
    out = np.empty((len(images), len(SCORED)), np.float32)
    voxel = float(metrics.voxel_volume(jnp.asarray(affine)))
    for sel, prob in _batches(params, images, cfg, None):
        if cfg.volumes == "hard":
            out[sel] = class_volumes(np.argmax(prob, -1), affine)
        else:
            out[sel] = prob[..., list(SCORED_IDS)].sum(axis=tuple(range(1, prob.ndim - 1))) * voxel
    return out


def class_volumes(classes: Int[Array, "M *s"], affine: np.ndarray) -> np.ndarray:
    """Volumes (M, len(SCORED)) in mm^3 of the `SCORED` classes in class maps (M, *spatial) on `affine`'s grid."""
    ids = list(SCORED_IDS)
    return np.asarray(jax.vmap(lambda c: metrics.regional_volumes(c, affine, ids))(jnp.asarray(classes)))


def class_dice(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Dice per `SCORED` class between class maps of the same shape (all scans pooled; NaN if absent from both)."""
    dice = metrics.dice(jnp.asarray(pred), jnp.asarray(true), SCORED_IDS)
    return {name: float(d) for name, d in zip(SCORED, dice, strict=True)}
