"""The forecasting experiment: every forecaster on the same held-out scans, scored against the truth.

For a cohort with label maps (a simulated one: the labels are its ground truth), held-out
scans by `cohort.scan_roles` (the last scan of subjects with >= 3 scans for extrapolation,
the middle one of subjects with >= 4 for interpolation):

1. the known (training) scans train the autoencoder (MRExtrap) and the segmentation
   U-Net (with their true label maps), or the U-Net is trained on a separate labelled
   cohort (`segmenter_source`: an instrument independent of the cohort it measures,
   as SynthSeg is; what the benchmark does); the U-Net's Dice on the held-out scans is
   reported, and its volumes of the true held-out scans are a reference row;
2. each forecaster (`forecast.forecasters.FORECASTERS`) prepares what it shares across
   the cohort, then predicts every held-out scan from the known ones, chunk by chunk;
3. scores per held-out scan: SSIM, PSNR (data range 2) and MAE against the true scan;
   Dice of the predicted label map against the true one where the method carries
   labels; the absolute % error of the U-Net's regional volumes (soft by default,
   `segmenter.SegmenterConfig.volumes`) of the predicted scan (hippocampus, lateral
   ventricles, cortical GM, cerebral WM) against the true label maps' volumes; wall time
   per subject;
4. error against the number of scans used: the extrapolated scan predicted from the
   first k scans, k = 1 .. all known (for the forecasters cheap enough to refit k times).

**Memory.** Subjects are read, forecast, scored and written in chunks (`plan_host`: per
subject, `HOST_COPIES` float32 copies of its T x V voxels: scans, labels, every method's
prediction, the segmenter's class probabilities); the autoencoder and the U-Net train on
at most as many known scans as half the free host budget holds (a seeded random subset
when the cohort has more), with batches planned beside them. NODER trains and predicts a
group of subjects at a time (`noder.fit_groups`: a cohort's networks are never all held),
its group planned beside the outputs it fills, its prediction program planned apart.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import jax.numpy as jnp
import numpy as np

from longbrain_jax import metrics
from longbrain_jax import segmenter as sg
from longbrain_jax.cohort import ROLES, scan_roles
from longbrain_jax.config import check_literals
from longbrain_jax.diffusion import DiffusionConfig
from longbrain_jax.engine.training import padded_bytes
from longbrain_jax.errors import InputError
from longbrain_jax.fit.config import FitConfig, StageConfig
from longbrain_jax.fit.evaluate import DATA_RANGE
from longbrain_jax.forecast.forecasters import FORECASTERS, Chunk, Context, Forecast, MRExtrapModel
from longbrain_jax.inr import INRConfig
from longbrain_jax.latent import autoencoder as ae
from longbrain_jax.latent import mrextrap
from longbrain_jax.memory import Budget, plan_host, plan_host_share, within_budget
from longbrain_jax.noder import NODERConfig

METHODS = tuple(FORECASTERS)
HOST_COPIES_BASE = 8  # scans, labels, the segmenter's class probabilities (6 classes) of a scan


@dataclasses.dataclass(frozen=True)
class ForecastConfig:
    """The experiment (see the module docstring).

    **Arguments:**

    - `methods`: forecasters to run (from `METHODS`).
    - `holdout`: "extrapolation" or "interpolation_extrapolation" (`cohort.scan_roles`).
    - `autoencoder`, `prior`: MRExtrap's autoencoder (its `ndim` follows the data) and
      slope prior ("population", "group" or "none").
    - `noder`: NODER's settings; `noder_source`: "last" (warp the most recent known
      scan) or "baseline" (the paper's), see `forecasters.noder_forecast`.
    - `inr`: cohort-fitting settings of the spatiotemporal INR (`inr.ndim` follows the data;
      default width 128, 1,000 fine-tuning steps on 5% of the voxels, and a temporal curvature
      penalty of 0.01 that keeps trajectories straight past the last scan).
    - `segmenter`: the U-Net that measures regional volumes.
    - `diffusion`: the deformation diffusion model's settings; `diffusion_model`: a trained
      model's folder (`longbrain generate train`, e.g. on a larger separate cohort) instead
      of training one on the known scans.
    - `curve`: also compute error against the number of scans used.
    - `seed`: the draw of training scans when not all of them fit the memory budget.
    """

    methods: tuple[str, ...] = METHODS
    holdout: Literal["extrapolation", "interpolation_extrapolation"] = "interpolation_extrapolation"
    autoencoder: ae.AutoencoderConfig = ae.AutoencoderConfig()
    prior: Literal["population", "group", "none"] = "population"
    noder: NODERConfig = NODERConfig()
    noder_source: Literal["last", "baseline"] = "last"
    inr: FitConfig = FitConfig(inr=INRConfig(width=128), finetune=StageConfig(steps=1000, learning_rate=1e-3, sample_fraction=0.05), time_curvature=0.01)
    segmenter: sg.SegmenterConfig = sg.SegmenterConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    diffusion_model: str = ""
    curve: bool = True
    seed: int = 0

    def __post_init__(self):
        unknown = set(self.methods) - set(METHODS)
        if unknown or not self.methods:
            raise ValueError(f"methods must be a non-empty subset of {METHODS}, got {self.methods}")
        check_literals(self)


@dataclasses.dataclass
class ForecastResult:
    """What `run_forecasting` measured.

    - `rows`: one dict per (method, held-out scan): method, participant_id, group, age,
      role, ssim, psnr, mae, dice, folding, volume_error_pct_<structure>, seconds_per_subject.
    - `curve`: mean volume error per (method, scans used).
    - `segmenter_dice`: the U-Net's Dice per structure on the held-out true scans.
    - `linearity`: MRExtrap's latent-linearity check (`linearity_check`), or None.
    - `roles`: (N, T) scan roles; `seconds`: wall time of the whole experiment.
    - `model`, `segmenter`: the trained autoencoder (`MRExtrapModel`) and U-Net parameters.
    - `figure`: one subject's held-out scans and every method's predictions (for the report).
    """

    rows: list[dict]
    curve: list[dict]
    segmenter_dice: dict[str, float]
    linearity: dict | None
    roles: np.ndarray
    seconds: float
    model: MRExtrapModel | None
    segmenter: object
    figure: dict


# -- training data ------------------------------------------------------------------------------
def load_scans(source, which: np.ndarray, limit: int, seed: int, chunk: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Scans (M, *spatial) of `source` where `which` (N, T), and their label maps if it has them; a
    seeded random subset of `limit` when there are more (warned), read `chunk` subjects at a time."""
    pairs = np.argwhere(which & source.mask)
    if len(pairs) > limit:
        warnings.warn(f"{len(pairs)} training scans do not fit the memory budget; training on a random {limit} of them", stacklevel=3)
        pairs = pairs[np.sort(np.random.default_rng(seed).choice(len(pairs), limit, replace=False))]
    shape = tuple(source.spatial_shape)
    images = np.empty((len(pairs), *shape), np.float32)
    labels = None
    subjects = np.unique(pairs[:, 0])
    for start in range(0, len(subjects), chunk):
        ids = subjects[start : start + chunk]
        cohort = source.select(ids)
        for k, i in enumerate(ids):
            for m in np.flatnonzero(pairs[:, 0] == i):
                images[m] = cohort.volumes[k, pairs[m, 1]]
                if cohort.labels is not None:
                    labels = np.empty((len(pairs), *shape), np.int32) if labels is None else labels
                    labels[m] = cohort.labels[k, pairs[m, 1]]
    return images, labels


def train_models(source, known: np.ndarray, cfg: ForecastConfig, budget: Budget, chunk: int, show_progress: bool = False,
                 model: MRExtrapModel | None = None, segmenter_source=None) -> tuple[MRExtrapModel | None, object]:  # fmt: skip
    """The autoencoder (if MRExtrap runs and no `model` is given) on the known scans, and the U-Net
    on the known scans with labels or, if given, on every scan of `segmenter_source` (labelled).

    Each trains on at most as many scans as half the free host budget holds, in batches
    planned beside them (a smaller batch than configured is warned about).
    """
    from longbrain_jax.progress import progress_bar

    shape = tuple(source.spatial_shape)
    scan_bytes = 8 * int(np.prod(shape))
    if "mrextrap" in cfg.methods and model is None:
        limit = plan_host_share("forecast: autoencoder scans", "scans", budget, 0.5, int(known.sum()), scan_bytes).sizes["scans"]
        images, _ = load_scans(source, known, limit, cfg.seed, chunk)
        ae_cfg = dataclasses.replace(cfg.autoencoder, ndim=len(shape))
        ae_cfg = _fitted_batch(ae_cfg, ae.train_batch(ae_cfg, shape, budget, padded_bytes(images)), "autoencoder")  # its scans sit on the device
        bar = progress_bar(ae_cfg.steps, "autoencoder", enabled=show_progress, unit="step")

        def ae_progress(step, total, losses):
            bar.update(step - bar.n)
            bar.set_postfix_str(f"L1 {float(losses.l1):.4f}")

        params, _ = ae.train_autoencoder(images, ae_cfg, progress=ae_progress)
        bar.close()
        del images
        model = MRExtrapModel(params, ae_cfg, cfg.prior)
    seg_params = None
    seg_source = segmenter_source if segmenter_source is not None else source
    seg_which = seg_source.mask if segmenter_source is not None else known
    if _has_labels(seg_source):
        limit = plan_host_share("forecast: segmenter scans", "scans", budget, 0.5, int((seg_which & seg_source.mask).sum()), scan_bytes).sizes["scans"]
        images, labels = load_scans(seg_source, seg_which, limit, cfg.seed + 1, chunk)
        seg_cfg = _fitted_batch(cfg.segmenter, sg.train_batch(cfg.segmenter, shape, budget, padded_bytes(images) + padded_bytes(labels)), "segmenter")
        bar = progress_bar(seg_cfg.steps, "segmenter", enabled=show_progress, unit="step")
        seg_params, _ = sg.train_segmenter(images, labels, seg_cfg, progress=lambda step, *_: bar.update(step - bar.n))
        bar.close()
    elif segmenter_source is not None:
        raise InputError("segmenter cohort", "has no label maps to train the segmentation U-Net on")
    return model, seg_params


def _has_labels(source) -> bool:
    return bool(getattr(source, "has_labels", getattr(source, "labels", None) is not None))


def _fitted_batch(cfg, batch: int, what: str):
    if batch < cfg.batch_size:
        warnings.warn(f"{what}: a batch of {cfg.batch_size} scans does not fit the memory budget; training with {batch}", stacklevel=3)
        return dataclasses.replace(cfg, batch_size=batch)
    return cfg


# -- scoring ------------------------------------------------------------------------------------
def score(chunk: Chunk, roles: np.ndarray, forecasts: dict[str, Forecast], seg_params, seg_cfg) -> list[dict]:
    """One row per (method, held-out scan) of a chunk; see the module docstring. Adds the segmenter's reference rows."""
    cohort = chunk.cohort
    held = np.argwhere(roles >= 2)
    if not len(held):
        return []
    affine = cohort.affines[0]  # one grid for the cohort
    true_classes = sg.label_classes(cohort.labels[held[:, 0], held[:, 1]]) if cohort.labels is not None else None
    true_vol = sg.class_volumes(true_classes, affine) if true_classes is not None else None
    truth = cohort.volumes[held[:, 0], held[:, 1]]
    entries = dict(forecasts)
    if seg_params is not None and true_vol is not None:
        entries["segmenter on the true scan"] = Forecast(cohort.volumes, None, 0.0, {})
    rows = []
    n_subjects = cohort.num_subjects
    for name, f in entries.items():
        pred = f.images[held[:, 0], held[:, 1]]
        vol = sg.segmented_volumes(seg_params, pred, affine, seg_cfg) if seg_params is not None and true_vol is not None else None
        for k, (i, j) in enumerate(held):
            row = {"method": name, "participant_id": cohort.subject_ids[i], "group": cohort.groups[i],
                   "age": float(cohort.ages[i, j]), "role": ROLES[roles[i, j]],
                   "seconds_per_subject": f.seconds / n_subjects}  # fmt: skip
            if name in forecasts:  # not for the segmenter's reference row (the truth itself)
                a, b = jnp.asarray(pred[k]), jnp.asarray(truth[k])
                row["ssim"] = float(metrics.ssim(a, b, DATA_RANGE))
                row["psnr"] = float(metrics.psnr(a, b, DATA_RANGE))
                row["mae"] = float(metrics.mae(a, b))
            if f.labels is not None and true_classes is not None:
                d = sg.class_dice(sg.label_classes(f.labels[i, j]), true_classes[k])
                row["dice"] = float(np.nanmean(list(d.values())))
            if "folding" in f.extra:
                row["folding"] = float(f.extra["folding"][i, j])
            if vol is not None:
                for s, structure in enumerate(sg.SCORED):
                    row[f"volume_error_pct_{structure}"] = float(100.0 * abs(vol[k, s] - true_vol[k, s]) / max(true_vol[k, s], 1e-6))
            rows.append(row)
    return rows


def _curve_errors(chunk: Chunk, roles: np.ndarray, states: dict, cfg: ForecastConfig, seg_params) -> dict[tuple[str, int], list[float]]:
    """Mean volume error (%) of each extrapolated scan, per (cheap method or the segmenter's reference, scans used)."""
    target = roles == ROLES.index("extrapolation")
    out: dict[tuple[str, int], list[float]] = {}
    if seg_params is None or chunk.cohort.labels is None or not target.any():
        return out
    known_all = roles == ROLES.index("train")
    max_k = int(known_all.sum(1)[target.any(1)].max())
    methods = tuple(m for m in cfg.methods if FORECASTERS[m].cheap)
    for k in range(1, max_k + 1):
        known = known_all & (np.cumsum(known_all, axis=1) <= k)
        use = known_all.sum(1) >= k
        sub = dataclasses.replace(chunk, known=known)
        forecasts = {m: FORECASTERS[m].predict(states[m], sub) for m in methods}
        for r in score(sub, np.where(use[:, None] & target, roles, 0), forecasts, seg_params, cfg.segmenter):
            out.setdefault((r["method"], k), []).append(float(np.mean([r[f"volume_error_pct_{s}"] for s in sg.SCORED])))
    return out


def linearity_check(chunk: Chunk, model: MRExtrapModel, seg_params, seg_cfg, steps: int = 9) -> dict:
    """MRExtrap's Fig. 1 check: decode (1 - a) z_first + a z_last for each subject and segment it.

    Returns {"alphas": (K,), "volumes": (N', K, len(SCORED)) mm^3 of the decoded
    interpolations, "r2": (N', len(SCORED)) R^2 of a straight line in alpha} for the
    subjects with >= 2 known scans. Linear volumes along the path mean a straight line
    in latent space can express the subject's atrophy.
    """
    cohort, known = chunk.cohort, chunk.known
    alphas = np.linspace(0.0, 1.0, steps, dtype=np.float32)
    shape = cohort.spatial_shape
    volumes, r2 = [], []
    for i in np.flatnonzero(known.sum(1) >= 2):
        slots = np.flatnonzero(known[i])
        z = ae.encode_scans(model.params, cohort.volumes[i, [slots[0], slots[-1]]], model.cfg)
        path = np.asarray(mrextrap.interpolate(jnp.asarray(z[0]), jnp.asarray(z[1]), jnp.asarray(alphas)))
        vol = sg.segmented_volumes(seg_params, ae.decode_latents(model.params, path, model.cfg, shape), cohort.affines[i], seg_cfg)
        design = np.stack([np.ones_like(alphas), alphas], 1)
        coef, *_ = np.linalg.lstsq(design, vol, rcond=None)
        resid = ((vol - design @ coef) ** 2).sum(0)
        total = ((vol - vol.mean(0)) ** 2).sum(0)
        volumes.append(vol)
        r2.append(np.where(total > 0, 1.0 - resid / np.maximum(total, 1e-12), 1.0))
    return {"alphas": alphas, "volumes": np.array(volumes).reshape(-1, steps, len(sg.SCORED)), "r2": np.array(r2).reshape(-1, len(sg.SCORED))}


def write_predictions(out: Path, chunk: Chunk, roles: np.ndarray, forecasts: dict[str, Forecast]) -> None:
    """Every held-out prediction (and carried labels) as NIfTI with its subject's affine."""
    from longbrain_jax.io.nifti import save_image

    cohort = chunk.cohort
    for name, f in forecasts.items():
        for i, j in np.argwhere(roles >= 2):
            sid, ses = cohort.subject_ids[i], cohort.session_ids[i][j]
            stem = out / name / f"sub-{sid}" / f"ses-{ses}" / "anat" / f"sub-{sid}_ses-{ses}_desc-{name.replace('_', '')}"
            save_image(stem.with_name(stem.name + "_T1w.nii.gz"), f.images[i, j], cohort.affines[i])
            if f.labels is not None:
                save_image(stem.with_name(stem.name + "_dseg.nii.gz"), f.labels[i, j].astype(np.int32), cohort.affines[i])


# -- the experiment --------------------------------------------------------------------------------
@within_budget
def run_forecasting(
    source, cfg: ForecastConfig = ForecastConfig(), progress: Callable[[str], None] | None = None,
    model: MRExtrapModel | None = None, segmenter_source=None, predictions: Path | None = None, budget: Budget | None = None,
) -> ForecastResult:  # fmt: skip
    """The whole experiment (module docstring) on `source`, a `Cohort` or a streamed `BIDSDataset`.

    `model`: a trained autoencoder for MRExtrap; `segmenter_source`: a labelled cohort to train
    the segmentation U-Net on instead of the known scans; `predictions`: a folder to write every
    held-out prediction to, chunk by chunk; `budget`: the memory budget (default `Budget.resolve()`).
    """
    roles_all = scan_roles(source.mask, cfg.holdout)
    if not np.any(roles_all >= 2):
        raise InputError("cohort", "no held-out scans: forecasting needs subjects with >= 3 scans")
    known_all = roles_all == ROLES.index("train")
    if "mrextrap" in cfg.methods and cfg.prior != "none" and int(np.sum(known_all.sum(1) >= 2)) < 2:
        raise InputError("cohort", "MRExtrap's slope prior needs two subjects with two or more known scans; use --prior none or other methods")
    n, v = source.num_subjects, int(np.prod(source.spatial_shape))
    per_subject = 4 * source.max_scans * v * (HOST_COPIES_BASE + 2 * len(cfg.methods))
    chunk = plan_host("forecast: subjects", "subjects per chunk", budget, n, per_subject).sizes["subjects per chunk"]
    started = time.perf_counter()
    model, seg_params = train_models(source, known_all, cfg, budget, chunk, progress is not None, model, segmenter_source)
    ctx = Context(source, known_all, cfg, model, budget, chunk)
    states = {}
    for name in cfg.methods:
        if progress is not None:
            progress(f"{name}: preparing")
        states[name] = FORECASTERS[name].prepare(ctx)
    figure_subject = int(np.argmax((roles_all >= 2).sum(1)))
    rows, dice, curve, linearity, figure = [], np.zeros((len(sg.SCORED), 2)), {}, [], {}
    for start in range(0, n, chunk):
        idx = np.arange(start, min(start + chunk, n))
        cohort = source.select(idx)
        t = cohort.max_scans
        roles = roles_all[idx, :t]
        this = Chunk(cohort, idx, known_all[idx, :t])
        forecasts = {}
        for name in cfg.methods:
            if progress is not None:
                progress(f"{name}: subjects {start + 1}-{idx[-1] + 1} of {n}")
            forecasts[name] = FORECASTERS[name].predict(states[name], this)
        rows += score(this, roles, forecasts, seg_params, cfg.segmenter)
        held = roles >= 2
        if seg_params is not None and cohort.labels is not None and held.any():
            dice += np.asarray(metrics.overlap_counts(sg.segment(seg_params, cohort.volumes[held], cfg.segmenter), sg.label_classes(cohort.labels[held]), sg.SCORED_IDS), np.float64)
        if cfg.curve:
            for key, errors in _curve_errors(this, roles, states, cfg, seg_params).items():
                curve.setdefault(key, []).extend(errors)
        if model is not None and seg_params is not None:
            linearity.append(linearity_check(this, model, seg_params, cfg.segmenter))
        if predictions is not None:
            write_predictions(Path(predictions), this, roles, forecasts)
        if figure_subject in idx:
            k = int(np.flatnonzero(idx == figure_subject)[0])
            slots = np.flatnonzero(roles[k] >= 2)
            figure = {"subject": cohort.subject_ids[k], "ages": cohort.ages[k, slots], "roles": roles[k, slots],
                      "truth": cohort.volumes[k, slots], "predictions": {m: f.images[k, slots] for m, f in forecasts.items()}}  # fmt: skip
        del cohort, forecasts, this
    seg_dice = dict(zip(sg.SCORED, map(float, metrics.dice_from_counts(dice)), strict=True)) if dice.any() else {}
    order = [m for m in cfg.methods if FORECASTERS[m].cheap] + ["segmenter on the true scan"]
    curve_rows = [{"method": m, "scans_used": k, "subjects": len(e), "volume_error_pct": float(np.mean(e))}
                  for (m, k), e in sorted(curve.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1]))]  # fmt: skip
    check = None
    if linearity:
        check = {"alphas": linearity[0]["alphas"], "volumes": np.concatenate([c["volumes"] for c in linearity]),
                 "r2": np.concatenate([c["r2"] for c in linearity])}  # fmt: skip
    return ForecastResult(rows, curve_rows, seg_dice, check, roles_all, time.perf_counter() - started, model, seg_params, figure)
