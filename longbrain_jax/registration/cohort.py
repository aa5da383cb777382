"""Register a whole cohort and write its continuous-time deformations.

`register_cohort(source, out, cfg)` trains one displacement INR per subject (all
subjects of a chunk in one vmapped, jit-compiled program, sharded over devices,
checkpointed and resumable like cohort fitting) and writes, per subject, at each
observed scan and at any requested times (e.g. a yearly grid past the last scan):

    OUT/sub-X/anat/sub-X_<when>_desc-jacdet.nii.gz     |J| of phi_t (> 1: the follow-up's
                                                         tissue maps to a larger baseline volume)
    OUT/sub-X/anat/sub-X_<when>_desc-logjacdet.nii.gz
    OUT/sub-X/anat/sub-X_<when>_desc-xfm.nii.gz        phi_t(x) - x, ITK/ANTs 5D vector NIfTI (LPS mm)
    OUT/sub-X/anat/sub-X_<when>_dseg.nii.gz            the baseline labels carried to time t
                                                         (L_0 o phi_t^-1), when labels are known
    OUT/trajectories.tsv                                per subject, time and structure: mean |J|, d|J|/dt
    OUT/subjects.tsv, OUT/params/ (orbax), OUT/config.json

`<when>` is `ses-Y` for an observed session and `age-072p5` for a requested age.
phi_t maps follow-up coordinates onto the baseline: I_t o phi_t ~ I_0.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from longbrain_jax import grid
from longbrain_jax.atlas import REGIONS
from longbrain_jax.cohort import scan_roles
from longbrain_jax.config import config_to_dict, write_config
from longbrain_jax.engine import sharding
from longbrain_jax.engine.checkpoint import StateCheckpoints, save_tree
from longbrain_jax.engine.chunks import ChunkProgram, load_chunks, run_in_chunks
from longbrain_jax.engine.rundir import prepare_output_dir, run_mesh, run_size
from longbrain_jax.errors import InputError
from longbrain_jax.files import age_tag, write_tsv
from longbrain_jax.io.nifti import save_displacement, save_image
from longbrain_jax.memory import MAX_BLOCK, MIN_BLOCK, Budget, Plan, Program, plan_batch, within_budget
from longbrain_jax.registration import network as net
from longbrain_jax.registration.train import RegistrationConfig, init_states, registration_block


def _prepare(cohort, ids, n, t_max, holdout):
    volumes, mask = sharding.pad_scans(cohort.volumes, t_max), sharding.pad_scans(cohort.mask, t_max)
    times = np.where(mask, sharding.pad_scans(cohort.ages, t_max) - cohort.ages[:, :1], 0.0).astype(np.float32)
    train = scan_roles(mask, holdout) == 1
    return sharding.pad_subjects((volumes, times, train), n)


HOST_SCAN_COPIES = 2  # the chunk being prepared and the next one read ahead (float32 scans)


def registration_program(cfg: RegistrationConfig, shape: tuple[int, ...], t_max: int) -> Program:
    """One device's `registration_block` for n subjects."""
    s = jax.ShapeDtypeStruct

    def trace(n):
        state = jax.eval_shape(lambda: init_states(cfg, n))
        return registration_block.trace(state, s((n, t_max, *shape), jnp.float32), s((n, t_max), jnp.float32), s((n, t_max), jnp.bool_),
                                        s((n,), jnp.int32), jnp.int32(0), jnp.int32(0), num_steps=cfg.steps_per_call, cfg=cfg)  # fmt: skip

    return Program(trace, ("register", cfg, shape, t_max))


def plan_chunk(cfg: RegistrationConfig, num_subjects: int, t_max: int, shape: tuple[int, ...], devices: int, budget: Budget) -> Plan:
    """Subjects registered together (a device multiple; `cfg.chunk_size` an upper bound) under `budget`."""
    host = lambda n: HOST_SCAN_COPIES * 4 * t_max * math.prod(shape) * n  # noqa: E731
    upper = -(-min(cfg.chunk_size or num_subjects, num_subjects) // devices) * devices
    return plan_batch("register", "subjects per chunk", budget, upper, registration_program(cfg, shape, t_max), host,
                      multiple=devices, shards=devices)  # fmt: skip


def fields_block(shape: tuple[int, ...], cfg: net.DisplacementConfig, budget: Budget) -> int:
    """Voxels per block of `subject_fields` under `budget`."""
    program = Program(lambda blk: subject_fields.trace(abstract_params(cfg), 0.0, shape, cfg, blk),
                      ("fields", cfg, shape), (MIN_BLOCK, 2 * MIN_BLOCK))  # fmt: skip
    upper = min(MAX_BLOCK, max(MIN_BLOCK, math.prod(shape)))
    return plan_batch("register: outputs", "voxels per block", budget, upper, program, multiple=MIN_BLOCK).sizes["voxels per block"]


def abstract_params(cfg: net.DisplacementConfig):
    return jax.eval_shape(lambda: net.init(jax.random.key(0), cfg))


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def subject_fields(params: dict, t: float, spatial_shape: tuple[int, ...], cfg: net.DisplacementConfig, block: int = 16384):
    """u (*spatial, D), |J| and d|J|/dt (*spatial) of one subject's INR at time t, on its voxel grid."""
    coords = grid.normalised_grid(spatial_shape).reshape(-1, len(spatial_shape))
    n = coords.shape[0]
    block = min(block, n)  # a small image is one block, not one padded to `block` points
    pad = -(-n // block) * block - n
    coords = jnp.pad(coords, ((0, pad), (0, 0))).reshape(-1, block, coords.shape[-1])
    tt = jnp.asarray(t, jnp.float32)

    def one(x):
        u = net.displacement(params, x, tt, cfg)
        det, rate = net.jacobian_determinant_rate(params, x, tt, cfg)
        return u, det, rate

    u, det, rate = jax.lax.map(lambda xs: jax.vmap(one)(xs), coords)
    u = u.reshape(-1, u.shape[-1])[:n].reshape(*spatial_shape, -1)
    return u, det.reshape(-1)[:n].reshape(spatial_shape), rate.reshape(-1)[:n].reshape(spatial_shape)


@within_budget
def register_cohort(
    source,
    out: str | os.PathLike,
    cfg: RegistrationConfig = RegistrationConfig(),
    *,
    extra_ages: tuple[float, ...] = (),
    resume: bool = False,
    overwrite: bool = False,
    mesh=None,
    progress=None,
    source_description: str = "",
    budget: Budget | None = None,
) -> Path:
    """Register every subject of `source` (a `Cohort` or `BIDSDataset`) and write OUT (module docstring).

    The chunk of subjects trained together and the voxel block of the outputs are planned
    from `budget` (default `Budget.resolve()`); a resumed run keeps its first chunk size.
    """
    out = Path(out)
    if cfg.network.ndim != len(source.spatial_shape):
        raise InputError(out, f"network ndim {cfg.network.ndim} does not match the {len(source.spatial_shape)}D data")
    prepare_output_dir(out, {"config": config_to_dict(cfg), "subjects": list(source.subject_ids)}, resume, overwrite)
    try:
        return _register_into(out, source, cfg, extra_ages, mesh, progress, source_description, budget)
    except InputError:  # a broken image found while streaming voxels: leave no half-written run behind
        if not resume and jax.process_index() == 0:
            shutil.rmtree(out, ignore_errors=True)
        raise


def _register_into(out: Path, source, cfg: RegistrationConfig, extra_ages, mesh, progress, source_description: str, budget: Budget | None) -> Path:
    """`register_cohort` once its output folder is prepared."""
    if jax.process_index() == 0:
        write_config(cfg, out / "config.json", source=source_description, subjects=list(source.subject_ids), extra_ages=list(extra_ages))
    work, t_max = out / "work", source.max_scans
    mesh = mesh or run_mesh(work, source.num_subjects)
    shape, devices = tuple(source.spatial_shape), mesh.devices.size
    chunk = run_size(work, "chunk", lambda: plan_chunk(cfg, source.num_subjects, t_max, shape, devices, budget).sizes["subjects per chunk"])

    def block(state, data, subjects, first_step, num_steps):
        volumes, times, observed = data
        return registration_block(state, volumes, times, observed, subjects, jnp.int32(cfg.seed), jnp.int32(first_step), num_steps=num_steps, cfg=cfg)

    def finish(state, data, n_real):
        host = sharding.to_host({"params": state.params, "loss": state.loss, "diverged_at": state.diverged_at})
        return jax.tree_util.tree_map(lambda x: x[:n_real], host)

    def status(state, n_real):
        loss = np.asarray(state.loss)[:n_real]
        return {"loss": float(np.nanmedian(loss)) if np.isfinite(loss).any() else float("nan")}

    program = ChunkProgram(
        stage="register", steps=cfg.steps, steps_per_call=cfg.steps_per_call, checkpoint_every=cfg.checkpoint_interval, offset=0,
        prepare=lambda cohort, ids, n: _prepare(cohort, ids, n, t_max, cfg.holdout), init=lambda n: init_states(cfg, n),
        block=block, finish=finish, status=status,
    )  # fmt: skip
    ckpt = StateCheckpoints(work / "checkpoints")
    try:
        run_in_chunks(source, program, work, ckpt, mesh, chunk, progress)
    finally:
        ckpt.close()
    template = net.init(jax.random.key(0), cfg.network)
    target = lambda n: {  # noqa: E731
        "params": jax.tree_util.tree_map(lambda x: np.zeros((n, *x.shape), x.dtype), template),
        "loss": np.zeros((n,), np.float32),
        "diverged_at": np.zeros((n,), np.int32),
    }
    joined = load_chunks(work, source.num_subjects, chunk, mesh, target)
    if jax.process_index() == 0:
        save_tree(out / "params", joined["params"], alone=True)
        write_registration_outputs(out, source, cfg, joined, extra_ages, progress, budget)
        shutil.rmtree(work, ignore_errors=True)
    return out


def write_registration_outputs(out: Path, source, cfg: RegistrationConfig, joined: dict, extra_ages, progress=None, budget: Budget | None = None) -> None:
    """Maps, displacements, carried labels and trajectories of every subject (module docstring), one subject in memory at a time."""
    shape = tuple(source.spatial_shape)
    block = fields_block(shape, cfg.network, budget or Budget.resolve())
    subjects_rows, traj_rows = [], []
    for i, sid in enumerate(source.subject_ids):
        cohort = source.select([i])
        params = jax.tree_util.tree_map(lambda x, i=i: jnp.asarray(x[i]), joined["params"])
        affine = cohort.affines[0]
        n = int(cohort.mask[0].sum())
        baseline_age = float(cohort.ages[0, 0])
        whens = [(f"ses-{cohort.session_ids[0][j]}", float(cohort.ages[0, j])) for j in range(n)]
        whens += [(f"age-{age_tag(a)}", float(a)) for a in extra_ages]
        labels0 = None if cohort.labels is None else jnp.asarray(cohort.labels[0, 0])
        for when, age in whens:
            t = age - baseline_age
            u, det, rate = subject_fields(params, t, shape, cfg.network, block)
            stem = out / f"sub-{sid}" / "anat" / f"sub-{sid}_{when}"
            save_image(f"{stem}_desc-jacdet.nii.gz", np.asarray(det), affine, overwrite=True)
            save_image(f"{stem}_desc-logjacdet.nii.gz", np.log(np.maximum(np.asarray(det), 1e-6)), affine, overwrite=True)
            save_displacement(f"{stem}_desc-xfm.nii.gz", np.asarray(grid.displacement_to_world(u, affine)), affine, overwrite=True)
            if labels0 is not None:
                carried = grid.warp_labels(labels0, grid.invert_displacement(u))
                save_image(f"{stem}_dseg.nii.gz", np.asarray(carried), affine, dtype=np.int32, overwrite=True)
                for name, ids in REGIONS.items():
                    region = np.isin(np.asarray(labels0), ids)
                    if region.any():
                        traj_rows.append([sid, when, f"{age:.2f}", f"{t:.2f}", name, float(np.asarray(det)[region].mean()), float(np.asarray(rate)[region].mean())])
        status = "ok" if joined["diverged_at"][i] < 0 else f"diverged at step {int(joined['diverged_at'][i])}"
        roles = scan_roles(cohort.mask, cfg.holdout)[0, :n]
        held = ",".join(f"ses-{cohort.session_ids[0][j]}" for j in range(n) if roles[j] > 1) or "-"
        subjects_rows.append([sid, source.groups[i], n, held, status, float(joined["loss"][i])])
        if progress is not None:
            progress({"stage": "written", "subject": i + 1, "subjects": source.num_subjects})
    write_tsv(out / "subjects.tsv", ["participant_id", "group", "scans", "held_out", "status", "loss"], subjects_rows)
    write_tsv(out / "trajectories.tsv", ["participant_id", "when", "age", "years", "structure", "mean_jacdet", "mean_jacdet_rate_per_year"], traj_rows)
