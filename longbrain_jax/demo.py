"""`longbrain demo`: a small simulated cohort end to end, and a report whose every number means something.

Stages: simulate a cohort from the MNI152 template with known aging (healthy and
dementia-like) -> write it as BIDS with ground truth -> read it back (validated,
normalised) -> check the truth (regional rates against the literature, |J|, folding,
monotonicity, image agreement) -> fit one spatiotemporal INR per subject in one program
-> register a few subjects in continuous time, scored against the true volume change ->
forecast the held-out scans with every forecaster -> a Markdown report that opens with
what it found. Figures carry their spread over subjects or scans (mean +- sd, or median
and interquartile range). Classification needs more subjects than a demo has, so its
section shows the weights' embedding and points to its notebook and benchmark.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from longbrain_jax import metrics
from longbrain_jax import segmenter as sg
from longbrain_jax.atlas import REGIONS
from longbrain_jax.cohort import ROLES, Cohort
from longbrain_jax.config import write_config
from longbrain_jax.files import atomic_dir
from longbrain_jax.fit import FitConfig, FitResult, StageConfig, fit_cohort
from longbrain_jax.fit.evaluate import carried_forward_psnr
from longbrain_jax.forecast import ForecastConfig, ForecastResult, run_forecasting, write_forecasting
from longbrain_jax.grid import displacement_from_world, warp
from longbrain_jax.inr import INRConfig
from longbrain_jax.io import IntensityNorm, LoadConfig, load_displacement, load_image, read_bids
from longbrain_jax.io.bids import derivative_path
from longbrain_jax.latent.autoencoder import AutoencoderConfig
from longbrain_jax.noder import NODERConfig
from longbrain_jax.progress import progress_bar
from longbrain_jax.registration import DisplacementConfig, RegistrationConfig
from longbrain_jax.registration.cohort import register_cohort
from longbrain_jax.registration.evaluate import evaluate_against_truth, summarise
from longbrain_jax.report import jacobian_overlay, markdown_table, save_figure, weight_embedding
from longbrain_jax.segmenter import SegmenterConfig
from longbrain_jax.simulate import SimulationConfig, Simulator
from longbrain_jax.simulate.simulator import PIPELINE
from longbrain_jax.weightspace.tokens import stream_vectors

SHOWN = ("hippocampus", "lateral_ventricles")
LITERATURE = {  # %/yr after ~60 (see simulate/atrophy.py for the sources)
    ("healthy", "hippocampus"): "-0.5 to -1.5",
    ("healthy", "lateral_ventricles"): "+2 to +4",
    ("dementia", "hippocampus"): "-3 to -5 (AD)",
    ("dementia", "lateral_ventricles"): "+5 to +8 (AD)",
}
#: the forecast section scores regional volumes only when the U-Net measures the TRUE held-out scans this well (mean % error)
VOLUME_TRUST_PCT = 10.0


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo run (CPU-friendly defaults: a 2D slice at 3 mm, about 4 minutes on 2 cores).

    **Arguments:**

    - `simulation`: the simulated cohort.
    - `normalise`: intensity normalisation applied when the dataset is read back.
    - `fit`: cohort fitting of spatiotemporal INRs (small CPU sizes; its `inr.ndim`
      follows the simulation).
    - `registration`: longitudinal registration of `register_subjects` subjects (its
      network's `ndim` follows the simulation), scored against the true volume change.
      SIREN frequency w0 = 10: at w0 = 3 the field is too smooth to expand the thin
      ventricles of a 3 mm slice (`benchmarks/demo_registration.py`, RESULTS.md).
    - `forecast`: the forecasting experiment (baselines, MRExtrap, NODER).
    - `seed`: the PRNG seed of the fits.
    """

    simulation: SimulationConfig = SimulationConfig(num_subjects=8, resolution_mm=3.0, ndim=2, chunk_size=8)
    normalise: IntensityNorm = IntensityNorm(1.0, 99.0, -1.0, 1.0)
    fit: FitConfig = FitConfig(
        inr=INRConfig(ndim=2, width=64, stream_layers=3, combined_layers=2),
        shared=StageConfig(steps=50, learning_rate=1e-3, sample_fraction=0.05),
        finetune=StageConfig(steps=300, learning_rate=1e-3, sample_fraction=0.1),
        holdout="interpolation_extrapolation",
        chunk_size=8,
        steps_per_call=50,
        checkpoint_every=100,
    )
    forecast: ForecastConfig = ForecastConfig(
        methods=("last_observation", "voxelwise_linear", "mrextrap", "noder"),
        autoencoder=AutoencoderConfig(ndim=2, channels=(8, 16, 32), discriminator_channels=(8, 16, 16), perceptual_channels=(8, 16),
                                      steps=150, batch_size=8, learning_rate=2e-3, adversarial_start=100),
        noder=NODERConfig(iterations=50),
        segmenter=SegmenterConfig(channels=(8, 16, 32), steps=150, learning_rate=3e-3),
        curve=False,
    )  # fmt: skip
    registration: RegistrationConfig = RegistrationConfig(
        network=DisplacementConfig(ndim=2, width=32, hidden_layers=2, time_features=8, w0=10.0, time_scale=10.0),
        steps=400, learning_rate=2e-3, patches=16, patch_size=9, holdout="interpolation_extrapolation",
        chunk_size=4, steps_per_call=50, checkpoint_every=200,
    )  # fmt: skip
    register_subjects: int = 4
    seed: int = 0

    def quick(self) -> DemoConfig:
        """Every stage with a small fraction of its steps: a check that an installation
        works end to end in about a minute; the figures it reports mean nothing."""
        r = dataclasses.replace
        fc = self.forecast
        return r(
            self,
            fit=r(self.fit, shared=r(self.fit.shared, steps=10), finetune=r(self.fit.finetune, steps=50)),
            registration=r(self.registration, steps=50),
            forecast=r(fc, autoencoder=r(fc.autoencoder, steps=20, adversarial_start=10), noder=r(fc.noder, iterations=5),
                       segmenter=r(fc.segmenter, steps=20)),
        )  # fmt: skip


def mean_sd(values, digits: int = 2, scale: float = 1.0, signed: bool = False) -> str:
    """Mean ± sd of the finite values (sd with n - 1) as text, or "-" if there are none."""
    v = scale * np.asarray([x for x in values if np.isfinite(x)], float)
    if v.size == 0:
        return "-"
    sign = "+" if signed else ""
    sd = f" ± {v.std(ddof=1):.{digits}f}" if v.size > 1 else ""
    return f"{v.mean():{sign}.{digits}f}{sd}"


def median_iqr(values, digits: int = 1) -> str:
    """Median [q1, q3] of the finite values as text, or "-"."""
    v = np.asarray([x for x in values if np.isfinite(x)], float)
    if v.size == 0:
        return "-"
    q1, q2, q3 = np.percentile(v, [25, 50, 75])
    return f"{q2:.{digits}f} [{q1:.{digits}f}, {q3:.{digits}f}]"


def run_demo(
    out: str | os.PathLike, cfg: DemoConfig = DemoConfig(), overwrite: bool = False, quiet: bool = False
) -> Path:
    """Run the demo into the folder `out` (created atomically) and return the report path."""
    out = Path(out)
    stages = progress_bar(7, "demo", enabled=not quiet, unit="stage")
    started = time.perf_counter()
    found: dict[str, str] = {}  # the summary's lines, one per section
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_config(cfg, tmp / "config.json", command="longbrain demo")

        stages.set_postfix_str("simulate")
        bids = Simulator(cfg.simulation).run(tmp / "bids")
        stages.update()

        stages.set_postfix_str("read BIDS")
        cohort = read_bids(bids, LoadConfig(normalise=cfg.normalise))
        stages.update()

        stages.set_postfix_str("ground truth")
        truth_md = _truth_section(tmp, bids, cohort, found)
        stages.update()

        stages.set_postfix_str("fit INRs")
        fit_cfg = dataclasses.replace(cfg.fit, inr=dataclasses.replace(cfg.fit.inr, ndim=cohort.ndim), seed=cfg.seed)
        fit = fit_cohort(cohort, tmp / "fit", fit_cfg, source_description="bids/")
        fit_md = _fit_section(cohort, fit, cfg.fit, found)
        weights_md = _weights_section(tmp / "fit" / "figures" / "weights.png", cohort, fit, found)
        stages.update()

        stages.set_postfix_str("register")
        register_md = _register_section(tmp / "register", bids, cohort, cfg, found)
        stages.update()

        stages.set_postfix_str("forecast")
        forecast_md = _forecast_section(tmp / "forecast", cohort, cfg.forecast, found)
        stages.update()

        stages.set_postfix_str("report")
        seconds = time.perf_counter() - started
        sections = [truth_md, fit_md, register_md, forecast_md, weights_md]
        (tmp / "report.md").write_text(_report(cfg, cohort, found, sections, seconds))
        stages.update()
    stages.close()
    return out / "report.md"


# -- 1. the cohort and its ground truth ----------------------------------------------------------
def _group_volumes(labels: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """(len(SHOWN),) volumes in mm^3 of the shown region groups in one label map."""
    per_label = [
        np.asarray(metrics.regional_volumes(jnp.asarray(labels), affine, REGIONS[name])).sum() for name in SHOWN
    ]
    return np.array(per_label)


def _annual_change(times: np.ndarray, volumes: np.ndarray) -> float:
    """Least-squares slope of log volume against time, in %/yr."""
    return float(100.0 * np.polyfit(times, np.log(volumes), 1)[0]) if times.size >= 2 else float("nan")


def _truth_section(out: Path, bids: Path, cohort: Cohort, found: dict) -> str:
    """Regional rates against the literature, the true |J| per subject and image agreement, as Markdown."""
    rates: dict[str, list[list[float]]] = {}
    deform_rows, agree, jac_last = [], {}, {}
    for i, sid in enumerate(cohort.subject_ids):
        n, group = int(cohort.num_scans[i]), cohort.groups[i]
        vols = np.stack([_group_volumes(cohort.labels[i, j], cohort.affines[i]) for j in range(n)])
        rates.setdefault(group, []).append([_annual_change(cohort.times[i, :n], vols[:, r]) for r in range(len(SHOWN))])
        jacs, base = [], jnp.asarray(cohort.volumes[i, 0])
        for j, ses in enumerate(cohort.session_ids[i]):
            jac, affine = load_image(derivative_path(bids, sid, ses, "jacdet", PIPELINE))
            jacs.append(jac)
            if j:  # agreement with the baseline before and after undoing the true deformation
                u_mm, _ = load_displacement(derivative_path(bids, sid, ses, "truth", PIPELINE, suffix="xfm"))
                scan = jnp.asarray(cohort.volumes[i, j])
                undone = warp(scan, displacement_from_world(jnp.asarray(u_mm), affine))
                for key, value in (("raw", scan), ("undone", undone)):
                    agree.setdefault((group, key), []).append(float(metrics.ssim(value, base, 2.0)))
        jac_last[i] = jacs[-1]
        series, head = jnp.asarray(np.stack(jacs)), cohort.labels[i, 0] > 0
        deform_rows.append([
            f"sub-{sid}", group, n, f"{cohort.times[i, n - 1]:.1f}",
            *[float(jacs[-1][np.isin(cohort.labels[i, 0], REGIONS[name])].mean()) for name in reversed(SHOWN)],
            float(metrics.folding_fraction(series, jnp.broadcast_to(jnp.asarray(head), series.shape))),
            float(metrics.monotone_fraction(series, jnp.asarray(cohort.times[i, :n]), jnp.asarray(head), tol=1e-3)),
        ])  # fmt: skip
    groups = sorted(rates, reverse=True)  # healthy first
    rate_rows = [[g, name, len(rates[g]), mean_sd([r[k] for r in rates[g]], signed=True), LITERATURE.get((g, name), "")]
                 for g in groups for k, name in enumerate(SHOWN)]  # fmt: skip
    agree_rows = [
        [
            g,
            len(agree.get((g, "raw"), [])),
            mean_sd(agree.get((g, "raw"), []), 3),
            mean_sd(agree.get((g, "undone"), []), 3),
        ]
        for g in groups
    ]
    _jacobian_figure(out / "jacobians.png", cohort, jac_last)
    ventricles = {g: mean_sd([r[1] for r in rates[g]], 1, signed=True) for g in groups}
    folding = max(r[-2] for r in deform_rows)
    monotone = min(r[-1] for r in deform_rows)
    found["truth"] = (
        "**The simulated truth behaves as aging brains do**: ventricles grew "
        + ", ".join(f"{v} %/yr ({g})" for g, v in ventricles.items())
        + f" from the label maps; the true deformations never fold (largest folded share {folding:.1e}) and "
        f"at least {100 * monotone:.1f}% of each head's voxels change volume in one direction."
    )
    return "\n".join([
        "## 1. The simulated cohort and its ground truth\n",
        "Annualised change of the written label maps (least-squares slope of log volume per subject; mean ± sd "
        "over subjects), against the literature ranges the simulator follows. Dementia-like subjects differ only "
        "in brain-age drift, as in Aulakh et al. (their brain age runs up to about twice as fast), so they sit "
        "between healthy aging and Alzheimer's disease.\n",
        markdown_table(["group", "region", "subjects", "%/yr (label maps)", "literature %/yr"], rate_rows),
        "|J| of the true map from the baseline scan at the last scan (> 1: growth), read from "
        "`bids/derivatives/simulator/sub-*/ses-*/anat/*_desc-jacdet.nii.gz`; the share of folded voxels "
        "(|J| <= 0) and of head voxels whose volume-change rate keeps one sign over time.\n",
        markdown_table(["subject", "group", "scans", "years", "ventricle |J|", "hippocampus |J|", "folding", "monotone"], deform_rows),
        "![true |J| over the anatomy](jacobians.png)\n",
        "SSIM of each follow-up with its baseline (mean ± sd over follow-ups), as scanned and after undoing the "
        "true deformation: undoing it brings the scans closer, and what remains is each scan's own noise and "
        "bias field.\n",
        markdown_table(["group", "follow-ups", "SSIM as scanned", "SSIM after undoing the truth"], agree_rows),
    ])  # fmt: skip


def _jacobian_figure(path: Path, cohort: Cohort, jac_last: dict[int, np.ndarray]) -> None:
    picks = [cohort.groups.index(g) for g in ("healthy", "dementia") if g in cohort.groups]
    titles = [[f"true |J| at +{cohort.times[i, int(cohort.num_scans[i]) - 1]:.1f} y"] for i in picks]
    names = [f"sub-{cohort.subject_ids[i]} ({cohort.groups[i]})" for i in picks]
    masks = [cohort.labels[i, 0] > 0 for i in picks]
    save_figure(
        jacobian_overlay(
            [cohort.volumes[i, 0] for i in picks], [[jac_last[i]] for i in picks], names, titles, masks=masks
        ),
        path,
    )


# -- 2. INRs and their weights -------------------------------------------------------------------
def _fit_section(cohort: Cohort, fit: FitResult, cfg: FitConfig, found: dict) -> str:
    """Reconstruction and held-out PSNR against carrying the previous scan forward, as Markdown."""
    carried = carried_forward_psnr(fit, cohort.volumes)
    ok = (fit.diverged_at < 0)[:, None]
    rows, gains = [], {}
    for role in ("train", "interpolation", "extrapolation"):
        for group in sorted(set(cohort.groups), reverse=True):
            sel = (fit.roles == ROLES.index(role)) & ok
            sel &= np.array([g == group for g in cohort.groups])[:, None]
            if not sel.any():
                continue
            gain = fit.psnr[sel] - carried[sel]
            gains.setdefault(role, []).extend(gain[np.isfinite(gain)].tolist())
            rows.append([role, group, int(sel.sum()), median_iqr(fit.psnr[sel]), median_iqr(fit.ssim[sel], 3),
                         median_iqr(carried[sel]) if role != "train" else "-", mean_sd(gain, 1, signed=True) if role != "train" else "-"])  # fmt: skip
    trained = np.nanmedian(fit.psnr[(fit.roles == ROLES.index("train")) & ok])
    line = (
        f"**One INR per subject, fitted in one program**, reconstructs its training scans at a median {trained:.1f} dB"
    )
    said = [f"{mean_sd(gains[role], 1, signed=True)} dB {where}" for role, where in
            (("interpolation", "between training scans"), ("extrapolation", "past the last one")) if gains.get(role)]  # fmt: skip
    if said:
        line += "; held-out scans against carrying the previous scan forward (PSNR gain, paired): " + ", ".join(said)
    found["fit"] = line + "."
    return "\n".join([
        "## 2. Spatiotemporal INRs fitted to the cohort\n",
        f"One semi-disentangled INR per subject (width {cfg.inr.width}, {cfg.inr.spatial_activation}/"
        f"{cfg.inr.temporal_activation}/{cfg.inr.combined_activation}), a shared initialisation ({cfg.shared.steps} "
        f"steps) then {cfg.finetune.steps} steps for every subject at once; a middle scan (subjects with >= 4 scans) "
        "and the last scan (>= 3) held out. PSNR (dB) and SSIM of the reconstruction at each scan's age: median "
        "[interquartile range] over scans. A held-out scan's reference is the previous training scan carried "
        "forward: every scan has its own noise and bias field, which no model can predict, so the gain over that "
        "reference (mean ± sd over scans, paired) is what the model adds. Outputs: `fit/`.\n",
        markdown_table(["scans", "group", "n", "PSNR", "SSIM", "carried-forward PSNR", "gain over carried forward (dB)"], rows),
        "![reconstructions](fit/figures/reconstruction.png)\n",
    ])  # fmt: skip


def _weights_section(path: Path, cohort: Cohort, fit: FitResult, found: dict) -> str:
    """The weights' embedding by group, and where classification is measured (Markdown)."""
    save_figure(
        weight_embedding({s: stream_vectors(fit.params, [s]) for s in ("P_space", "P_time", "P_com")}, fit.groups), path
    )
    n = cohort.num_subjects
    found["classify"] = (
        f"**Classification is not measured here**: with {n} subjects a held-out split tests about {max(n // 2, 1)}, and each "
        f"one moves accuracy by {100 / max(n // 2, 1):.0f} points. Section 5 shows the weights it would read; notebook "
        "`02_inr_weight_space` and `benchmarks/trajectory_classification.py` measure it with k-fold spreads."
    )
    return "\n".join([
        "## 5. The INR weights as data, and where classification is measured\n",
        "Each subject's fitted network is split into a spatial stream (P_space: layers of x only), a temporal "
        "stream (P_time: layers of t only) and the layers that combine them (P_com); the classifier of the paper "
        "reads them as tokens. Below: the first two principal components of each stream, by group.\n",
        "![weights by group](fit/figures/weights.png)\n",
        f"Accuracy on {n} subjects would say nothing (a test split of about {max(n // 2, 1)}). To measure it: "
        "`longbrain classify FIT BIDS OUT` on a larger cohort, notebook `notebooks/02_inr_weight_space.ipynb` "
        "(the inr2vec-style encoder, logistic regression on every stream, SFCN on the scans, the change-image "
        "PCA and an oracle that reads the simulator's truth, on a paired cohort), and "
        "`benchmarks/trajectory_classification.py` (repeated stratified k-fold; figures in `benchmarks/RESULTS.md`).\n",
    ])  # fmt: skip


# -- 3. registration -----------------------------------------------------------------------------
def _register_section(out: Path, bids: Path, cohort: Cohort, cfg: DemoConfig, found: dict) -> str:
    """Register a few subjects, draw estimated and true |J| over the anatomy, score the volume change (Markdown)."""
    eligible = sorted(
        (i for i in range(cohort.num_subjects) if cohort.num_scans[i] >= 2), key=lambda i: cohort.num_scans[i] < 3
    )
    picks = sorted(eligible[: cfg.register_subjects])  # subjects with held-out scans first
    if not picks:
        return "## 3. Longitudinal registration in continuous time\n\nSkipped: no subject has two scans.\n"
    reg = dataclasses.replace(
        cfg.registration, network=dataclasses.replace(cfg.registration.network, ndim=cohort.ndim), seed=cfg.seed
    )
    source = cohort.select(picks)
    extra = float(source.ages[source.mask].max()) + 5.0
    register_cohort(source, out, reg, extra_ages=(extra,))
    anatomy, rows, titles, names, masks = [], [], [], [], []
    for k in range(len(picks)):
        sid, n = source.subject_ids[k], int(source.num_scans[k])
        whens = [f"ses-{source.session_ids[k][j]}" for j in range(1, n)] + [f"age-{extra:05.1f}".replace(".", "p")]
        estimated = [load_image(out / f"sub-{sid}" / "anat" / f"sub-{sid}_{w}_desc-jacdet.nii.gz")[0] for w in whens]
        true = [
            load_image(derivative_path(bids, sid, source.session_ids[k][j], "jacdet", PIPELINE))[0] for j in range(1, n)
        ]
        ages = [f"{a:.0f} y" for a in source.ages[k, 1:n]]
        for label, maps, cols in (("estimated", estimated, [*ages, f"{extra:.0f} y (no scan)"]), ("true", true, ages)):
            anatomy.append(source.volumes[k, 0])
            rows.append(maps)
            titles.append(cols)
            names.append(f"sub-{sid} {label}")
            masks.append(source.labels[k, 0] > 0)
    save_figure(jacobian_overlay(anatomy, rows, names, titles, masks=masks), out / "jacobians.png")
    scored = evaluate_against_truth(out, bids, reg)
    summary = summarise(scored)
    table = []
    for role, s in summary.items():
        sel = [r for r in scored if r["role"] == role]
        cells = []
        for name in reversed(SHOWN):
            true, est = (np.array([r[f"{p}volume_change_{name}"] for r in sel]) for p in ("true_", ""))
            cells += [mean_sd(true, 1, 100, True), mean_sd(est, 1, 100, True)]
        table.append(
            [
                role,
                s["n"],
                *cells,
                f"{s['jac_error']:.3f} / {s['jac_true_change']:.3f}",
                f"{s['monotone']:.3f}",
                f"{s['folding']:.1e}",
            ]
        )
    train = [r for r in scored if r["role"] == "train"]

    def recovered(name: str) -> str:  # estimated / true volume change of a structure on the training follow-ups, %
        share = [
            r[f"volume_change_{name}"] / r[f"true_volume_change_{name}"]
            for r in train
            if abs(r[f"true_volume_change_{name}"]) > 1e-3
        ]
        return mean_sd(share, 0, 100)

    found["register"] = (
        f"**Continuous-time registration** ({reg.steps} steps, {len(picks)} subjects) recovered {recovered('lateral_ventricles')}% "
        f"of the true ventricle expansion and {recovered('hippocampus')}% of the hippocampal atrophy on its training follow-ups "
        f"(estimated over true volume change), with {summary['train']['folding']:.1e} folded voxels and "
        f"{100 * summary['train']['monotone']:.1f}% of brain voxels monotone in time."
        if train
        else "**Continuous-time registration**: no training follow-up to score."
    )  # fmt: skip
    return "\n".join([
        "## 3. Longitudinal registration in continuous time\n",
        f"One displacement INR u(x, t) per subject for {len(picks)} subjects ({reg.steps} AdamW steps, width "
        f"{reg.network.width}, all four losses), trained on all but the middle and last scans, so its |J| at the "
        "held-out ages is an interpolation and an extrapolation. Volume change of each structure since baseline "
        "(mean |J| - 1 over its baseline voxels, %), true and estimated, mean ± sd over follow-ups; the voxelwise "
        "|J| error against the true mean change; the share of brain voxels whose |J| is monotone in time; "
        "folding. At this size the model recovers part of the change; `benchmarks/registration.py` measures it "
        "at 2000 steps and in 3D against ANTs SyN (`benchmarks/RESULTS.md`), notebook `03_registration` shows "
        "d|J|/dt. Outputs: `register/` (`longbrain register`).\n",
        markdown_table(["scans", "n", "ventricles true %", "ventricles estimated %", "hippocampus true %", "hippocampus estimated %",
                        "|J| error / true change", "monotone", "folding"], table),  # fmt: skip
        "Estimated |J| (at each follow-up and 5 years past the last scan) above the truth, over the baseline:\n",
        "![registration jacobians](register/jacobians.png)\n",
    ])  # fmt: skip


# -- 4. forecasting ------------------------------------------------------------------------------
def _forecast_section(out: Path, cohort: Cohort, cfg: ForecastConfig, found: dict) -> str:
    """Every forecaster on the same held-out scans, with paired gains over the last observation (Markdown)."""
    usable = int(np.sum(cohort.num_scans >= 3))
    if usable < 4:  # the slope prior is estimated from the other subjects' known scans
        found["forecast"] = f"**Forecasting** skipped: needs at least 4 subjects with 3 or more scans (have {usable})."
        return f"## 4. Forecasting held-out scans\n\nSkipped: needs at least 4 subjects with 3 or more scans (have {usable}).\n"
    result = run_forecasting(
        cohort, dataclasses.replace(cfg, autoencoder=dataclasses.replace(cfg.autoencoder, ndim=cohort.ndim))
    )
    write_forecasting(out, result, cfg, "The demo cohort.", cohort.spatial_shape)
    table, best, volumes_md = forecast_table(result)
    found["forecast"] = (
        f"**Forecasting the extrapolated scans**: {best[0]} did best, {best[1]} dB PSNR against the last observation carried forward (paired, mean ± sd)."
        if best
        else "**Forecasting**: no extrapolated scan held out."
    )
    return "\n".join([
        "## 4. Forecasting held-out scans\n",
        f"The scans held out above predicted from each subject's others by last observation carried forward, "
        f"voxelwise linear regression, MRExtrap (autoencoder {cfg.autoencoder.steps} steps, population slope prior) "
        f"and NODER ({cfg.noder.iterations} iterations). PSNR and SSIM against the true scan (mean ± sd over held-out "
        "scans) and the paired PSNR gain over the last observation; Dice of the labels a method carries with it. "
        "All tables (MAE, folding, seconds): `forecast/results.md`; notebook `04_forecasting`; "
        "`benchmarks/forecasting.py`.\n",
        markdown_table(["method", "held out", "scans", "PSNR dB", "SSIM", "PSNR gain over last observation", "Dice"], table),
        volumes_md,
        "![forecasts](forecast/forecast.png)\n",
    ])  # fmt: skip


def forecast_table(result: ForecastResult) -> tuple[list[list[object]], tuple[str, str] | None, str]:
    """(rows of the demo's forecast table, (best extrapolating method, its paired gain), a note on volumes)."""
    reference = "segmenter on the true scan"
    key = lambda r: (r["participant_id"], r["age"])  # noqa: E731
    last = {key(r): r["psnr"] for r in result.rows if r["method"] == "last_observation"}
    rows, best = [], None
    for method in dict.fromkeys(r["method"] for r in result.rows if r["method"] != reference):
        for role in ("interpolation", "extrapolation"):
            sel = [r for r in result.rows if r["method"] == method and r["role"] == role]
            if not sel:
                continue
            gain = [r["psnr"] - last[key(r)] for r in sel if key(r) in last]
            dice = [r["dice"] for r in sel if "dice" in r]
            rows.append([method, role, len(sel), mean_sd([r["psnr"] for r in sel], 1), mean_sd([r["ssim"] for r in sel], 3),
                         mean_sd(gain, 1, signed=True) if method != "last_observation" else "(reference)", mean_sd(dice, 3) if dice else "-"])  # fmt: skip
            if (
                role == "extrapolation"
                and method != "last_observation"
                and gain
                and (best is None or np.mean(gain) > best[2])
            ):
                best = (method, mean_sd(gain, 1, signed=True), float(np.mean(gain)))
    own = [np.mean([r[f"volume_error_pct_{s}"] for s in sg.SCORED]) for r in result.rows if r["method"] == reference]
    if own and np.mean(own) <= VOLUME_TRUST_PCT:
        volumes = [[m, role, mean_sd([np.mean([r[f"volume_error_pct_{s}"] for s in sg.SCORED]) for r in result.rows
                                      if r["method"] == m and r["role"] == role], 1)]
                   for m in dict.fromkeys(r["method"] for r in result.rows) for role in ("interpolation", "extrapolation")]  # fmt: skip
        note = "Regional volume error (%, mean over the scored structures; the U-Net's own error on the true scans for reference):\n\n"
        note += markdown_table(["method", "held out", "volume error %"], [v for v in volumes if v[2] != "-"])
    elif own:
        dice = ", ".join(f"{k} {v:.2f}" for k, v in result.segmenter_dice.items())
        note = (f"Regional volume errors are not scored here: the U-Net trained on this cohort's known scans measures the "
                f"TRUE held-out scans with a {np.mean(own):.0f}% mean volume error (Dice {dice}), so it cannot tell "
                f"forecasts apart at this size (they are in `forecast/results.md`, and measured at scale in the benchmark).\n")  # fmt: skip
    else:
        note = ""
    return rows, (best[0], best[1]) if best else None, note


# -- the report ----------------------------------------------------------------------------------
def _report(cfg: DemoConfig, cohort: Cohort, found: dict, sections: list[str], seconds: float) -> str:
    sim = cfg.simulation
    summary = [found[k] for k in ("truth", "fit", "register", "forecast", "classify") if k in found]
    return "\n".join([
        "# longbrain demo report\n",
        f"A simulated cohort of {cohort.num_subjects} subjects ({cohort.groups.count('healthy')} healthy, "
        f"{cohort.groups.count('dementia')} dementia-like), {int(cohort.mask.sum())} scans at ages "
        f"{cohort.ages[cohort.mask].min():.1f}-{cohort.ages[cohort.mask].max():.1f}, {sim.ndim}D grid "
        f"{cohort.spatial_shape} at {sim.resolution_mm} mm, seed {sim.seed}; ran in {seconds:.0f} s on "
        f"{jax.devices()[0].platform} ({len(jax.devices())} device(s)).\n",
        "## What this run found\n",
        *[f"- {line}" for line in summary],
        "",
        "Configuration: `config.json` (`longbrain demo --help` for sizes). The dataset and its ground truth: "
        "`bids/` (`bids/derivatives/simulator/README.md`). Every method at a researcher's scale: `notebooks/` "
        "(executed, with outputs) and `benchmarks/RESULTS.md` (measured figures and the commands that made them).\n",
        "![simulated subjects](bids/derivatives/simulator/montage.png)\n",
        *sections,
    ])  # fmt: skip
