"""Registering a cohort: patch sampling and the vmapped, jit-compiled training program.

Training goes through the engine (`engine.training`): the per-subject state is its
`TrainState` (parameters, AdamW state, and divergence bookkeeping: a subject whose loss
turns non-finite is frozen and reported), draws are keyed by (seed, "register", subject,
step), and the same chunks, sharding and checkpoints apply as in cohort fitting.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, Int

from longbrain_jax.config import check_literals
from longbrain_jax.engine.training import STAGES, TrainState, init_state, train_chunk_steps
from longbrain_jax.grid import voxel_to_normalised
from longbrain_jax.registration import network as net
from longbrain_jax.registration.losses import LossConfig, subject_loss


@dataclasses.dataclass(frozen=True)
class RegistrationConfig:
    """Cohort registration.

    **Arguments:**

    - `network`: the displacement INR.
    - `loss`: loss weights.
    - `steps`: AdamW steps per subject (paper: 90 epochs of 2,000 patches in batches of 12).
    - `learning_rate`: AdamW learning rate (paper: 4e-5).
    - `cosine_decay`: decay the learning rate to 1% of itself along a cosine over
      `steps` (False: constant, as in the paper). The decay removes most of the
      step-to-step jitter of the field, which matters at the sub-voxel scale of
      longitudinal change.
    - `weight_decay`: AdamW weight decay.
    - `patches`, `patch_size`: patches per step and their edge in voxels (paper: 12, 12).
    - `tissue_patches`: draw patches on the head (foreground) of the baseline
      (`sample_patches`); False draws them uniformly as the paper's code does on
      skull-stripped volumes.
    - `holdout`: scans left out of training and kept for evaluation, as in cohort
      fitting ("none", "extrapolation", "interpolation_extrapolation").
    - `chunk_size`: most subjects trained together; None: as many as the memory budget
      allows (`registration.cohort.plan_chunk`).
    - `steps_per_call`, `checkpoint_every`: as in cohort fitting; `checkpoint_every` None
      checkpoints about every quarter of `steps`, in whole blocks (`checkpoint_interval`).
    - `seed`: PRNG seed of every draw.
    """

    network: net.DisplacementConfig = net.DisplacementConfig()
    loss: LossConfig = LossConfig()
    steps: int = 2000
    learning_rate: float = 4e-5
    cosine_decay: bool = True
    weight_decay: float = 1e-4
    patches: int = 12
    patch_size: int = 12
    tissue_patches: bool = True
    holdout: Literal["none", "extrapolation", "interpolation_extrapolation"] = "none"
    chunk_size: int | None = None
    steps_per_call: int = 50
    checkpoint_every: int | None = None
    seed: int = 0

    def __post_init__(self):
        check_literals(self)
        if self.steps < 0 or self.learning_rate <= 0 or self.patches < 1 or self.patch_size < 1:
            raise ValueError(f"need steps >= 0, learning_rate > 0, patches >= 1, patch_size >= 1: {self}")
        if (self.chunk_size or 1) < 1 or self.steps_per_call < 1 or (self.checkpoint_every or self.steps_per_call) % self.steps_per_call:
            raise ValueError("chunk_size >= 1, and checkpoint_every a multiple of steps_per_call, are needed")

    @property
    def checkpoint_interval(self) -> int:
        """Steps between checkpoints: `checkpoint_every`, or about a quarter of `steps` in whole blocks."""
        block = self.steps_per_call
        return self.checkpoint_every or max(block, (self.steps // 4) // block * block)

    def optimizer(self) -> optax.GradientTransformation:
        lr = optax.cosine_decay_schedule(self.learning_rate, max(self.steps, 1), alpha=0.01) if self.cosine_decay else self.learning_rate
        return optax.adamw(lr, weight_decay=self.weight_decay)


#: Named starting points for `longbrain register --preset NAME` (`RegistrationConfig` fields given as
#: options beside it still apply). Figures: benchmarks/RESULTS.md, "What closes the 3D registration gap
#: to ANTs" and "The longitudinal 3D benchmark at w0 10".
PRESETS: dict[str, RegistrationConfig] = {
    # the paper's settings (the defaults): width 256, 5 SIREN layers, w0 30, 2000 steps at lr 4e-5,
    # 12 patches of 12^3; sized for an accelerator
    "paper": RegistrationConfig(),
    # 3D scans at about 3 mm over a decade or more of follow-up on a few CPU cores: width 32, 2 hidden
    # layers, w0 10 (w0 3 is too smooth for structures a few voxels wide), 3000 steps at lr 2e-3, 16
    # patches of 9^3, gamma 0.1 and the curvature term. Measured on simulated 3D pairs 20 years apart:
    # |J| error 0.168 of a 0.453 change (ANTs SyN[s] 0.140), monotone 0.986, no folding, about 15
    # minutes per pair (one follow-up) on 2 busy cores. For follow-ups of a few years, `--time-scale 1`.
    "cpu-3mm": RegistrationConfig(
        network=net.DisplacementConfig(width=32, hidden_layers=2, time_features=8, w0=10.0, time_scale=10.0),
        loss=LossConfig(monotonic=0.1, curvature=1e8), steps=3000, learning_rate=2e-3, patches=16, patch_size=9,
    ),
}


def foreground_threshold(image: Float[Array, "*spatial"]) -> Float[Array, ""]:
    """The head's intensity floor: a quarter of the way from the image's 1st to its 99th percentile.

    A sort of the whole image: compute it once per subject, not once per step."""
    lo, hi = jnp.percentile(image, jnp.array([1.0, 99.0]))
    return lo + 0.25 * (hi - lo)


def sample_patches(
    key: Array,
    spatial_shape: tuple[int, ...],
    num_patches: int,
    size: int,
    image: Float[Array, "*spatial"] | None = None,
    candidates: int = 4,
    threshold: Float[Array, ""] | None = None,
) -> Float[Array, "B N D"]:
    """Normalised coordinates of the voxel centres of `num_patches` random cubes of edge `size`.

    With `image`, `candidates` x `num_patches` cubes are drawn and `num_patches` of those
    whose centres lie in the foreground kept at random, so patches fall on the head
    (tissue and CSF alike) rather than on the empty background around it, where NCC
    compares noise with noise. Foreground: intensity above `threshold` (default
    `foreground_threshold(image)`).
    """
    shape = jnp.asarray(spatial_shape)
    edge = jnp.minimum(size, shape)
    drawn = num_patches * (candidates if image is not None else 1)
    k_corner, k_pick = jax.random.split(key)
    corner = jax.random.randint(k_corner, (drawn, len(spatial_shape)), 0, shape - edge + 1)
    if image is not None:
        threshold = foreground_threshold(image) if threshold is None else threshold
        centre = jnp.minimum(corner + edge // 2, shape - 1)
        inside = image[tuple(centre[:, d] for d in range(len(spatial_shape)))] > threshold
        score = inside.astype(jnp.float32) + 0.5 * jax.random.uniform(k_pick, (drawn,))
        corner = corner[jax.lax.top_k(score, num_patches)[1]]
    offsets = jnp.stack(jnp.meshgrid(*[jnp.arange(size)] * len(spatial_shape), indexing="ij"), -1).reshape(-1, len(spatial_shape))
    index = jnp.minimum(corner[:, None, :] + offsets[None], shape - 1).astype(jnp.float32)
    return voxel_to_normalised(index, spatial_shape)


def subject_loss_of(volumes, times, observed, cfg: RegistrationConfig, threshold=None):
    """One subject's loss `(params, key, step) -> (total, terms)`: patches drawn on its baseline
    (`threshold`: its `foreground_threshold`, computed once outside the steps)."""

    def loss(params, key, step):
        k_patch, k_time = jax.random.split(key)
        image = volumes[0] if cfg.tissue_patches else None
        patches = sample_patches(k_patch, volumes.shape[1:], cfg.patches, cfg.patch_size, image=image, threshold=threshold)
        terms = subject_loss(params, volumes, times, observed, patches, k_time, cfg.network, cfg.loss)
        return terms.total, None

    return loss


@functools.partial(jax.jit, static_argnames=("num_steps", "cfg"), donate_argnums=0)
def registration_block(
    state: TrainState,
    volumes: Float[Array, "n T *spatial"],
    times: Float[Array, "n T"],
    observed: Array,
    subjects: Int[Array, " n"],
    seed: Int[Array, ""],
    first_step: Int[Array, ""],
    *,
    num_steps: int,
    cfg: RegistrationConfig,
) -> TrainState:
    """`num_steps` steps for a chunk of subjects (leading axis; shard it over devices)."""
    thresholds = jax.vmap(foreground_threshold)(volumes[:, 0])  # once per block: a sort of each baseline
    loss_of = lambda v, t, o, f: subject_loss_of(v, t, o, cfg, f)  # noqa: E731
    return train_chunk_steps(state, loss_of, cfg.optimizer(), seed, "register", subjects, first_step, num_steps, volumes, times, observed,
                             thresholds)[0]  # fmt: skip


@functools.partial(jax.jit, static_argnums=(0, 1))
def init_states(cfg: RegistrationConfig, n: int) -> TrainState:
    """Fresh states of `n` subjects, all from the same initial network (keyed by the seed)."""
    params = net.init(jax.random.fold_in(jax.random.key(cfg.seed), STAGES["register"]), cfg.network)
    stacked = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (n, *x.shape)), params)
    return jax.vmap(lambda p: init_state(p, cfg.optimizer()))(stacked)


def register(
    volumes: np.ndarray, times: np.ndarray, observed: np.ndarray, cfg: RegistrationConfig, steps_per_call: int = 50
) -> TrainState:
    """Register every subject (leading axis) of an in-memory chunk; returns the final states."""
    n = volumes.shape[0]
    state = init_states(cfg, n)
    args = (jnp.asarray(volumes), jnp.asarray(times), jnp.asarray(observed), jnp.arange(n, dtype=jnp.int32), jnp.int32(cfg.seed))
    step = 0
    while step < cfg.steps:
        k = min(steps_per_call, cfg.steps - step)
        state = registration_block(state, *args, jnp.int32(step), num_steps=k, cfg=cfg)
        step += k
    return state
