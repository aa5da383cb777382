# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 7. Your own per-subject model, through the engine
#
# A new model fitted to every subject of a cohort, vmapped over the subjects of a chunk,
# sharded over the devices, checkpointed and resumable, in a few dozen lines: give the
# engine a loss and a `ChunkProgram`; `engine.chunks.run_in_chunks` does the rest (the
# INR fit and the registration run through the same loop).
#
# The model here: a **linear-trend INR**, I(x, t) = a(x) + t b(x), one small SIREN per
# subject with two outputs: the baseline anatomy a and its yearly change b. Its b maps
# are a per-subject atrophy image, learned from all of a subject's scans at once.
#
# **Time:** about 1 minute on 2 CPU cores (2D at 4 mm, 8 subjects, 300 steps).

# %%
import functools
import os
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

from longbrain_jax import grid
from longbrain_jax.engine import sharding
from longbrain_jax.engine.checkpoint import StateCheckpoints
from longbrain_jax.engine.chunks import ChunkProgram, load_chunks, run_in_chunks
from longbrain_jax.engine.training import init_state, train_chunk_steps
from longbrain_jax.io import read_bids
from longbrain_jax.simulate import SimulationConfig, simulate_cohort

SIZE = os.environ.get("LONGBRAIN_NOTEBOOK_SIZE", "small")  # "test": every cell with the fewest steps (the test suite)
small = SIZE != "accelerator"
if small:  # four virtual CPU devices, so the chunk's subject axis is really split (before JAX starts its backend)
    jax.config.update("jax_num_cpu_devices", 4)
work = Path(tempfile.mkdtemp(prefix="longbrain-nb7-"))
sim = SimulationConfig(num_subjects=8 if small else 128, ndim=2 if small else 3, resolution_mm=4.0 if small else 2.0,
                       chunk_size=8 if small else None, seed=7)  # fmt: skip
cohort = read_bids(simulate_cohort(work / "bids", sim))
WIDTH, SAMPLES, W0 = (64, 512, 10.0) if small else (256, 8192, 10.0)
STEPS = {"test": 100, "small": 300}.get(SIZE, 2000)
STAGE = 100  # our own stage number, folded into every PRNG key (engine.training.STAGES holds the package's)

# %% [markdown]
# ## The model and its loss: pure functions of one subject

# %%
def init_params(key, ndim: int, width: int = WIDTH) -> list[dict]:
    """A SIREN x -> (a, b): three sine layers and a linear output (the usual SIREN initialisation)."""
    sizes = [ndim, width, width, width, 2]
    params = []
    for i, (m, n) in enumerate(zip(sizes[:-1], sizes[1:])):
        key, k = jax.random.split(key)
        bound = 1.0 / m if i == 0 else np.sqrt(6.0 / m) / W0
        params.append({"w": jax.random.uniform(k, (m, n), minval=-bound, maxval=bound), "b": jnp.zeros(n)})
    return params


def trend(params, x):
    """(a(x), b(x)) at points x (P, ndim) in normalised coordinates: baseline intensity and change per decade."""
    h = x
    for layer in params[:-1]:
        h = jnp.sin(W0 * (h @ layer["w"] + layer["b"]))
    out = h @ params[-1]["w"] + params[-1]["b"]
    return out[:, 0], out[:, 1]


def loss_of(coords, volumes, decades, mask):
    """One subject's loss: `volumes` (T, V) flat scans, `decades` (T,) since baseline, `mask` (T,) real scans."""
    def loss(params, key, step):
        idx = jax.random.randint(key, (SAMPLES,), 0, coords.shape[0])
        a, b = trend(params, coords[idx])
        residual = a[None] + decades[:, None] * b[None] - volumes[:, idx]
        return jnp.sum(jnp.where(mask[:, None], residual**2, 0.0)) / (jnp.sum(mask, dtype=jnp.float32) * SAMPLES), None
    return loss

# %% [markdown]
# ## The chunk program: data, initial state, a compiled block of steps, results
#
# `train_chunk_steps` vmaps one guarded optimiser step over the chunk's subjects and
# scans a block of steps with no host round trip; each subject's draws come from
# `fold_in(seed, stage, subject, step)`, so a resumed or re-sharded run draws the same
# voxels as an uninterrupted one. A subject whose loss turns non-finite stops alone.

# %%
coords = grid.normalised_grid(cohort.spatial_shape).reshape(-1, cohort.ndim)
tx = optax.adam(1e-3)
seed = jnp.int32(0)


def prepare(chunk, ids, n):
    decades = np.where(chunk.mask, chunk.ages - chunk.ages[:, :1], 0.0) / 10.0
    data = (chunk.volumes.reshape(*chunk.mask.shape, -1).astype(np.float32), decades.astype(np.float32), chunk.mask)
    return sharding.pad_subjects(data, n)


def init(n):
    return jax.vmap(lambda k: init_state(init_params(k, cohort.ndim), tx))(jax.random.split(jax.random.key(1), n))


@functools.partial(jax.jit, static_argnums=4)
def block(states, data, subjects, first_step, num_steps):
    loss_of_subject = lambda volumes, decades, mask: loss_of(coords, volumes, decades, mask)  # noqa: E731
    return train_chunk_steps(states, loss_of_subject, tx, seed, STAGE, subjects, first_step, num_steps, *data)[0]


program = ChunkProgram(
    stage="linear-trend", steps=STEPS, steps_per_call=25, checkpoint_every=50, offset=0, prepare=prepare, init=init, block=block,
    finish=lambda state, data, n_real: {"params": jax.tree_util.tree_map(lambda x: np.asarray(x)[:n_real], state.params),
                                        "loss": np.asarray(state.loss)[:n_real]},
    status=lambda state, n_real: {"loss": float(np.nanmedian(np.asarray(state.loss)[:n_real]))},
)  # fmt: skip
mesh = sharding.subject_mesh()  # every device; the chunk's subject axis is split over them
print(f"{len(mesh.devices.flat)} device(s), {cohort.num_subjects} subjects")

# %% [markdown]
# ## Run, interrupt, resume
#
# A progress callback that raises stops the run like a kill would; running again in the
# same folder resumes from the last checkpoint, and the result equals an uninterrupted
# run's exactly.

# %%
class Stop(Exception):
    """Raised by the progress callback: the run stops as if killed."""


def run(folder: Path, stop_at: int | None = None) -> dict:
    def progress(event):
        if stop_at is not None and event.get("step") == stop_at:
            raise Stop(f"stopped at step {stop_at}")
    ckpt = StateCheckpoints(folder / "checkpoints")
    try:
        run_in_chunks(cohort, program, folder, ckpt, mesh, chunk_size=4, progress=progress)
    finally:
        ckpt.close()
    target = lambda n: {"params": jax.tree_util.tree_map(lambda x: np.zeros((n, *x.shape), x.dtype), init_params(jax.random.key(0), cohort.ndim)),  # noqa: E731
                        "loss": np.zeros(n, np.float32)}
    return load_chunks(folder, cohort.num_subjects, 4, mesh, target)


try:
    run(work / "resumed", stop_at=50)
except Stop as stop:
    print("interrupted:", stop)
resumed = run(work / "resumed")
whole = run(work / "whole")
difference = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree_util.tree_leaves(resumed), jax.tree_util.tree_leaves(whole)))
print(f"resumed vs uninterrupted: max |difference| = {difference}; final loss per subject: {np.round(whole['loss'], 4)}")

# %% [markdown]
# ## What the model learned
#
# b(x), the change per decade, averaged over each group (blue: intensity falls,
# e.g. where ventricles widen into tissue; red: rises).

# %%
fig, axes = plt.subplots(1, 3, figsize=(9, 3))
maps = {}
for g in ("healthy", "dementia"):
    rows = [i for i, gi in enumerate(cohort.groups) if gi == g]
    bs = [trend(jax.tree_util.tree_map(lambda x, i=i: x[i], whole["params"]), coords)[1] for i in rows]
    maps[g] = np.mean([np.asarray(b).reshape(cohort.spatial_shape) for b in bs], axis=0)
axes[0].imshow(np.rot90(cohort.volumes[0, 0]), cmap="gray")
axes[0].set_title("a baseline scan", fontsize=9)
for ax, g in zip(axes[1:], maps):
    im = ax.imshow(np.rot90(maps[g]), cmap="RdBu_r", vmin=-0.3, vmax=0.3)
    ax.set_title(f"b(x), {g} (per decade)", fontsize=9)
for ax in axes:
    ax.axis("off")
fig.colorbar(im, ax=axes[1:].tolist(), shrink=0.8)
plt.show()

# %% [markdown]
# To make it a method of the package: its config as a frozen dataclass, a stage number
# in `engine.training.STAGES`, batch sizes from `memory.plan_batch`, and `run` /
# `write` functions (`docs/architecture.md`, "Adding a method").
