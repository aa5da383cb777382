"""The forecasting experiment: every forecaster on the same held-out scans, scored against the truth.

For a cohort with label maps (a simulated one: the labels are its ground truth), held-out
scans by `fit.scan_roles` (the last scan of subjects with >= 3 scans for extrapolation,
the middle one of subjects with >= 4 for interpolation):

1. the known (training) scans train the autoencoder (MRExtrap) and the segmentation
   U-Net (with their true label maps), or the U-Net is trained on a separate labelled
   cohort (`segmenter_cohort`: an instrument independent of the cohort it measures,
   as SynthSeg is; what the benchmark does); the U-Net's Dice on the held-out scans is
   reported, and its volumes of the true held-out scans are a reference row;
2. each forecaster (`latent.forecasters`) predicts every held-out scan from the
   known ones;
3. scores per held-out scan: SSIM, PSNR (data range 2) and MAE against the true scan;
   Dice of the predicted label map against the true one where the method carries
   labels (NODER); the absolute % error of the U-Net's regional volumes (soft by
   default, `segmenter.SegmenterConfig.volumes`) of the predicted scan (hippocampus, lateral ventricles, cortical GM, cerebral WM) against
   the true label maps' volumes; wall time per subject;
4. error against the number of scans used: the extrapolated scan predicted from the
   first k scans, k = 1 .. all known (for the forecasters cheap enough to refit k times).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from longbrain_jax import metrics
from longbrain_jax.cohort import ROLES, Cohort, scan_roles
from longbrain_jax.config import write_config
from longbrain_jax.errors import InputError
from longbrain_jax.files import atomic_dir, write_tsv
from longbrain_jax.fit.cohort_fit import FitConfig
from longbrain_jax.fit.evaluate import DATA_RANGE
from longbrain_jax.latent import autoencoder as ae
from longbrain_jax.latent import forecasters as fc
from longbrain_jax.latent import segmenter as sg
from longbrain_jax.latent.noder import NODERConfig
from longbrain_jax.report import markdown_table, save_figure

METHODS = ("last_observation", "voxelwise_linear", "mrextrap", "noder", "inr")
CURVE_METHODS = ("last_observation", "voxelwise_linear", "mrextrap")


@dataclasses.dataclass(frozen=True)
class ForecastConfig:
    """The experiment (see the module docstring).

    **Arguments:**

    - `methods`: forecasters to run (from `METHODS`).
    - `holdout`: "extrapolation" or "interpolation_extrapolation" (`fit.scan_roles`).
    - `autoencoder`, `prior`: MRExtrap's autoencoder (its `ndim` follows the data) and
      slope prior ("population", "group" or "none").
    - `noder`: NODER's settings; `noder_source`: "last" (warp the most recent known
      scan) or "baseline" (the paper's), see `latent.forecasters.noder_forecast`.
    - `inr`: cohort-fitting settings of the spatiotemporal INR (`inr.ndim` follows the data).
    - `segmenter`: the U-Net that measures regional volumes.
    - `curve`: also compute error against the number of scans used.
    """

    methods: tuple[str, ...] = METHODS
    holdout: str = "interpolation_extrapolation"
    autoencoder: ae.AutoencoderConfig = ae.AutoencoderConfig()
    prior: str = "population"
    noder: NODERConfig = NODERConfig()
    noder_source: str = "last"
    inr: FitConfig = FitConfig()
    segmenter: sg.SegmenterConfig = sg.SegmenterConfig()
    curve: bool = True

    def __post_init__(self):
        unknown = set(self.methods) - set(METHODS)
        if unknown or not self.methods:
            raise ValueError(f"methods must be a non-empty subset of {METHODS}, got {self.methods}")
        if self.holdout not in ("extrapolation", "interpolation_extrapolation"):
            raise ValueError(f"holdout must be 'extrapolation' or 'interpolation_extrapolation', got {self.holdout!r}")
        if self.noder_source not in ("last", "baseline"):
            raise ValueError(f"noder_source must be 'last' or 'baseline', got {self.noder_source!r}")
        if self.prior not in ("population", "group", "none"):
            raise ValueError(f"prior must be 'population', 'group' or 'none', got {self.prior!r}")


def _filled_ages(cohort: Cohort) -> np.ndarray:
    """Ages with padding slots set to the subject's last age (so every slot is a valid target)."""
    last = cohort.ages[np.arange(cohort.num_subjects), cohort.num_scans - 1]
    return np.where(cohort.mask, cohort.ages, last[:, None]).astype(np.float32)


def run_forecasters(
    cohort: Cohort, known: np.ndarray, cfg: ForecastConfig, model: fc.MRExtrapModel | None,
    methods: tuple[str, ...], progress: Callable[[str], None] | None = None, prior_scans: np.ndarray | None = None,
) -> dict[str, fc.Forecast]:  # fmt: skip
    """Each method's `Forecast` from the `known` scans (N, T); MRExtrap's prior from `prior_scans` (default `known`)."""
    ages = _filled_ages(cohort)
    out = {}
    for name in methods:
        if progress is not None:
            progress(name)
        if name == "last_observation":
            out[name] = fc.last_observation(cohort.volumes, ages, known, cohort.labels)
        elif name == "voxelwise_linear":
            out[name] = fc.voxelwise_linear(cohort.volumes, ages, known)
        elif name == "mrextrap":
            out[name] = fc.mrextrap_forecast(model, cohort.volumes, ages, known, cohort.groups, prior_scans)
        elif name == "noder":
            out[name] = fc.noder_forecast(cohort.volumes, ages, known, cohort.labels, cfg.noder, cfg.noder_source)
        elif name == "inr":
            fit_cfg = dataclasses.replace(cfg.inr, inr=dataclasses.replace(cfg.inr.inr, ndim=cohort.ndim))
            out[name] = fc.inr_forecast(cohort, known, fit_cfg)
    return out


def train_models(cohort: Cohort, known: np.ndarray, cfg: ForecastConfig, show_progress: bool = False,
                 model: fc.MRExtrapModel | None = None, segmenter_cohort: Cohort | None = None):  # fmt: skip
    """The autoencoder (if MRExtrap runs and no `model` is given) on the known scans only, and the
    segmenter on the known scans or, if given, on every scan of `segmenter_cohort` (with labels).

    Returns (MRExtrapModel | None, U-Net params | None).
    """
    from longbrain_jax.progress import progress_bar

    scans = cohort.volumes[known]
    if "mrextrap" in cfg.methods and model is None:
        ae_cfg = dataclasses.replace(cfg.autoencoder, ndim=cohort.ndim)
        bar = progress_bar(ae_cfg.steps, "autoencoder", enabled=show_progress, unit="step")

        def ae_progress(step, total, losses):
            bar.update(1)
            bar.set_postfix_str(f"L1 {float(losses.l1):.4f}")

        params, _ = ae.train_autoencoder(scans, ae_cfg, progress=ae_progress)
        bar.close()
        model = fc.MRExtrapModel(params, ae_cfg, cfg.prior)
    seg_params, seg_data = None, None
    if segmenter_cohort is not None:
        if segmenter_cohort.labels is None:
            raise InputError("segmenter cohort", "has no label maps to train the segmentation U-Net on")
        if segmenter_cohort.ndim != cohort.ndim:
            raise InputError("segmenter cohort", f"is {segmenter_cohort.ndim}D, the forecast cohort {cohort.ndim}D")
        seg_data = segmenter_cohort.volumes[segmenter_cohort.mask], segmenter_cohort.labels[segmenter_cohort.mask]
    elif cohort.labels is not None:
        seg_data = scans, cohort.labels[known]
    if seg_data is not None:
        bar = progress_bar(cfg.segmenter.steps, "segmenter", enabled=show_progress, unit="step")
        seg_params, _ = sg.train_segmenter(*seg_data, cfg.segmenter, progress=lambda *_: bar.update(1))
        bar.close()
    return model, seg_params


def score(cohort: Cohort, roles: np.ndarray, forecasts: dict[str, fc.Forecast], seg_params, seg_cfg) -> list[dict]:
    """One row per (method, held-out scan); see the module docstring. Adds the segmenter's reference rows."""
    held = np.argwhere(roles >= 2)
    affine = cohort.affines[0]  # one grid for the cohort
    true_classes = sg.label_classes(cohort.labels[held[:, 0], held[:, 1]]) if cohort.labels is not None else None
    true_vol = sg.class_volumes(true_classes, affine) if true_classes is not None else None
    truth = cohort.volumes[held[:, 0], held[:, 1]]
    entries = dict(forecasts)
    if seg_params is not None and true_vol is not None:
        reference = np.array(cohort.volumes)
        entries["segmenter on the true scan"] = fc.Forecast(reference, None, 0.0, {})
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


def scans_used_curve(cohort: Cohort, roles: np.ndarray, cfg: ForecastConfig, model, seg_params) -> list[dict]:
    """Mean volume error (%) at the extrapolated scan against the number of scans used."""
    target = roles == ROLES.index("extrapolation")
    if seg_params is None or cohort.labels is None or not target.any():
        return []
    known_all = roles == ROLES.index("train")
    max_k = int(known_all.sum(1)[target.any(1)].max())
    rows = []
    for k in range(1, max_k + 1):
        known = known_all & (np.cumsum(known_all, axis=1) <= k)
        use = known_all.sum(1) >= k
        methods = tuple(m for m in CURVE_METHODS if m in cfg.methods)
        forecasts = run_forecasters(cohort, known, cfg, model, methods, prior_scans=known_all)
        scored = score(cohort, np.where(use[:, None] & target, roles, 0), forecasts, seg_params, cfg.segmenter)
        for m in (*methods, "segmenter on the true scan"):
            sel = [r for r in scored if r["method"] == m]
            errors = [np.mean([r[f"volume_error_pct_{s}"] for s in sg.SCORED]) for r in sel]
            rows.append({"method": m, "scans_used": k, "subjects": len(sel), "volume_error_pct": float(np.mean(errors))})
    return rows


def linearity_check(cohort: Cohort, known: np.ndarray, model: fc.MRExtrapModel, seg_params, seg_cfg, steps: int = 9) -> dict:
    """MRExtrap's Fig. 1 check: decode (1 - a) z_first + a z_last for each subject and segment it.

    Returns {"alphas": (K,), "volumes": (N', K, len(SCORED)) mm^3 of the decoded
    interpolations, "r2": (N', len(SCORED)) R^2 of a straight line in alpha} for the
    subjects with >= 2 known scans. Linear volumes along the path mean a straight line
    in latent space can express the subject's atrophy.
    """
    from longbrain_jax.latent import mrextrap

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
    return {"alphas": alphas, "volumes": np.array(volumes), "r2": np.array(r2)}


def linearity_figure(check: dict, path: str | os.PathLike) -> None:
    """Volumes along the latent path, relative to alpha = 0, one line per subject, a panel per structure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sg.SCORED), figsize=(3.0 * len(sg.SCORED), 2.8))
    for s, (ax, name) in enumerate(zip(axes, sg.SCORED, strict=True)):
        for vol in check["volumes"]:
            ax.plot(check["alphas"], vol[:, s] / max(vol[0, s], 1e-6), color="C0", alpha=0.6)
        ax.set_title(f"{name}\nmedian R^2 {np.median(check['r2'][:, s]):.2f}", fontsize=8)
        ax.set_xlabel("alpha")
    axes[0].set_ylabel("volume / volume at alpha 0")
    save_figure(fig, path)


def run_forecasting(
    cohort: Cohort, cfg: ForecastConfig = ForecastConfig(), progress: Callable[[str], None] | None = None,
    model: fc.MRExtrapModel | None = None, segmenter_cohort: Cohort | None = None,
) -> dict:  # fmt: skip
    """The whole experiment; returns {"rows", "curve", "segmenter_dice", "linearity", "forecasts", "roles", "seconds", ...}.

    `model`: a trained autoencoder for MRExtrap; `segmenter_cohort`: a labelled cohort to
    train the segmentation U-Net on instead of the known scans (see the module docstring).
    """
    roles = scan_roles(cohort.mask, cfg.holdout)
    if not np.any(roles >= 2):
        raise InputError("cohort", "no held-out scans: forecasting needs subjects with >= 3 scans")
    known = roles == ROLES.index("train")
    started = time.perf_counter()
    model, seg_params = train_models(cohort, known, cfg, show_progress=progress is not None, model=model, segmenter_cohort=segmenter_cohort)
    seg_dice = {}
    if seg_params is not None and cohort.labels is not None:
        held = roles >= 2
        seg_dice = sg.class_dice(sg.segment(seg_params, cohort.volumes[held], cfg.segmenter), sg.label_classes(cohort.labels[held]))
    forecasts = run_forecasters(cohort, known, cfg, model, cfg.methods, progress)
    rows = score(cohort, roles, forecasts, seg_params, cfg.segmenter)
    linearity = linearity_check(cohort, known, model, seg_params, cfg.segmenter) if model is not None and seg_params is not None else None
    curve = scans_used_curve(cohort, roles, cfg, model, seg_params) if cfg.curve else []
    return {"rows": rows, "curve": curve, "segmenter_dice": seg_dice, "forecasts": forecasts, "roles": roles,
            "seconds": time.perf_counter() - started, "model": model, "segmenter": seg_params, "linearity": linearity}  # fmt: skip


# -- report ----------------------------------------------------------------------------------
def summary_rows(rows: list[dict]) -> list[list[object]]:
    """Mean per (method, role): SSIM, PSNR, MAE, Dice, volume errors, folding, s/subject."""
    out = []
    keys = ["ssim", "psnr", "mae", "dice", *(f"volume_error_pct_{s}" for s in sg.SCORED), "folding", "seconds_per_subject"]
    for method in dict.fromkeys(r["method"] for r in rows):
        for role in ("interpolation", "extrapolation"):
            sel = [r for r in rows if r["method"] == method and r["role"] == role]
            if not sel:
                continue
            values = [float(np.mean([r[k] for r in sel])) if k in sel[0] else float("nan") for k in keys]
            out.append([method, role, len(sel), *values])
    return out


SUMMARY_HEADER = ["method", "held out", "scans", "SSIM", "PSNR dB", "MAE", "Dice", "hippo %", "ventr %", "GM %", "WM %", "folding", "s/subject"]


def results_markdown(result: dict) -> str:
    """The main table, the scans-used table and the segmenter's Dice, as Markdown."""
    text = "Mean over held-out scans; volume errors are |predicted - true| / true of the U-Net's volumes.\n\n"
    text += markdown_table(SUMMARY_HEADER, summary_rows(result["rows"]))
    if result["curve"]:
        methods = list(dict.fromkeys(r["method"] for r in result["curve"]))
        ks = sorted({r["scans_used"] for r in result["curve"]})
        table = [[m, *(next((f"{r['volume_error_pct']:.2f}" for r in result["curve"] if r["method"] == m and r["scans_used"] == k), "") for k in ks)] for m in methods]
        text += "\n\nMean regional volume error (%) of the extrapolated scan against the number of scans used:\n\n"
        text += markdown_table(["method", *(f"{k} scans" for k in ks)], table)
    check = result.get("linearity")
    if check is not None and len(check["r2"]):
        r2 = ", ".join(f"{name} {np.median(check['r2'][:, s]):.3f}" for s, name in enumerate(sg.SCORED))
        text += (f"\n\nLinearity of MRExtrap's latent space: regional volumes of the decoded interpolations between each "
                 f"subject's first and last known latents, median R^2 of a straight line in alpha over {len(check['r2'])} "
                 f"subjects: {r2}.\n")  # fmt: skip
    if result["segmenter_dice"]:
        text += "\n\nSegmentation U-Net on the held-out true scans, Dice: " + ", ".join(f"{k} {v:.3f}" for k, v in result["segmenter_dice"].items()) + "\n"
    return text


def forecast_figure(cohort: Cohort, result: dict, path: str | os.PathLike) -> None:
    """One subject's held-out scans and every method's prediction (middle slice)."""
    import matplotlib.pyplot as plt

    from longbrain_jax.report.figures import middle_slice

    roles = result["roles"]
    i = int(np.argmax((roles >= 2).sum(1)))
    slots = np.flatnonzero(roles[i] >= 2)
    names = ["truth", *result["forecasts"]]
    fig, axes = plt.subplots(len(slots), len(names), figsize=(2.0 * len(names), 2.2 * len(slots)), squeeze=False)
    for r, j in enumerate(slots):
        for c, name in enumerate(names):
            img = cohort.volumes[i, j] if name == "truth" else result["forecasts"][name].images[i, j]
            img = img if img.ndim == 2 else middle_slice(img)
            axes[r, c].imshow(np.rot90(img), cmap="gray", vmin=-1, vmax=1)
            axes[r, c].set_axis_off()
            axes[r, c].set_title(f"{name}\n{ROLES[roles[i, j]][:6]} {cohort.ages[i, j]:.1f}y", fontsize=7)
    save_figure(fig, path)


def curve_figure(result: dict, path: str | os.PathLike) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for m in dict.fromkeys(r["method"] for r in result["curve"]):
        sel = [r for r in result["curve"] if r["method"] == m]
        ax.plot([r["scans_used"] for r in sel], [r["volume_error_pct"] for r in sel], marker="o", label=m)
    ax.set_xlabel("scans used")
    ax.set_ylabel("regional volume error (%)")
    ax.legend(fontsize=7)
    save_figure(fig, path)


def write_forecasting(out: str | os.PathLike, cohort: Cohort, result: dict, cfg: ForecastConfig, description: str,
                      overwrite: bool = False, write_images: bool = True) -> Path:  # fmt: skip
    """OUT/report.md, scores.tsv, curve.tsv, figures, config.json, the autoencoder and predicted NIfTI, atomically."""
    from longbrain_jax.io.nifti import save_image

    out = Path(out)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_config(cfg, tmp / "config.json", source=description)
        _write_rows(tmp / "scores.tsv", result["rows"])
        if result["curve"]:
            _write_rows(tmp / "curve.tsv", result["curve"])
            curve_figure(result, tmp / "curve.png")
        forecast_figure(cohort, result, tmp / "forecast.png")
        if result.get("model") is not None:
            ae.save_autoencoder(tmp / "autoencoder", result["model"].params, result["model"].cfg, cohort.spatial_shape)
        if result.get("linearity") is not None and len(result["linearity"]["r2"]):
            linearity_figure(result["linearity"], tmp / "linearity.png")
        (tmp / "results.json").write_text(json.dumps({"segmenter_dice": result["segmenter_dice"], "seconds": result["seconds"]}, indent=2) + "\n")
        if write_images:
            roles = result["roles"]
            for name, f in result["forecasts"].items():
                for i, j in np.argwhere(roles >= 2):
                    sid, ses = cohort.subject_ids[i], cohort.session_ids[i][j]
                    stem = tmp / "predictions" / name / f"sub-{sid}" / f"ses-{ses}" / "anat" / f"sub-{sid}_ses-{ses}_desc-{name.replace('_', '')}"
                    save_image(stem.with_name(stem.name + "_T1w.nii.gz"), f.images[i, j], cohort.affines[i])
                    if f.labels is not None:
                        save_image(stem.with_name(stem.name + "_dseg.nii.gz"), f.labels[i, j].astype(np.int32), cohort.affines[i])
        figures = "\n![forecasts](forecast.png)\n" + ("\n![scans used](curve.png)\n" if result["curve"] else "")
        figures += "\n![latent linearity](linearity.png)\n" if (tmp / "linearity.png").exists() else ""
        (tmp / "report.md").write_text(f"# Forecasting scans\n\n{description}\n\n" + results_markdown(result) + figures)
    return out / "report.md"


def _write_rows(path: Path, rows: list[dict]) -> None:
    """Dict rows as a TSV; columns are the union of keys in first-seen order, blanks where missing."""

    header = list(dict.fromkeys(k for r in rows for k in r))
    write_tsv(path, header, [[r.get(k, "") for k in header] for r in rows])
