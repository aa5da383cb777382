"""`longbrain generate`: train the deformation diffusion model on a cohort, and sample future anatomy from it.

Training (`train_model(source, out, cfg)`) runs stage 1 (every follow-up registered to
its baseline as an SVF, `svf.register_cohort`, chunk by chunk of subjects) and stage 2
(the denoiser on the subjects' frame sequences, `model.train`), and writes the model:

    OUT/config.json      the DiffusionConfig, the grid (shape, affine of the first subject,
                         velocity grid), the frames' scale, the group and sex names
    OUT/params/          the denoiser's EMA parameters (orbax)
    OUT/losses.tsv       the training loss per step
    OUT/work/            stage 1's velocities and the training checkpoints (resume; removed
                         when training ends)

Sampling (`sample_model(model, source, out, ages)`) draws `samples` sequences per
subject at the requested ages (each after the subject's baseline), optionally with every
subject's group replaced (a counterfactual), and writes per subject and age:

    OUT/sub-X/sub-X_age-075p0_sample-K_T1w.nii.gz       the generated scan (baseline o exp(v))
    OUT/sub-X/sub-X_age-075p0_sample-K_dseg.nii.gz      the baseline's labels carried along (if known)
    OUT/sub-X/sub-X_age-075p0_sample-K_desc-jacdet.nii.gz   |J| of the generated map
    OUT/sub-X/sub-X_age-075p0_sample-K_desc-velocity.nii.gz the SVF on the image grid (ITK vector, mm)
    OUT/sub-X/sub-X_age-075p0_desc-{mean,sd}_T1w.nii.gz     mean and spread over the samples
    OUT/sub-X/sub-X_age-075p0_desc-{mean,sd}_jacdet.nii.gz
    OUT/generated.tsv    per subject, age and sample: group used, folding share, the width the
                         sequence was smoothed with (`unfold_sigma`: 0 as drawn), carried
                         regional volumes (mm^3)

The baseline is each subject's first scan; the model sees nothing else of the subject.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from longbrain_jax import grid, metrics
from longbrain_jax.atlas import REGIONS
from longbrain_jax.config import config_to_dict, read_config, write_config
from longbrain_jax.diffusion import model as dm
from longbrain_jax.diffusion import svf
from longbrain_jax.diffusion.config import DiffusionConfig
from longbrain_jax.engine.checkpoint import load_tree, save_tree
from longbrain_jax.engine.rundir import prepare_output_dir, run_size
from longbrain_jax.errors import InputError
from longbrain_jax.files import age_tag, atomic_dir, atomic_file, write_tsv
from longbrain_jax.io.nifti import save_displacement, save_image
from longbrain_jax.memory import Budget, plan_host_share, within_budget

logger = logging.getLogger(__name__)

#: the share of the free host budget a chunk of subjects may hold (its scans, labels and velocities);
#: the rest is left to the programs that run on the chunk (each plans its own batch from what is left)
CHUNK_SHARE = 0.25


@dataclasses.dataclass(frozen=True)
class DiffusionModel:
    """A trained model (`load_model`): parameters, configuration, the grid it was trained on,
    the frames' scale and the group / sex names."""

    params: Any
    cfg: DiffusionConfig
    vocab: dm.Vocabulary
    scale: float
    shape: tuple[int, ...]
    affine: np.ndarray
    path: Path | None

    @property
    def coarse(self) -> tuple[int, ...]:
        return svf.coarse_shape(self.shape, self.cfg.svf.velocity_factor)


def _chunks(source, budget: Budget, stage: str, per_subject: int, fixed: int = 0) -> list[np.ndarray]:
    """Subjects in chunks (arrays of indices) whose host arrays, `per_subject` bytes each beside `fixed`
    (whole-cohort outputs), fit `CHUNK_SHARE` of the host budget left free (`memory.plan_host_share`, logged)."""
    n = source.num_subjects
    size = plan_host_share(stage, "subjects per chunk", budget, CHUNK_SHARE, n, per_subject, fixed).sizes["subjects per chunk"]
    return [np.arange(s, min(s + size, n)) for s in range(0, n, size)]


def _scan_bytes(source) -> int:
    """Host bytes of one subject's scans (and labels) as `select` reads them."""
    if hasattr(source, "scan_bytes"):
        return source.scan_bytes()
    return int(source.volumes[0].nbytes * (2 if source.labels is not None else 1))


def _check_trainable(source, known: np.ndarray | None = None) -> None:
    counts = (source.mask if known is None else source.mask & known).sum(1)
    if not np.any(counts >= 2):
        raise InputError(getattr(source, "root", "the cohort"), "no subject has two or more scans: the model learns from follow-ups")


def stage_one(source, cfg: DiffusionConfig, budget: Budget, progress: Callable[[dict], None] | None = None, known: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:  # fmt: skip
    """Stage 1 over the whole source, chunk by chunk: (velocities (N, T, *c, D), valid (N, T), baselines on
    the velocity grid with gradient (N, *c, 1 + D), sexes). `known` (N, T): the scans it may use
    (default all; slot 0, the baseline, must be one)."""
    n, t_max = source.mask.shape
    known = source.mask if known is None else np.asarray(known, bool) & source.mask
    coarse = svf.coarse_shape(source.spatial_shape, cfg.svf.velocity_factor)
    d = len(coarse)
    field = int(np.prod(coarse)) * d * 4  # one velocity field's bytes
    outputs = n * (t_max * field + int(np.prod(coarse)) * (1 + d) * 4)  # velocities and baseline features, whole cohort
    # per subject of a chunk: its scans, the copies of its (baseline, follow-up) pairs that
    # `svf.register_cohort` hands to `register_pairs`, the velocities it returns and their smoothed copy
    scans = getattr(source, "volumes", None)  # a Cohort's; a dataset's `select` reads float32
    dtype = np.dtype(np.float32) if scans is None else scans.dtype
    per_voxel = dtype.itemsize + (0 if dtype == np.float32 else 4)  # the copy, and `register_pairs`' float32 one of it
    pairs = 2 * (t_max - 1) * int(np.prod(source.spatial_shape)) * per_voxel
    chunks = _chunks(source, budget, "generate: stage 1", _scan_bytes(source) + pairs + 2 * t_max * field, fixed=outputs)
    velocities = np.zeros((n, t_max, *coarse, d), np.float32)
    valid = np.zeros((n, t_max), bool)
    images = np.zeros((n, *coarse, 1 + d), np.float32)
    sexes: list[str] = [""] * n
    for c, idx in enumerate(chunks):
        cohort = source.select(idx)
        t = cohort.max_scans

        def bar(done, total, loss, c=c):
            if progress is not None:
                progress({"stage": "svf", "chunk": c, "chunks": len(chunks), "done": done, "total": total, "loss": loss})

        # planned beside the cohort's outputs and the smoothed copy of the chunk's velocities
        v, ok = svf.register_cohort(cohort.volumes, cohort.mask & known[idx, :t], cfg.svf, budget, bar, host_bytes=outputs + len(idx) * t * field)
        # the effective (smoothed) velocity is what the map uses, and what the model learns
        v = np.asarray(_smooth_all(jnp.asarray(v), cfg.svf))
        velocities[idx, :t], valid[idx, :t] = v * ok.reshape(ok.shape + (1,) * (v.ndim - 2)), ok
        images[idx] = dm.baseline_features(cohort.volumes[:, 0], coarse)
        for i, s in zip(idx, cohort.sexes, strict=True):
            sexes[i] = s
        del cohort, v
    return velocities, valid, images, sexes


@functools.partial(jax.jit, static_argnames=("cfg",))
def _smooth_all(velocities: Array, cfg: svf.SVFConfig) -> Array:
    """`svf.smooth` of every field of (N, T, *c, D)."""
    return jax.vmap(jax.vmap(lambda v: svf.smooth(v, cfg)))(velocities)


def learn(
    source, stage1: tuple, cfg: DiffusionConfig, budget: Budget, work: Path | None = None, resume: bool = False,
    progress: Callable[[dict], None] | None = None,
) -> tuple[Any, np.ndarray, dm.Vocabulary, float, int]:  # fmt: skip
    """Stage 2 on stage 1's output: (EMA parameters, losses, vocabulary, frame scale, subjects trained on).
    With `work`, checkpoints go there and the planned batch is recorded (a resumed run keeps it)."""
    velocities, valid, images, sexes = stage1
    vocab = dm.Vocabulary.of(source.groups, sexes)
    data, scale = dm.training_sequences(velocities, valid, images, source.ages, vocab.ids(source.groups, sexes), cfg.frames)
    keep = data.frame_mask.any(1)  # subjects with at least one follow-up
    if not keep.any():
        raise InputError(getattr(source, "root", "the cohort"), "no subject has a follow-up scan to learn from")
    data = dm.Sequences(*(np.asarray(a)[keep] for a in data))

    def step_progress(step, steps, loss):
        if progress is not None:
            progress({"stage": "train", "step": step, "steps": steps, "loss": loss})

    batch = None if work is None else run_size(work, "subjects per step", lambda: dm.batch_size(cfg, vocab, data, budget))
    params, losses = dm.train(data, cfg, vocab, None if work is None else work / "checkpoints", resume=resume, progress=step_progress,
                              batch=batch, budget=budget)  # fmt: skip
    return params, losses, vocab, scale, int(keep.sum())


def train_in_memory(source, known: np.ndarray, cfg: DiffusionConfig, budget: Budget) -> DiffusionModel:
    """A model trained on the `known` scans of `source`, kept in memory (the forecasting experiment's)."""
    _check_trainable(source, known)
    params, _, vocab, scale, _ = learn(source, stage_one(source, cfg, budget, known=known), cfg, budget)
    return DiffusionModel(params, cfg, vocab, scale, tuple(source.spatial_shape), np.asarray(source.affines[0], np.float64), None)


def _record(source, cfg: DiffusionConfig) -> dict:
    return {"config": config_to_dict(cfg), "subjects": list(source.subject_ids)}


@within_budget
def train_model(
    source, out: str | os.PathLike, cfg: DiffusionConfig = DiffusionConfig(), resume: bool = False, overwrite: bool = False,
    progress: Callable[[dict], None] | None = None, budget: Budget | None = None, source_description: str = "",
) -> Path:  # fmt: skip
    """Train on `source` (a `Cohort` or a scanned BIDS dataset) and write the model to `out` (module docstring).

    Stage 1's velocities are kept in `out/work/` so a resumed run does not register again;
    training resumes from its latest checkpoint and ends where an uninterrupted run would.
    """
    out = Path(out)
    _check_trainable(source)
    if len(source.spatial_shape) not in (2, 3):
        raise InputError(out, f"scans must be 2D or 3D, got shape {source.spatial_shape}")
    prepare_output_dir(out, _record(source, cfg), resume, overwrite)
    work = out / "work"
    work.mkdir(exist_ok=True)
    write_config(cfg, out / "config.json", subjects=list(source.subject_ids), source=source_description)
    saved = work / "svf.npz"
    if saved.is_file():
        with np.load(saved) as f:
            stage1 = (f["velocities"], f["valid"], f["images"], [str(x) for x in f["sexes"]])
    else:
        stage1 = stage_one(source, cfg, budget, progress)
        with atomic_file(saved, overwrite=True) as tmp, open(tmp, "wb") as f:
            np.savez(f, velocities=stage1[0], valid=stage1[1], images=stage1[2], sexes=np.asarray(stage1[3]))
    params, losses, vocab, scale, trained = learn(source, stage1, cfg, budget, work, resume, progress)
    save_tree(out / "params", params)
    write_tsv(out / "losses.tsv", ["step", "loss"], [[i + 1, float(x)] for i, x in enumerate(losses)])
    affine = np.asarray(source.affines[0], np.float64)
    write_config(cfg, out / "config.json", subjects=list(source.subject_ids), source=source_description,
                 model={"shape": list(source.spatial_shape), "affine": affine.tolist(), "scale": scale,
                        "groups": list(vocab.groups), "sexes": list(vocab.sexes), "trained_on": trained})  # fmt: skip
    shutil.rmtree(work)
    return out


def load_model(path: str | os.PathLike) -> DiffusionModel:
    """A model written by `train_model`; `InputError` naming the folder if it is not one (or unfinished)."""
    path = Path(path)
    cfg = read_config(DiffusionConfig, path / "config.json")
    record = json.loads((path / "config.json").read_text())
    if "model" not in record or not (path / "params").exists():
        raise InputError(path, "holds no trained diffusion model (training unfinished? resume it with --resume)")
    m = record["model"]
    vocab = dm.Vocabulary(tuple(m["groups"]), tuple(m["sexes"]))
    shape = tuple(int(n) for n in m["shape"])
    coarse = svf.coarse_shape(shape, cfg.svf.velocity_factor)
    target = jax.eval_shape(lambda: dm.init_params(jax.random.key(0), cfg, vocab, 1, coarse))
    params = load_tree(path / "params", target)
    return DiffusionModel(params, cfg, vocab, float(m["scale"]), shape, np.asarray(m["affine"], np.float64), path)


def check_grid(model: DiffusionModel, source) -> None:
    """The source's scans must be on the grid the model was trained on (shape, and voxel size to 1%)."""
    if tuple(source.spatial_shape) != model.shape:
        raise InputError(model.path, f"was trained on {model.shape} scans; the dataset's are {tuple(source.spatial_shape)}")
    spacing = lambda a: np.linalg.norm(np.asarray(a)[:3, :3], axis=0)  # noqa: E731
    if not np.allclose(spacing(source.affines[0]), spacing(model.affine), rtol=0.01):
        raise InputError(model.path, f"was trained on {spacing(model.affine).round(3).tolist()} mm voxels; the dataset's are "
                                     f"{spacing(source.affines[0]).round(3).tolist()} mm")  # fmt: skip


def check_group(model: DiffusionModel, group: str | None) -> None:
    if group is not None and group not in model.vocab.groups:
        raise InputError("--group", f"unknown group {group!r}; the model knows {list(model.vocab.groups)}")


def generate_velocities(
    model: DiffusionModel, baselines: np.ndarray, baseline_ages: np.ndarray, target_ages: np.ndarray, groups: Sequence[str],
    sexes: Sequence[str], subjects: np.ndarray, num_samples: int, budget: Budget | None = None,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """SVFs (N, K, F, *c, D) drawn for baselines (N, *s) at `target_ages` (N, F) (NaN: no frame; zero
    there), made one monotone path per sequence unless `model.cfg.trajectory` is "frames", and
    a sequence that folds smoothed until it does not (`model.cfg.unfold_sigmas`, logged); and
    (N, K) the width each sequence was smoothed with (`model.unfold`: 0 kept as drawn, NaN still
    folding). `subjects` (N,) key each subject's draws."""
    seq = dm.conditions(baselines, baseline_ages, target_ages, model.vocab.ids(groups, sexes), model.coarse, len(model.shape))
    frames = dm.sample_sequences(model.params, seq, subjects, num_samples, model.cfg, model.vocab, budget)
    intervals = np.broadcast_to(np.asarray(seq.intervals)[:, None], frames.shape[:3])
    velocities = dm.from_frames(frames * model.scale, intervals, model.cfg.frames)
    mask = np.asarray(seq.frame_mask)
    if model.cfg.trajectory == "monotone":
        velocities = dm.monotone_path(velocities, np.asarray(seq.intervals), mask)
    else:
        velocities = velocities * mask.reshape(mask.shape[0], 1, mask.shape[1], *(1,) * (frames.ndim - 3))
    velocities, sigma = dm.unfold(velocities, model.shape, model.cfg.svf, model.cfg.unfold_sigmas)
    if np.any(sigma != 0):
        widths = sorted({float(s) for s in sigma[np.isfinite(sigma) & (sigma > 0)]})
        logger.info("generate: %d of %d drawn sequences folded and were smoothed (widths %s, velocity-grid voxels)", int(np.sum(sigma != 0)), sigma.size, widths)
    if np.any(np.isnan(sigma)):
        logger.warning("generate: %d drawn sequences still fold after smoothing at %g velocity-grid voxels", int(np.sum(np.isnan(sigma))), model.cfg.unfold_sigmas[-1])
    return velocities, sigma


@within_budget
def sample_model(
    model: DiffusionModel, source, out: str | os.PathLike, ages: Sequence[float] = (), samples: int | None = None, group: str | None = None,
    overwrite: bool = False, progress: Callable[[int, int], None] | None = None, budget: Budget | None = None, years: Sequence[float] = (),
) -> Path:  # fmt: skip
    """Draw `samples` (default the model's) sequences per subject of `source` at `ages` (the same ages for
    every subject, each after every baseline) or at `years` after each subject's baseline, and write them to `out`."""
    out = Path(out)
    check_grid(model, source)
    check_group(model, group)
    if bool(len(ages)) == bool(len(years)):
        raise InputError("--ages / --years", "give either ages or years after the baseline")
    baselines = np.asarray(source.ages[:, 0], np.float32)
    if len(ages):
        wanted = np.asarray(sorted(float(a) for a in ages), np.float32)
        late = np.flatnonzero(baselines >= wanted[0])
        if late.size:
            raise InputError("--ages", f"{wanted[0]:g} is not after the baseline of {late.size} subject(s), e.g. sub-{source.subject_ids[late[0]]} "
                                       f"at {float(baselines[late[0]]):g} (--years gives ages after each subject's baseline)")  # fmt: skip
        targets = np.broadcast_to(wanted, (source.num_subjects, wanted.size))
    else:
        after = np.asarray(sorted(float(y) for y in years), np.float32)
        if after[0] <= 0:
            raise InputError("--years", f"years after the baseline must be > 0, got {after[0]:g}")
        targets = baselines[:, None] + after[None]
    samples = samples or model.cfg.samples
    rows: list[list] = []
    header = ["participant_id", "age", "sample", "group", "folding", "unfold_sigma"] + [f"volume_{r}" for r in REGIONS]
    with atomic_dir(out, overwrite=overwrite) as tmp:  # nothing appears at `out` unless every subject is written
        k, f = samples, targets.shape[1]
        field = int(np.prod(model.coarse)) * len(model.shape) * 4
        # per subject of a chunk: its scans and 4 copies of its K x F drawn fields (the frames, scaled, as velocities, on the path)
        for idx in _chunks(source, budget, "generate: sampling", _scan_bytes(source) + 4 * k * f * field):
            cohort = source.select(idx)
            groups = [group or g for g in cohort.groups]
            v, widths = generate_velocities(model, cohort.volumes[:, 0], cohort.ages[:, 0], targets[idx], groups, cohort.sexes, idx, samples, budget)
            for i, sid in enumerate(cohort.subject_ids):
                rows += _write_subject(tmp, sid, groups[i], cohort, i, targets[idx[i]], v[i], widths[i], model)
                if progress is not None:
                    progress(int(idx[i]) + 1, source.num_subjects)
        write_tsv(tmp / "generated.tsv", header, rows)
        write_config(model.cfg, tmp / "config.json", model=str(model.path), ages=[float(a) for a in ages], years=[float(y) for y in years],
                     samples=samples, group=group)  # fmt: skip
    return out


def _write_subject(out: Path, sid: str, group: str, cohort, i: int, ages: np.ndarray, velocities: np.ndarray, widths: np.ndarray,
                   model: DiffusionModel) -> list[list]:  # fmt: skip
    """Write one subject's samples (velocities (K, F, *c, D), their `unfold` widths (K,)); returns its generated.tsv rows."""
    folder = out / f"sub-{sid}"
    folder.mkdir()
    affine = cohort.affines[i]
    labels = cohort.labels[i, 0] if cohort.labels is not None else None
    rows = []
    k = velocities.shape[0]
    for a, age in enumerate(ages):
        stem = folder / f"sub-{sid}_age-{age_tag(age)}"
        images, carried, dets = dm.scans_from_velocities(velocities[:, a], cohort.volumes[i, 0], labels, model.cfg.svf)
        for s in range(k):
            save_image(f"{stem}_sample-{s}_T1w.nii.gz", images[s], affine)
            save_image(f"{stem}_sample-{s}_desc-jacdet.nii.gz", dets[s], affine)
            u = np.asarray(svf.upsample(jnp.asarray(velocities[s, a]), model.shape))
            save_displacement(f"{stem}_sample-{s}_desc-velocity.nii.gz", np.asarray(grid.displacement_to_world(jnp.asarray(u), affine)), affine)
            vols = [float("nan")] * len(REGIONS)
            if carried is not None:
                save_image(f"{stem}_sample-{s}_dseg.nii.gz", carried[s], affine, dtype=np.int32)
                vols = [float(jnp.sum(metrics.regional_volumes(jnp.asarray(carried[s]), affine, ids))) for ids in REGIONS.values()]
            rows.append([sid, float(age), s, group, float(np.mean(dets[s] <= 0)), float(widths[s]), *vols])
        for name, stack in (("T1w", images), ("jacdet", dets)):
            save_image(f"{stem}_desc-mean_{name}.nii.gz", stack.mean(0), affine)
            save_image(f"{stem}_desc-sd_{name}.nii.gz", stack.std(0), affine)
    return rows

