"""Stage 2: a conditional diffusion model over a subject's sequence of velocity frames.

A subject with scans at ages a_0 < a_1 < ... < a_T gives, from stage 1 (`svf`), one
stationary velocity field v_k per follow-up (baseline -> scan k) on the velocity grid
(*c, D), normalised units. A frame is v_k / (a_k - a_0) (per year, `frames="rate"`) or
v_k itself ("velocity", the paper's), divided by one cohort-wide `scale` (the RMS of
the training frames) so the data have about unit variance. The model learns
p(frames | baseline scan, group, sex, frame ages), all of a subject's frames jointly
(`Denoiser`: spatial blocks per frame, temporal attention across frames), with an
epsilon- or v-prediction loss (L1 or L2) over real frames only (`frame_mask`).

Sampling starts every (subject, sample) from its own key (`sample_key`), so a subject's
draws do not depend on which others are sampled with it, and integrates the reverse
process with DDIM or DPM-Solver++ 2M (`schedule`); classifier-free guidance mixes the
conditional and the "unknown group / sex" predictions. A generated frame is turned back
into an SVF, exponentiated (scaling and squaring, `svf.displacement`) and warps the
baseline scan and its label map: every generated scan is a diffeomorphic image of the
baseline, which is why topology is kept (the folding share is measured, not assumed).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Bool, Float, Int
from scipy.optimize import isotonic_regression

from longbrain_jax import grid
from longbrain_jax.cnn import padded_shape
from longbrain_jax.diffusion import schedule as sch
from longbrain_jax.diffusion import svf
from longbrain_jax.diffusion.config import DiffusionConfig
from longbrain_jax.diffusion.denoiser import Denoiser
from longbrain_jax.engine.checkpoint import StateCheckpoints
from longbrain_jax.engine.training import (
    TrainState,
    block_steps,
    init_state,
    loss_step,
    padded_scans,
    repeat_steps,
    scan_slots,
    step_key,
)
from longbrain_jax.memory import Budget, Program, plan_batch


# -- the data ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """The group and sex names a model was trained with; index len(names) is "unknown"."""

    groups: tuple[str, ...]
    sexes: tuple[str, ...]

    @classmethod
    def of(cls, groups: Sequence[str], sexes: Sequence[str]) -> Vocabulary:
        return cls(tuple(sorted({g for g in groups if g})), tuple(sorted({s for s in sexes if s})))

    def ids(self, groups: Sequence[str], sexes: Sequence[str]) -> np.ndarray:
        """(N, 2) int32 indices; names the model has not seen (or "") map to "unknown"."""
        g = [self.groups.index(x) if x in self.groups else len(self.groups) for x in groups]
        s = [self.sexes.index(x) if x in self.sexes else len(self.sexes) for x in sexes]
        return np.stack([g, s], axis=1).astype(np.int32)

    def unknown(self, n: int) -> np.ndarray:
        return np.tile(np.array([[len(self.groups), len(self.sexes)]], np.int32), (n, 1))


class Sequences(NamedTuple):
    """Subjects' frame sequences on the velocity grid, with what conditions them (leading axis N).

    - `frames` (N, F, *c, D): normalised frames (zero in padding slots).
    - `frame_mask` (N, F) bool: real frames.
    - `image` (N, *c, 1 + D): the baseline scan on the velocity grid and its gradient.
    - `cond_ids` (N, 2) int32: group and sex (`Vocabulary.ids`).
    - `ages` (N, F): each frame's age (years); `intervals` (N, F): years since the baseline
      (1 in padding slots).
    """

    frames: Float[Array, "N F *c D"]
    frame_mask: Bool[Array, "N F"]
    image: Float[Array, "N *c K"]
    cond_ids: Int[Array, "N 2"]
    ages: Float[Array, "N F"]
    intervals: Float[Array, "N F"]


def baseline_features(baselines: Float[Array, "N *s"], coarse: Sequence[int]) -> np.ndarray:
    """The baseline scans resampled onto the velocity grid, with their gradient (per coarse voxel): (N, *c, 1 + D)."""
    small = np.asarray(jax.vmap(lambda b: grid.resize_linear(b, coarse))(jnp.asarray(baselines, jnp.float32)))
    d = len(coarse)
    grads = np.gradient(small, axis=tuple(range(1, d + 1))) if d > 1 else [np.gradient(small, axis=1)]
    return np.concatenate([small[..., None], *[g[..., None] for g in grads]], axis=-1).astype(np.float32)


def to_frames(velocities: np.ndarray, intervals: np.ndarray, kind: str) -> np.ndarray:
    """SVFs (..., F, *c, D) -> frames (`DiffusionConfig.frames`), before scaling."""
    if kind == "velocity":
        return velocities
    return velocities / intervals.reshape(intervals.shape + (1,) * (velocities.ndim - intervals.ndim))


def from_frames(frames: np.ndarray, intervals: np.ndarray, kind: str) -> np.ndarray:
    """Frames (..., F, *c, D) -> SVFs (inverse of `to_frames`)."""
    if kind == "velocity":
        return frames
    return frames * intervals.reshape(intervals.shape + (1,) * (frames.ndim - intervals.ndim))


def monotone_path(velocities: np.ndarray, intervals: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Generated SVFs (N, K, F, *c, D) at `intervals` (N, F) years after the baseline (`mask` (N, F):
    real frames) -> one direction per sequence, walked at a non-decreasing pace.

    Per (subject, sample): the direction r (*c, D) is the least-squares rate through its frames,
    r = sum_k t_k v_k / sum_k t_k^2; frame k's pace s_k = <v_k, r> / <r, r> (years at that rate);
    the paces are made non-decreasing in t and >= 0 (`scipy.optimize.isotonic_regression`,
    then clipped at 0) and frame k becomes s_k r. To first order log|J| of exp(s r)
    is s div r, so every voxel's volume change keeps one sign over time, which independently
    drawn frames do not (monotone share 0.26 measured; `DiffusionConfig.trajectory`). A steady
    sequence (v_k = t_k r) is returned unchanged; one that accelerates uniformly keeps its pace;
    regions that speed up at different times are not represented. Padded frames stay zero."""
    t = np.where(mask, intervals, 0.0).astype(np.float64)  # (N, F)
    flat = velocities.reshape(*velocities.shape[:3], -1).astype(np.float64)  # (N, K, F, P)
    rate = np.einsum("nf,nkfp->nkp", t, flat) / np.maximum(np.sum(t**2, axis=1), 1e-12)[:, None, None]
    norm = np.sum(rate**2, axis=-1)  # (N, K)
    pace = np.einsum("nkfp,nkp->nkf", flat, rate) / np.where(norm > 0, norm, 1.0)[..., None]
    out = np.zeros_like(flat)
    for i in range(flat.shape[0]):
        frames = np.flatnonzero(mask[i])
        if not frames.size:
            continue
        order = frames[np.argsort(intervals[i, frames], kind="stable")]
        for k in range(flat.shape[1]):
            walked = np.maximum(isotonic_regression(pace[i, k, order]).x, 0.0)
            out[i, k, order] = walked[:, None] * rate[i, k][None]
    return out.reshape(velocities.shape).astype(velocities.dtype)


def unfold(velocities: np.ndarray, shape: Sequence[int], svf_cfg: svf.SVFConfig, sigmas: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Generated SVFs (N, K, F, *c, D) -> the same, where a sequence's map folds on the image grid
    `shape` (|J| <= 0 at any voxel of any frame) with all its frames smoothed by the first Gaussian
    width of `sigmas` (velocity-grid voxels) that leaves none folding; and (N, K) the width used
    (0: kept as drawn; NaN: still folding at the last width, which is kept). Smoothing is linear,
    so a monotone path (frames s_k r) stays one: s_k smooth(r)."""
    out = velocities  # copied only once a sequence is smoothed (the sampling chunk plans no extra copy)
    used = np.zeros(velocities.shape[:2], np.float32)
    if not len(sigmas):
        return out, used
    shape = tuple(int(s) for s in shape)
    for i, k in np.ndindex(*velocities.shape[:2]):
        if not _folds(jnp.asarray(velocities[i, k]), shape=shape, svf_cfg=svf_cfg):
            continue
        if out is velocities:
            out = np.array(velocities, copy=True)
        used[i, k] = np.nan
        for sigma in sigmas:
            smoothed = _smooth_frames(jnp.asarray(velocities[i, k]), float(sigma))
            out[i, k] = np.asarray(smoothed)
            if not _folds(smoothed, shape=shape, svf_cfg=svf_cfg):
                used[i, k] = sigma
                break
    return out, used


@functools.partial(jax.jit, static_argnames=("shape", "svf_cfg"))
def _folds(velocities: Float[Array, "F *c D"], *, shape: tuple[int, ...], svf_cfg: svf.SVFConfig) -> Bool[Array, ""]:
    """Whether any frame's map exp(upsample(v)) folds (or is not finite) on the image grid (frames one at a time)."""
    one = lambda v: jnp.any(~(grid.jacobian_determinant(field(v, shape, svf_cfg)) > 0))  # noqa: E731
    return jnp.any(jax.lax.map(one, velocities))


@functools.partial(jax.jit, static_argnames=("sigma",))
def _smooth_frames(velocities: Float[Array, "F *c D"], sigma: float) -> Float[Array, "F *c D"]:
    return jax.vmap(lambda v: grid.gaussian_smooth(v, sigma, ndim=v.ndim - 1))(velocities)


def training_sequences(
    velocities: np.ndarray, valid: np.ndarray, images: np.ndarray, ages: np.ndarray, cond_ids: np.ndarray, kind: str,
    scale: float | None = None,
) -> tuple[Sequences, float]:  # fmt: skip
    """Sequences from stage 1's SVFs (N, T, *c, D) with `valid` (N, T) (slot 0, the baseline, is
    never a frame), the baselines' `baseline_features` (N, *c, 1 + D) and every slot's age (N, T);
    returns them and the scale (the RMS of the real frames, or the given one)."""
    intervals = np.where(valid, ages - ages[:, :1], 1.0)[:, 1:].astype(np.float32)
    mask = valid[:, 1:]
    frames = to_frames(np.asarray(velocities[:, 1:], np.float32), intervals, kind)
    frames = np.where(mask.reshape(mask.shape + (1,) * (frames.ndim - 2)), frames, 0.0)
    if scale is None:
        scale = float(np.sqrt(np.mean(frames[mask] ** 2))) if mask.any() else 1.0
        scale = scale if scale > 0 else 1.0
    seq = Sequences(
        frames=(frames / scale).astype(np.float32),
        frame_mask=mask,
        image=np.asarray(images, np.float32),
        cond_ids=np.asarray(cond_ids, np.int32),
        ages=np.where(mask, ages[:, 1:], ages[:, :1]).astype(np.float32),
        intervals=intervals,
    )
    return seq, scale


# -- the network and its loss ----------------------------------------------------------------------
def network(cfg: DiffusionConfig, vocab: Vocabulary) -> Denoiser:
    return Denoiser(cfg.denoiser, len(vocab.groups), len(vocab.sexes))


def apply(params, net: Denoiser, x: Array, step: Array, seq: Sequences, cond_ids: Array) -> Array:
    """The network's prediction for noisy frames x (B, F, *c, D) at diffusion step `step` (scalar or (B,)),
    on a grid padded to the U-Net's multiple (zero for frames, edge for the image) and cropped back."""
    b, f, *spatial, d = x.shape
    padded = padded_shape(spatial, net.cfg.factor)
    pad = [(0, p - n) for n, p in zip(spatial, padded, strict=True)]
    xp = jnp.pad(x, [(0, 0), (0, 0), *pad, (0, 0)])
    image = jnp.pad(seq.image, [(0, 0), *pad, (0, 0)], mode="edge")
    steps = jnp.broadcast_to(jnp.reshape(step, (-1, 1)), (b, f)).astype(jnp.float32)
    scalars = jnp.stack([steps, seq.ages, seq.intervals], axis=-1)
    out = net.apply({"params": params}, xp, image, cond_ids, scalars, seq.frame_mask)
    return out[(slice(None), slice(None), *(slice(0, n) for n in spatial))]


def init_params(key: jax.Array, cfg: DiffusionConfig, vocab: Vocabulary, frames: int, coarse: Sequence[int]) -> Any:
    """Fresh denoiser parameters for sequences of `frames` frames on the velocity grid `coarse`."""
    return _init_params(key, cfg, vocab, int(frames), tuple(int(n) for n in coarse))


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))  # one compiled program, not one per layer shape
def _init_params(key: jax.Array, cfg: DiffusionConfig, vocab: Vocabulary, frames: int, coarse: tuple[int, ...]) -> Any:
    net = network(cfg, vocab)
    d = len(coarse)
    padded = padded_shape(coarse, cfg.denoiser.factor)
    x = jnp.zeros((1, frames, *padded, d))
    return net.init(key, x, jnp.zeros((1, *padded, 1 + d)), jnp.zeros((1, 2), jnp.int32), jnp.zeros((1, frames, 3)),
                    jnp.ones((1, frames), bool))["params"]  # fmt: skip


def denoising_loss(params, seq: Sequences, key: jax.Array, cfg: DiffusionConfig, net: Denoiser, sched: sch.Schedule,
                   unknown: Int[Array, "2"]) -> Float[Array, ""]:  # fmt: skip
    """The training loss on a batch of sequences: a random step per subject, noise, conditioning dropout,
    and the mean |prediction - target| (or squared) over the real frames' voxels."""
    b = seq.frames.shape[0]
    k_t, k_noise, k_drop = jax.random.split(key, 3)
    t = jax.random.randint(k_t, (b,), 0, cfg.diffusion_steps)
    noise = jax.random.normal(k_noise, seq.frames.shape)
    x_t = jax.vmap(lambda x0, ti, e: sch.q_sample(sched, x0, ti, e))(seq.frames, t, noise)
    drop = jax.random.bernoulli(k_drop, cfg.cond_dropout, (b,))
    cond = jnp.where(drop[:, None], unknown[None], seq.cond_ids)
    pred = apply(params, net, x_t, t, seq, cond)
    target = noise if cfg.prediction == "eps" else jax.vmap(lambda x0, ti, e: sch.v_target(sched, x0, ti, e))(seq.frames, t, noise)
    err = jnp.abs(pred - target) if cfg.loss == "l1" else (pred - target) ** 2
    w = seq.frame_mask.reshape(seq.frame_mask.shape + (1,) * (err.ndim - 2)).astype(err.dtype)
    return jnp.sum(err * w) / jnp.maximum(jnp.sum(w) * err[0, 0].size, 1.0)


def _optimizer(cfg: DiffusionConfig) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(cfg.learning_rate, weight_decay=1e-4))


class Training(NamedTuple):
    """The training state and the exponential moving average of the parameters (what sampling uses)."""

    train: TrainState
    ema: Any


def train_step(state: Training, data: Sequences, count: Int[Array, ""], step: Int[Array, ""], *, cfg: DiffusionConfig, vocab: Vocabulary,
               batch: int) -> tuple[Training, Array]:  # fmt: skip
    """One guarded AdamW step on `batch` subjects drawn from the first `count` of `data`
    (`engine.training.padded_scans`) with the engine's key for the step; the EMA follows a kept
    step. Returns the state and the step's loss (NaN once diverged)."""
    net, sched, tx = network(cfg, vocab), sch.schedule(cfg.diffusion_steps, cfg.schedule), _optimizer(cfg)
    unknown = jnp.asarray(vocab.unknown(1)[0])
    k_batch, k_loss = jax.random.split(step_key(jnp.int32(cfg.seed), "diffusion", jnp.int32(0), step))
    idx = jax.random.randint(k_batch, (batch,), 0, count)
    sub = jax.tree_util.tree_map(lambda a: a[idx], data)

    def loss(params, key, _):
        value = denoising_loss(params, sub, key, cfg, net, sched, unknown)
        return value, value

    train, value = loss_step(state.train, loss, tx, k_loss, step)
    decay = jnp.minimum(cfg.ema, (1.0 + step.astype(jnp.float32)) / (10.0 + step.astype(jnp.float32)))
    ema = jax.tree_util.tree_map(lambda e, p: jnp.where(train.alive, decay * e + (1 - decay) * p, e), state.ema, train.params)
    return Training(train, ema), jnp.where(train.alive, value, jnp.nan)


@functools.partial(jax.jit, static_argnames=("cfg", "vocab", "batch", "max_steps"), donate_argnums=0)
def train_block(state: Training, data: Sequences, count: Int[Array, ""], first_step: Int[Array, ""], num_steps: Int[Array, ""], *,
                cfg: DiffusionConfig, vocab: Vocabulary, batch: int, max_steps: int) -> tuple[Training, Array]:  # fmt: skip
    """`num_steps` (<= `max_steps`) `train_step`s from `first_step` in one compiled call
    (`engine.training.repeat_steps`); returns the state and the steps' losses (`max_steps`, zero past
    `num_steps`). `train` asks for `engine.training.block_steps(.., convolutional=True)` steps: one
    per call on the CPU, where this network's step ran 5-8x slower inside a compiled loop (0.7 s
    against 5.4 s per step, batch 8, 4 frames on a 29 x 35 grid, 2 cores; jax-ml/jax#12868)."""
    step = lambda s, i: train_step(s, data, count, first_step + i, cfg=cfg, vocab=vocab, batch=batch)  # noqa: E731
    if max_steps == 1:  # `train` never asks for 0 steps: the plain step, without the guard of a traced length
        return repeat_steps(step, state, 1)
    return repeat_steps(step, state, num_steps, max_steps)


def _initial(cfg: DiffusionConfig, vocab: Vocabulary, frames: int, coarse: tuple[int, ...]) -> Training:
    params = init_params(jax.random.fold_in(jax.random.key(cfg.seed), 0), cfg, vocab, frames, coarse)
    return Training(init_state(params, _optimizer(cfg)), jax.tree_util.tree_map(jnp.copy, params))  # own buffers: the state is donated


def batch_size(cfg: DiffusionConfig, vocab: Vocabulary, data: Sequences, budget: Budget) -> int:
    """Subjects per training step under `budget` (at most `cfg.batch_size`), the data held on the device."""
    n, frames, *coarse = data.frames.shape[:-1]
    state = jax.eval_shape(lambda: _initial(cfg, vocab, frames, tuple(coarse)))
    held = scan_slots(n) * sum(np.asarray(x)[0].nbytes for x in data)  # as `padded_scans` places it
    shapes = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), data)
    program = Program(lambda b: train_block.trace(state, shapes, jnp.int32(n), jnp.int32(0), jnp.int32(1), cfg=cfg, vocab=vocab, batch=b, max_steps=1),
                      ("diffusion-train", cfg, vocab, n, frames, tuple(coarse)))  # fmt: skip
    return plan_batch("diffusion: training", "subjects per step", budget, cfg.batch_size,
                      lambda b, exact: program(b, exact) + held, compile_bytes=program.compile_bytes).sizes["subjects per step"]  # fmt: skip


def train(
    data: Sequences, cfg: DiffusionConfig, vocab: Vocabulary, checkpoint_dir: str | os.PathLike | None = None, resume: bool = False,
    progress: Callable[[int, int, float], None] | None = None, steps_per_call: int | None = None, batch: int | None = None,
    budget: Budget | None = None,
) -> tuple[Any, np.ndarray]:  # fmt: skip
    """Train the denoiser on `data`; returns (EMA parameters, per-step losses).

    Steps run `steps_per_call` per compiled call (`train_block`; default
    `engine.training.block_steps(50, convolutional=True)`: one on the CPU, 50 on an accelerator),
    and their losses are read back at most 50 steps at a time; checkpoints (orbax) every
    `cfg.checkpoint_every` steps under `checkpoint_dir`; with `resume`, training goes on
    from the latest one and ends where an uninterrupted run would (every step's batch,
    diffusion steps and noise come from the engine's key for that step). `batch`: subjects per
    step (default: planned under `budget`; a resumed run must pass the one it planned).
    """
    n, frames, *coarse = data.frames.shape[:-1]
    if n < 1 or not np.any(data.frame_mask):
        raise ValueError("no training sequence has a follow-up frame")
    batch = batch or batch_size(cfg, vocab, data, budget or Budget.resolve())
    block = steps_per_call or block_steps(50, convolutional=True)
    state = _initial(cfg, vocab, frames, tuple(coarse))
    padded, subjects = padded_scans(*(np.asarray(a) for a in data))
    device_data = Sequences(*padded)
    history = np.zeros(cfg.steps, np.float32)
    ckpt = StateCheckpoints(checkpoint_dir) if checkpoint_dir is not None else None
    step = 0
    try:
        if ckpt is not None and resume and (latest := ckpt.latest_meta()) is not None:
            saved, meta = latest
            restored = ckpt.restore(saved, {"state": state, "history": history})
            state, history, step = restored["state"], np.asarray(restored["history"]), int(meta["step"])
        while step < cfg.steps:
            k = min(max(block, 50), cfg.steps - step, cfg.checkpoint_every - step % cfg.checkpoint_every)
            losses = []
            for first in range(step, step + k, block):  # dispatched asynchronously; the losses are read once
                count = min(block, step + k - first)  # not `n`, the subject count above
                state, values = train_block(state, device_data, subjects, jnp.int32(first), jnp.int32(count), cfg=cfg, vocab=vocab, batch=batch, max_steps=block)
                losses.append(values[:count])
            history[step : step + k] = np.asarray(jnp.concatenate(losses))
            step += k
            if ckpt is not None and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
                ckpt.save(step, {"state": state, "history": history}, {"step": step, "batch": batch})
            if progress is not None:
                progress(step, cfg.steps, float(history[step - 1]))
    finally:
        if ckpt is not None:
            ckpt.close()
    return jax.device_get(state.ema), history


# -- sampling ------------------------------------------------------------------------------------
def sample_key(seed: int, subject: Int[Array, ""], sample: Int[Array, ""]) -> jax.Array:
    """The key of one subject's one sample (independent of what else is sampled with it)."""
    return jax.random.fold_in(step_key(jnp.int32(seed), "diffusion", subject, sample), 1)


@functools.partial(jax.jit, static_argnames=("cfg", "vocab"))
def sample_frames(params, seq: Sequences, subjects: Int[Array, " B"], samples: Int[Array, " B"], *, cfg: DiffusionConfig,
                  vocab: Vocabulary) -> Float[Array, "B F *c D"]:  # fmt: skip
    """Normalised frames drawn for B (subject, sample) pairs: `seq` gives each row's conditions (its
    `frames` only the shape), `subjects` / `samples` the keys of its starting noise."""
    net, sched = network(cfg, vocab), sch.schedule(cfg.diffusion_steps, cfg.schedule)
    x_T = jax.vmap(lambda s, k: jax.random.normal(sample_key(cfg.seed, s, k), seq.frames.shape[1:]))(subjects, samples)
    x_T = jnp.where(seq.frame_mask.reshape(seq.frame_mask.shape + (1,) * (x_T.ndim - 2)), x_T, 0.0)
    unknown = jnp.asarray(vocab.unknown(seq.frames.shape[0]))

    def cond(x, t):
        return apply(params, net, x, t, seq, seq.cond_ids)

    def uncond(x, t):
        return apply(params, net, x, t, seq, unknown)

    model = cond if cfg.guidance == 1.0 else sch.guided(cond, uncond, cfg.guidance)
    timesteps = sch.sample_timesteps(cfg.diffusion_steps, cfg.sample_steps)
    clip = cfg.clip or None
    if cfg.sampler == "ddim":
        return sch.ddim(model, x_T, sched, timesteps, kind=cfg.prediction, clip=clip)
    return sch.dpm_solver_2m(model, x_T, sched, timesteps, kind=cfg.prediction, clip=clip)


def sampling_batch(params, cfg: DiffusionConfig, vocab: Vocabulary, frames: int, coarse: tuple[int, ...], budget: Budget, upper: int) -> int:
    """(subject, sample) pairs per sampling program under `budget`."""
    params_shape = jax.eval_shape(lambda: params)
    s = jax.ShapeDtypeStruct
    d = len(coarse)

    def trace(b):
        seq = Sequences(s((b, frames, *coarse, d), jnp.float32), s((b, frames), jnp.bool_), s((b, *coarse, 1 + d), jnp.float32),
                        s((b, 2), jnp.int32), s((b, frames), jnp.float32), s((b, frames), jnp.float32))  # fmt: skip
        return sample_frames.trace(params_shape, seq, s((b,), jnp.int32), s((b,), jnp.int32), cfg=cfg, vocab=vocab)

    program = Program(trace, ("diffusion-sample", cfg, vocab, frames, coarse))
    return plan_batch("diffusion: sampling", "sequences per program", budget, upper, program).sizes["sequences per program"]


def sample_sequences(params, seq: Sequences, subjects: np.ndarray, num_samples: int, cfg: DiffusionConfig, vocab: Vocabulary,
                     budget: Budget | None = None) -> np.ndarray:  # fmt: skip
    """`num_samples` normalised frame sequences per subject: (N, K, F, *c, D); `subjects` (N,) are the
    subjects' global indices (they key the draws, so a subject's samples do not depend on the batch)."""
    n, frames, *coarse, d = seq.frames.shape
    rows = [(i, k) for i in range(n) for k in range(num_samples)]
    b = sampling_batch(params, cfg, vocab, frames, tuple(coarse), budget or Budget.resolve(), min(len(rows), 64))
    out = np.zeros((n, num_samples, frames, *coarse, d), np.float32)
    for start in range(0, len(rows), b):
        part = rows[start : start + b]
        pad = part + [part[-1]] * (b - len(part))  # one program for every batch
        who = np.array([i for i, _ in pad])
        sub = jax.tree_util.tree_map(lambda a, who=who: jnp.asarray(np.asarray(a)[who]), seq)
        got = np.asarray(sample_frames(params, sub, jnp.asarray(subjects[who], jnp.int32), jnp.asarray([k for _, k in pad], jnp.int32),
                                       cfg=cfg, vocab=vocab))  # fmt: skip
        for r, (i, k) in enumerate(part):
            out[i, k] = got[r]
    return out


def conditions(baselines: np.ndarray, baseline_ages: np.ndarray, target_ages: np.ndarray, cond_ids: np.ndarray, coarse: Sequence[int],
               dim: int) -> Sequences:  # fmt: skip
    """Sequences to sample: baselines (N, *s) at `baseline_ages` (N,), frames at `target_ages` (N, F)
    (NaN where a subject has fewer targets); every target must be after its baseline."""
    target_ages = np.asarray(target_ages, np.float32)
    mask = np.isfinite(target_ages)
    intervals = np.where(mask, target_ages - baseline_ages[:, None], 1.0).astype(np.float32)
    if np.any(intervals <= 0):
        raise ValueError("every requested age must be after the subject's baseline age")
    n, f = target_ages.shape
    return Sequences(
        frames=np.zeros((n, f, *coarse, dim), np.float32),
        frame_mask=mask,
        image=baseline_features(baselines, coarse),
        cond_ids=np.asarray(cond_ids, np.int32),
        ages=np.where(mask, target_ages, baseline_ages[:, None]).astype(np.float32),
        intervals=intervals,
    )


# -- frames to scans -----------------------------------------------------------------------------
def field(velocity: Float[Array, "*c D"], shape: Sequence[int], svf_cfg: svf.SVFConfig) -> Float[Array, "*s D"]:
    """The map of an effective (already smoothed, as stage 1 hands it over) velocity on the image grid:
    exp(upsample(v)) by scaling and squaring; `grid.warp(baseline, u)` is the follow-up."""
    return grid.integrate_velocity(svf.upsample(velocity, shape), svf_cfg.squaring_steps)


@functools.partial(jax.jit, static_argnames=("shape", "svf_cfg"))
def _warp_one(velocity, baseline, labels, *, shape, svf_cfg):
    u = field(velocity, shape, svf_cfg)
    return grid.warp(baseline, u), grid.warp_labels(labels, u), grid.jacobian_determinant(u)


def scans_from_velocities(velocities: np.ndarray, baseline: np.ndarray, labels: np.ndarray | None, svf_cfg: svf.SVFConfig
                          ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:  # fmt: skip
    """One subject's SVFs (M, *c, D) -> (scans (M, *s), carried labels (M, *s) or None, |J| (M, *s))."""
    shape = tuple(baseline.shape)
    lab = jnp.asarray(labels if labels is not None else np.zeros(shape, np.int32))
    out = [_warp_one(jnp.asarray(v), jnp.asarray(baseline), lab, shape=shape, svf_cfg=svf_cfg) for v in velocities]
    images, labs, dets = (np.stack([np.asarray(o[k]) for o in out]) for k in range(3))
    return images, (labs if labels is not None else None), dets
