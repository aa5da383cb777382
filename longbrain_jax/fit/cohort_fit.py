"""Fit a whole cohort of spatiotemporal INRs: shared initialisation, then every subject at once.

`fit_cohort(source, out, cfg)`:

1. theta*: one INR fitted across subjects (`FitConfig.shared`, a pool of subjects
   loaded once), as the paper does before per-subject fitting.
2. Per-subject fine-tuning from theta* for the whole cohort, in chunks of
   `chunk_size` subjects streamed from disk (the next chunk loads while the current
   one trains). Within a chunk one jit-compiled program trains every subject
   (vmapped), its subject axis sharded over all devices of the mesh (padded to a
   multiple of the device count; padded subjects have no training scans and weight 0).
3. Each finished chunk is scored (PSNR and SSIM of every scan: training, and held
   out for interpolation or extrapolation when `holdout` asks) and stored.

Training state is checkpointed with orbax every `checkpoint_every` steps; with
`resume=True` a killed run continues from its last checkpoint and ends with the same
parameters as an uninterrupted run (every draw is keyed by seed, subject and step).

Output folder::

    OUT/config.json          FitConfig and the data source
    OUT/params/              stacked cohort parameters (orbax; leading subject axis)
    OUT/weights.npz          flat per-stream weight table (P_space, P_time, P_com) per subject
    OUT/subjects.tsv         per subject: group, scans, status, final loss, median PSNR/SSIM
    OUT/metrics.tsv          per scan: age, role (train/interpolation/extrapolation), PSNR, SSIM
    OUT/figures/reconstruction.png
    OUT/work/                checkpoints and finished chunks (removed when the fit completes)
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from longbrain_jax.cohort import ROLES, Cohort, scan_roles
from longbrain_jax.config import config_to_dict, write_config
from longbrain_jax.engine import sharding
from longbrain_jax.engine.checkpoint import StateCheckpoints, load_tree, save_tree
from longbrain_jax.engine.chunks import ChunkProgram, load_chunks, run_in_chunks
from longbrain_jax.engine.rundir import prepare_output_dir, run_mesh, run_size
from longbrain_jax.engine.training import TrainState, init_state
from longbrain_jax.errors import InputError
from longbrain_jax.fit.config import FitConfig
from longbrain_jax.fit.evaluate import cohort_scores
from longbrain_jax.fit.outputs import write_fit_outputs
from longbrain_jax.fit.plan import plan_block, plan_chunk, plan_pool
from longbrain_jax.fit.sampling import prepare_subjects
from longbrain_jax.fit.train import StageConfig, finetune_block, shared_block
from longbrain_jax.inr import spatiotemporal as st
from longbrain_jax.memory import Budget, release_memory, within_budget


class CohortSource(Protocol):
    """A `Cohort` or a `BIDSDataset`: subject tables in memory, voxels loaded by `select`."""

    ages: np.ndarray
    mask: np.ndarray
    affines: np.ndarray
    subject_ids: tuple[str, ...]
    groups: tuple[str, ...]
    spatial_shape: tuple[int, ...]

    @property
    def num_subjects(self) -> int: ...

    @property
    def max_scans(self) -> int: ...

    def select(self, indices: np.ndarray) -> Cohort: ...


@dataclasses.dataclass
class FitResult:
    """What `fit_cohort` returns (also written to OUT)."""

    params: st.Params  # stacked, leading subject axis, host arrays
    subject_ids: tuple[str, ...]
    groups: tuple[str, ...]
    ages: np.ndarray  # (N, T)
    roles: np.ndarray  # (N, T) see `scan_roles`
    psnr: np.ndarray  # (N, T) NaN in padding
    ssim: np.ndarray  # (N, T)
    loss: np.ndarray  # (N,) final sampled training loss (NaN if diverged)
    diverged_at: np.ndarray  # (N,) step of divergence, -1 if none

    def median(self, score: str, role: str) -> float:
        """Median of `score` ("psnr"/"ssim") over scans of `role` of subjects that did not diverge."""
        values = getattr(self, score)[(self.roles == ROLES.index(role)) & (self.diverged_at[:, None] < 0)]
        return float(np.median(values)) if values.size else float("nan")


# -- data -------------------------------------------------------------------------------
def _chunk_arrays(cohort: Cohort, roles: np.ndarray, t_max: int, cfg: FitConfig):
    """Host arrays for one chunk, T padded to the source's T_max (the chunk's own may be shorter)."""
    volumes = sharding.pad_scans(cohort.volumes, t_max)
    ages = sharding.pad_scans(cohort.ages, t_max)
    roles = sharding.pad_scans(roles, t_max)
    times = np.where(roles > 0, (ages - cfg.inr.age_center) / cfg.inr.age_scale, 0.0).astype(np.float32)
    data = prepare_subjects(volumes, times, roles == 1, cfg.foreground_threshold)
    return data, ages


@functools.partial(jax.jit, static_argnums=1)
def _init_states(params: st.Params, stage: StageConfig) -> TrainState:
    return jax.vmap(lambda p: init_state(p, stage.optimizer()))(params)


# -- the run -----------------------------------------------------------------------------
@within_budget
def fit_cohort(
    source: CohortSource,
    out: str | os.PathLike,
    cfg: FitConfig = FitConfig(),
    *,
    resume: bool = False,
    overwrite: bool = False,
    mesh: jax.sharding.Mesh | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    source_description: str = "",
    budget: Budget | None = None,
) -> FitResult:
    """Fit every subject of `source` and write the results to `out` (see the module docstring).

    **Arguments:**

    - `source`: a `Cohort` (in memory) or a `BIDSDataset` (`io.scan_bids`; streamed).
      Intensities should be scaled to [-1, 1] (the readers' default).
    - `out`: the output folder.
    - `cfg`: see `FitConfig`.
    - `resume`: continue the run in `out` from its last checkpoint (its config must match).
    - `overwrite`: replace an existing `out`.
    - `mesh`: a one-axis mesh over the devices to shard subjects on (default: `engine.rundir.run_mesh`: every device, or as many as a smaller cohort has subjects; a resumed run keeps its own).
    - `progress`: called after every compiled call with a dict of stage, step, total,
      loss and median PSNR of the sampled points (an exception raised there stops
      the run like a kill would; the last checkpoint survives).
    - `source_description`: recorded in config.json (e.g. the dataset path).
    - `budget`: the memory budget the pool, chunk and block sizes are planned from
      (`fit.plan`; default: `Budget.resolve()`); a resumed run keeps its first sizes.
    """
    out = Path(out)
    if cfg.inr.ndim != len(source.spatial_shape):
        raise InputError(out, f"INR ndim {cfg.inr.ndim} does not match the {len(source.spatial_shape)}D data")
    record = {"config": config_to_dict(cfg), "source": source_description, "subjects": list(source.subject_ids)}
    prepare_output_dir(out, record, resume, overwrite)
    try:
        return _fit_into(out, source, cfg, mesh, progress, source_description, budget)
    except InputError:  # a broken image found while streaming voxels: leave no half-written run behind
        if not resume and jax.process_index() == 0:
            shutil.rmtree(out, ignore_errors=True)
        raise


def _fit_into(out: Path, source: CohortSource, cfg: FitConfig, mesh, progress, source_description: str, budget: Budget | None) -> FitResult:
    """`fit_cohort` once its output folder is prepared."""
    if jax.process_index() == 0:
        write_config(cfg, out / "config.json", source=source_description, subjects=list(source.subject_ids))
    work = out / "work"
    mesh = mesh or run_mesh(work, source.num_subjects)
    shape, devices = tuple(source.spatial_shape), mesh.devices.size
    n, t_max = source.num_subjects, source.max_scans
    ckpt = StateCheckpoints(work / "checkpoints")
    try:
        pool = run_size(work, "pool", lambda: plan_pool(cfg, n, t_max, shape, budget).sizes["subjects in the pool"])
        theta = _shared_init(source, cfg, ckpt, work, mesh, progress, pool)
        chunk = run_size(work, "chunk", lambda: plan_chunk(cfg, n, t_max, shape, devices, budget).sizes["subjects per chunk"])
        result = _finetune_all(source, cfg, theta, ckpt, work, mesh, progress, -(-chunk // devices) * devices, budget)
    finally:
        ckpt.close()
    if jax.process_index() == 0:

        write_fit_outputs(out, result, source, cfg)
        shutil.rmtree(work, ignore_errors=True)
    return result


def _report(progress, **event) -> None:
    if progress is not None:
        progress(event)


def _points_psnr(loss: np.ndarray) -> float:
    ok = np.isfinite(loss) & (loss > 0)
    return float(np.median(10 * np.log10(4.0 / loss[ok]))) if ok.any() else float("nan")


def _shared_init(source, cfg, ckpt, work, mesh, progress, pool_size: int) -> st.Params:
    done = work / "theta"
    template = st.init(jax.random.key(cfg.seed), cfg.inr)
    if done.exists():
        return load_tree(done, template)
    stage = cfg.shared
    tx = stage.optimizer()
    params, opt_state, start = template, tx.init(template), 0
    latest = ckpt.latest_meta()
    if latest is not None and latest[1]["stage"] == "shared":
        params, opt_state = ckpt.restore(latest[0], (params, opt_state))
        start = latest[1]["step"]
    rng = np.random.default_rng(cfg.seed)
    eligible = np.flatnonzero(scan_roles(source.mask, cfg.holdout).__eq__(1).any(1))
    if eligible.size == 0:
        raise InputError("cohort", "no subject has a scan to fit")
    pool_ids = np.sort(rng.permutation(eligible)[:pool_size])
    if start < stage.steps:
        pool_cohort = source.select(pool_ids)  # T_max trimmed to the pool's longest subject
        roles = scan_roles(pool_cohort.mask, cfg.holdout)
        finite = np.array([np.isfinite(pool_cohort.volumes[k][roles[k] == 1]).all() for k in range(len(pool_ids))])
        if not finite.all():
            bad = ", ".join(f"sub-{pool_cohort.subject_ids[k]}" for k in np.flatnonzero(~finite))
            warnings.warn(f"non-finite intensities in {bad}; left out of the shared initialisation", stacklevel=3)
            if not finite.any():
                raise InputError("cohort", "every subject of the shared-initialisation pool has non-finite intensities")
            pool_cohort, roles = pool_cohort.select(np.flatnonzero(finite)), roles[finite]
        data, _ = _chunk_arrays(pool_cohort, roles, source.max_scans, cfg)
        sampling = cfg.sampling(stage, tuple(source.spatial_shape), source.max_scans)
        pool = sharding.replicate(data, mesh)
        params, opt_state = sharding.replicate((params, opt_state), mesh)
        step = start
        while step < stage.steps:
            n = min(cfg.steps_per_call, stage.steps - step)
            params, opt_state, losses = shared_block(
                params, opt_state, pool, jnp.int32(cfg.seed), jnp.int32(step),
                num_steps=n, cfg=cfg.inr, sampling=sampling, stage=stage, per_step=cfg.shared_subjects_per_step,
            )  # fmt: skip
            step += n
            if step % cfg.checkpoint_every == 0 or step == stage.steps:
                ckpt.save(step, (params, opt_state), {"stage": "shared", "step": step})
            loss = float(losses[-1])
            _report(progress, stage="shared", step=step, total=stage.steps, loss=loss, psnr=_points_psnr(np.array([loss])))
    params = sharding.to_host(params)
    save_tree(done, params)
    release_memory()
    return params


def _finetune_all(source, cfg, theta, ckpt, work, mesh, progress, chunk_size: int, budget: Budget) -> FitResult:
    t_max = source.max_scans
    roles_all = scan_roles(source.mask, cfg.holdout)
    stage = cfg.finetune
    shape = tuple(source.spatial_shape)
    sampling = cfg.sampling(stage, shape, t_max)

    def prepare(cohort, ids, n):
        data, ages = _chunk_arrays(cohort, roles_all[ids], t_max, cfg)
        return sharding.pad_subjects((data, ages, roles_all[ids] > 0), n)

    def block(state, data, subjects, first_step, num_steps):
        return finetune_block(
            state, data[0], subjects, jnp.int32(cfg.seed), jnp.int32(first_step),
            num_steps=num_steps, cfg=cfg.inr, sampling=sampling, stage=stage,
        )  # fmt: skip

    def finish(state, data, n_real):
        subject_data, ages, observed = data
        release_memory()
        block = plan_block(cfg, shape, t_max, chunk_size // mesh.devices.size, budget).sizes["voxels per block"]
        psnr, ssim = cohort_scores(state.params, ages, subject_data.volumes, observed, spatial_shape=shape, cfg=cfg.inr, block=block)
        host = sharding.to_host({"params": state.params, "psnr": psnr, "ssim": ssim, "loss": state.loss, "diverged_at": state.diverged_at})
        return jax.tree_util.tree_map(lambda x: x[:n_real], host)

    def status(state, n_real):
        loss = np.asarray(state.loss)[:n_real]
        return {"loss": float(np.nanmedian(loss)) if np.isfinite(loss).any() else float("nan"), "psnr": _points_psnr(loss)}

    program = ChunkProgram(
        stage="finetune", steps=stage.steps, steps_per_call=cfg.steps_per_call, checkpoint_every=cfg.checkpoint_every,
        offset=cfg.shared.steps, prepare=prepare,
        init=lambda n: _init_states(jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (n, *x.shape)), theta), stage),
        block=block, finish=finish, status=status,
    )  # fmt: skip
    run_in_chunks(source, program, work, ckpt, mesh, chunk_size, progress)

    def target(n):
        return {
            "params": jax.tree_util.tree_map(lambda x: np.zeros((n, *x.shape), x.dtype), theta),
            "psnr": np.zeros((n, t_max), np.float32),
            "ssim": np.zeros((n, t_max), np.float32),
            "loss": np.zeros((n,), np.float32),
            "diverged_at": np.zeros((n,), np.int32),
        }

    joined = load_chunks(work, source.num_subjects, chunk_size, mesh, target)
    return FitResult(
        params=joined["params"],
        subject_ids=tuple(source.subject_ids),
        groups=tuple(source.groups),
        ages=np.asarray(source.ages),
        roles=roles_all,
        psnr=joined["psnr"],
        ssim=joined["ssim"],
        loss=joined["loss"],
        diverged_at=joined["diverged_at"],
    )
