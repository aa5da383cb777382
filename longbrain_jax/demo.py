"""`longbrain demo`: a small cohort end to end, and a report of what the library does.

Stages: simulate a phantom cohort with known deformations -> write it as BIDS ->
read it back (validated, normalised) -> ground-truth Jacobians, folding and
monotonicity -> regional volume trajectories per group -> image agreement before and
after undoing the true deformation -> subject-level splits and classification
metrics -> derivatives (NIfTI) and a Markdown report with figures.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from longbrain_jax import metrics
from longbrain_jax.cohort import stratified_kfold, train_test_split
from longbrain_jax.config import write_config
from longbrain_jax.files import atomic_dir
from longbrain_jax.grid import displacement_to_world, jacobian_determinant, warp
from longbrain_jax.io import IntensityNorm, LoadConfig, read_bids, save_displacement, write_bids, write_derivative
from longbrain_jax.io.bids import derivative_path
from longbrain_jax.progress import progress_bar
from longbrain_jax.report import markdown_table, save_figure, series_montage
from longbrain_jax.simulate import PHANTOM_LABELS, PhantomConfig, make_phantom_cohort

REGIONS = {"ventricles": PHANTOM_LABELS["ventricles"], "hippocampus": PHANTOM_LABELS["hippocampus"]}


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo run (CPU-friendly defaults).

    **Arguments:**

    - `phantom`: the simulated cohort (subjects, grid, rates).
    - `normalise`: intensity normalisation applied when the dataset is read back.
    - `test_fraction`, `folds`: subject-level split sizes.
    - `seed`: the PRNG seed of every random draw.
    """

    phantom: PhantomConfig = PhantomConfig(num_subjects=8, shape=(48, 48))
    normalise: IntensityNorm = IntensityNorm(lower_percentile=0.0, upper_percentile=100.0, out_min=0.0, out_max=1.0)
    test_fraction: float = 0.5
    folds: int = 2
    seed: int = 0


def _annual_change(times: np.ndarray, values: np.ndarray) -> float:
    """Least-squares slope of `values` against `times`, in % of the baseline value per year."""
    if times.size < 2:
        return float("nan")
    slope = np.polyfit(times, values, 1)[0]
    return float(100.0 * slope / values[0])


def run_demo(out: str | os.PathLike, cfg: DemoConfig = DemoConfig(), overwrite: bool = False, quiet: bool = False) -> Path:
    """Run the demo into the folder `out` (created atomically) and return the report path."""
    out = Path(out)
    key = jax.random.key(cfg.seed)
    k_cohort, k_split, k_fold = jax.random.split(key, 3)
    stages = progress_bar(6, "demo", enabled=not quiet, unit="stage")
    started = time.perf_counter()
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_config(cfg, tmp / "config.json", command="longbrain demo")

        stages.set_postfix_str("simulate")
        truth_cohort, truth_disp = make_phantom_cohort(k_cohort, cfg.phantom)
        bids = write_bids(truth_cohort, tmp / "bids", name="longbrain demo phantom cohort")
        stages.update()

        stages.set_postfix_str("read BIDS")
        cohort = read_bids(bids, LoadConfig(normalise=cfg.normalise))
        roundtrip = {
            "ages equal": bool(np.array_equal(cohort.ages, truth_cohort.ages)),
            "labels equal": bool(np.array_equal(cohort.labels, truth_cohort.labels)),
            "affines equal": bool(np.allclose(cohort.affines, truth_cohort.affines)),
            "intensity range": f"[{cohort.volumes[cohort.mask].min():.2f}, {cohort.volumes[cohort.mask].max():.2f}]",
        }
        stages.update()

        stages.set_postfix_str("Jacobians")
        jac = np.asarray(jax.jit(jax.vmap(jax.vmap(jacobian_determinant)))(jnp.asarray(truth_disp)))
        mask_t = cohort.mask
        deform_rows = []
        for i, sid in enumerate(cohort.subject_ids):
            t = int(mask_t[i].sum())
            times = cohort.times[i, :t]
            brain = cohort.labels[i, 0] > 0
            stats = metrics.region_stats(jac[i, t - 1], cohort.labels[i, 0], list(REGIONS.values()))
            deform_rows.append(
                [
                    f"sub-{sid}",
                    cohort.groups[i],
                    t,
                    f"{times[-1]:.1f}",
                    float(stats["mean"][0]),
                    float(stats["mean"][1]),
                    float(metrics.folding_fraction(jac[i, :t], jnp.broadcast_to(brain, jac[i, :t].shape))),
                    float(metrics.monotone_fraction(jac[i, :t], times, brain, tol=1e-6)),
                ]
            )
            for j in range(t):
                ses = cohort.session_ids[i][j]
                write_derivative(bids, sid, ses, "jacdet", jac[i, j], cohort.affines[i])
            save_displacement(
                derivative_path(bids, sid, cohort.session_ids[i][t - 1], "truth", suffix="xfm"),
                np.asarray(displacement_to_world(jnp.asarray(truth_disp[i, t - 1]), cohort.affines[i])),
                cohort.affines[i],
            )
        stages.update()

        stages.set_postfix_str("volumes")
        ids = list(REGIONS.values())
        vols = np.asarray(
            jax.vmap(jax.vmap(lambda lab, aff: metrics.regional_volumes(lab, aff, ids), in_axes=(0, None)))(
                jnp.asarray(cohort.labels), jnp.asarray(cohort.affines)
            )
        )
        vol_rows = []
        changes = {g: [] for g in sorted(set(cohort.groups))}
        for i, sid in enumerate(cohort.subject_ids):
            t = int(mask_t[i].sum())
            rates = [_annual_change(cohort.times[i, :t], vols[i, :t, r]) for r in range(len(ids))]
            changes[cohort.groups[i]].append(rates)
            vol_rows.append([f"sub-{sid}", cohort.groups[i], *[float(vols[i, 0, r]) for r in range(len(ids))], *rates])
        group_rows = [[g, len(v), *np.nanmean(np.array(v), 0)] for g, v in changes.items()]
        stages.update()

        stages.set_postfix_str("image agreement")
        agree_rows = []
        for i, sid in enumerate(cohort.subject_ids):
            t = int(mask_t[i].sum())
            base = jnp.asarray(cohort.volumes[i, 0])
            for j in range(1, t):
                scan = jnp.asarray(cohort.volumes[i, j])
                undone = warp(scan, jnp.asarray(truth_disp[i, j]))
                agree_rows.append(
                    [
                        f"sub-{sid}",
                        f"ses-{cohort.session_ids[i][j]}",
                        f"{cohort.times[i, j]:.1f}",
                        float(metrics.ssim(scan, base, 1.0)),
                        float(metrics.ssim(undone, base, 1.0)),
                        float(metrics.psnr(scan, base, 1.0)),
                        float(metrics.psnr(undone, base, 1.0)),
                        float(metrics.local_ncc(undone, base)),
                    ]
                )
        stages.update()

        stages.set_postfix_str("splits and report")
        strata = cohort.groups
        train, test = train_test_split(k_split, cohort.num_subjects, cfg.test_fraction, strata=strata)
        folds = stratified_kfold(k_fold, cohort.num_subjects, cfg.folds, strata=strata)
        y, classes = cohort.group_index(("healthy", "dementia"))
        # A one-feature rule on the TRUE deformation (mean ventricle |J| growth per year):
        # a check of the metric code on known answers, not a learned classifier.
        score = np.array([(r[4] - 1.0) / max(float(cohort.times[i].max()), 1e-3) for i, r in enumerate(deform_rows)])
        threshold = float(np.median(score[train]))
        pred = (score[test] > threshold).astype(int)
        cls = {
            "accuracy": metrics.accuracy(y[test], pred),
            "balanced accuracy": metrics.balanced_accuracy(y[test], pred),
            "ROC AUC": metrics.roc_auc(y[test], score[test]) if len(set(y[test])) == 2 else float("nan"),
        }
        figures = _figures(tmp, cohort, jac, vols, ids)
        report = _report(cfg, cohort, roundtrip, deform_rows, vol_rows, group_rows, agree_rows, train, test, folds, classes, cls, figures, time.perf_counter() - started)
        (tmp / "report.md").write_text(report)
        stages.update()
    stages.close()
    return out / "report.md"


def _figures(out: Path, cohort, jac: np.ndarray, vols: np.ndarray, ids: list[int]) -> list[str]:
    picks = [cohort.groups.index(g) for g in ("healthy", "dementia") if g in cohort.groups]
    rows, jrows, titles = [], [], []
    for i in picks:
        t = int(cohort.mask[i].sum())
        rows.append([cohort.volumes[i, j] for j in range(t)])
        jrows.append([jac[i, j] for j in range(t)])
        titles.append([f"age {cohort.ages[i, j]:.1f}" for j in range(t)])
    names = [f"sub-{cohort.subject_ids[i]} ({cohort.groups[i]})" for i in picks]
    save_figure(series_montage(rows, names, titles, vmin=0, vmax=1), out / "scans.png")
    save_figure(series_montage(jrows, names, titles, cmap="RdBu_r", vmin=0.7, vmax=1.3), out / "jacobians.png")
    fig, axes = plt.subplots(1, len(ids), figsize=(4.5 * len(ids), 3.2))
    for r, (name, ax) in enumerate(zip(REGIONS, np.atleast_1d(axes), strict=True)):
        for i in range(cohort.num_subjects):
            t = int(cohort.mask[i].sum())
            colour = "tab:blue" if cohort.groups[i] == "healthy" else "tab:red"
            ax.plot(cohort.ages[i, :t], vols[i, :t, r], "o-", color=colour, alpha=0.7)
        ax.set_xlabel("age (years)")
        ax.set_ylabel("volume (mm$^3$ per slab)" if cohort.ndim == 2 else "volume (mm$^3$)")
        ax.set_title(f"{name} (blue healthy, red dementia-like)", fontsize=9)
    save_figure(fig, out / "volumes.png")
    return ["scans.png", "jacobians.png", "volumes.png"]


def _report(cfg, cohort, roundtrip, deform_rows, vol_rows, group_rows, agree_rows, train, test, folds, classes, cls, figures, seconds) -> str:
    pc = cfg.phantom
    parts = [
        "# longbrain demo report\n",
        f"Phantom cohort: {cohort.num_subjects} subjects, {int(cohort.mask.sum())} scans, grid {cohort.spatial_shape} "
        f"at {pc.voxel_mm} mm, seed {cfg.seed}; ran in {seconds:.1f} s on {jax.devices()[0].platform} "
        f"({len(jax.devices())} device(s)). Configuration: `config.json`.\n",
        "## BIDS round trip\n",
        "The cohort was written as longitudinal BIDS (`bids/`) and read back with per-scan "
        "normalisation.\n",
        markdown_table(["check", "result"], list(roundtrip.items())),
        "## Ground-truth deformation\n",
        "|J| of the true baseline-to-scan map (>1 growth). Maps in "
        "`bids/derivatives/longbrain/sub-*/ses-*/anat/*_desc-jacdet.nii.gz`; the last scan's "
        "displacement in ITK/ANTs convention (LPS mm) as `*_desc-truth_xfm.nii.gz`.\n",
        markdown_table(
            ["subject", "group", "scans", "years", "ventricle |J| (last)", "hippocampus |J| (last)", "folding", "monotone"],
            deform_rows,
        ),
        f"![scans]({figures[0]})\n\n![jacobians]({figures[1]})\n",
        "## Regional volumes from label maps\n",
        markdown_table(["group", "subjects", "ventricles %/yr", "hippocampus %/yr"], group_rows),
        markdown_table(["subject", "group", "ventricles mm^3", "hippocampus mm^3", "ventricles %/yr", "hippocampus %/yr"], vol_rows),
        f"![volumes]({figures[2]})\n",
        "## Image agreement with baseline, before and after undoing the true deformation\n",
        markdown_table(["subject", "session", "years", "SSIM raw", "SSIM undone", "PSNR raw", "PSNR undone", "local NCC undone"], agree_rows),
        "## Subject-level splits\n",
        f"Train/test ({1 - cfg.test_fraction:.2f}/{cfg.test_fraction:.2f}, stratified by group): "
        f"{len(train)} / {len(test)} subjects; {cfg.folds}-fold test sizes {[len(f[1]) for f in folds]}.\n",
        "Sanity check of the classification metrics (a one-feature threshold on the TRUE ventricle "
        f"|J| per year, classes {classes}; not a learned method):\n",
        markdown_table(["metric", "test value"], list(cls.items())),
    ]
    return "\n".join(parts)
