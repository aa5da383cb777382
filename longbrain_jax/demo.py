"""`longbrain demo`: a small simulated cohort end to end, and a report of what the library does.

Stages: simulate a cohort from the MNI152 template with known aging (healthy and
dementia-like) -> write it as BIDS with ground truth -> read it back (validated,
normalised) -> ground-truth Jacobians, folding and monotonicity -> regional volume
trajectories per group from the label maps -> image agreement before and after
undoing the true deformation -> subject-level splits and classification metrics ->
a Markdown report with figures. Each later capability (fitting, registration,
forecasting, classification) adds its section here.
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
from longbrain_jax.atlas import REGIONS
from longbrain_jax.classification import ClassifyConfig, results_table, run_classification
from longbrain_jax.classifier import TrainConfig
from longbrain_jax.cohort import Cohort, stratified_kfold, train_test_split
from longbrain_jax.config import write_config
from longbrain_jax.files import atomic_dir
from longbrain_jax.fit import FitConfig, FitResult, StageConfig, fit_cohort, load_fit
from longbrain_jax.fit.evaluate import role_summary
from longbrain_jax.forecast import ForecastConfig, results_markdown, run_forecasting, write_forecasting
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
from longbrain_jax.report import jacobian_overlay, markdown_table, save_figure
from longbrain_jax.segmenter import SegmenterConfig
from longbrain_jax.simulate import SimulationConfig, Simulator
from longbrain_jax.simulate.simulator import PIPELINE

SHOWN = ("hippocampus", "lateral_ventricles")
LITERATURE = {  # %/yr after ~60 (see simulate/atrophy.py for the sources)
    ("healthy", "hippocampus"): "-0.5 to -1.5",
    ("healthy", "lateral_ventricles"): "+2 to +4",
    ("dementia", "hippocampus"): "-3 to -5 (AD)",
    ("dementia", "lateral_ventricles"): "+5 to +8 (AD)",
}


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo run (CPU-friendly defaults: a 2D slice at 3 mm).

    **Arguments:**

    - `simulation`: the simulated cohort.
    - `normalise`: intensity normalisation applied when the dataset is read back.
    - `fit`: cohort fitting of spatiotemporal INRs (small CPU sizes; its `inr.ndim`
      follows the simulation).
    - `classify`: the trajectory-classification experiment at toy size (INR-weight
      encoder and logistic regression on some streams, SFCN on the scans).
    - `registration`: longitudinal registration of the first `register_subjects`
      subjects (its network's `ndim` follows the simulation), scored against the truth.
    - `forecast`: the forecasting experiment at toy size (baselines, MRExtrap, NODER;
      the spatiotemporal INR's forecasts are the held-out rows of the fit above).
    - `test_fraction`, `folds`: subject-level split sizes.
    - `seed`: the PRNG seed of the splits.
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
    classify: ClassifyConfig = ClassifyConfig(
        token_widths=(32, 64),
        head_width=32,
        encoder=TrainConfig(epochs=30, batch_size=4, learning_rate=1e-3),
        baseline=TrainConfig(epochs=30, batch_size=4, learning_rate=1e-3),
        sfcn_channels=(8, 16, 16, 32, 32),
        sfcn=TrainConfig(epochs=30, batch_size=4, learning_rate=1e-3),
        combinations=(("P_space",), ("P_time",), ("P_space", "P_time", "P_com")),
    )
    forecast: ForecastConfig = ForecastConfig(
        methods=("last_observation", "voxelwise_linear", "mrextrap", "noder"),
        autoencoder=AutoencoderConfig(ndim=2, channels=(8, 16, 32), discriminator_channels=(8, 16, 16), perceptual_channels=(8, 16),
                                      steps=150, batch_size=8, learning_rate=2e-3, adversarial_start=100),
        noder=NODERConfig(iterations=50),
        segmenter=SegmenterConfig(channels=(8, 16, 32), steps=150, learning_rate=3e-3),
    )  # fmt: skip
    registration: RegistrationConfig = RegistrationConfig(
        network=DisplacementConfig(ndim=2, width=32, hidden_layers=2, time_features=8, w0=3.0, time_scale=10.0),
        steps=400, learning_rate=2e-3, patches=16, patch_size=9, holdout="interpolation_extrapolation",
        chunk_size=2, steps_per_call=50, checkpoint_every=200,
    )  # fmt: skip
    register_subjects: int = 2
    test_fraction: float = 0.5
    folds: int = 2
    seed: int = 0

    def quick(self) -> DemoConfig:
        """Every stage with a small fraction of its steps: a check that an installation
        works end to end in about a minute; the figures it reports mean nothing."""
        r = dataclasses.replace
        few = lambda t: r(t, epochs=3)  # noqa: E731
        fc = self.forecast
        return r(
            self,
            fit=r(self.fit, shared=r(self.fit.shared, steps=10), finetune=r(self.fit.finetune, steps=50)),
            classify=r(self.classify, encoder=few(self.classify.encoder), baseline=few(self.classify.baseline), sfcn=few(self.classify.sfcn)),
            registration=r(self.registration, steps=50),
            forecast=r(fc, autoencoder=r(fc.autoencoder, steps=20, adversarial_start=10), noder=r(fc.noder, iterations=5),
                       segmenter=r(fc.segmenter, steps=20)),
        )  # fmt: skip


def _group_volumes(labels: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """(len(SHOWN),) volumes in mm^3 of the shown region groups in one label map."""
    per_label = [np.asarray(metrics.regional_volumes(jnp.asarray(labels), affine, REGIONS[name])).sum() for name in SHOWN]
    return np.array(per_label)


def _annual_change(times: np.ndarray, volumes: np.ndarray) -> float:
    """Least-squares slope of log volume against time, in %/yr."""
    return float(100.0 * np.polyfit(times, np.log(volumes), 1)[0]) if times.size >= 2 else float("nan")


def run_demo(out: str | os.PathLike, cfg: DemoConfig = DemoConfig(), overwrite: bool = False, quiet: bool = False) -> Path:
    """Run the demo into the folder `out` (created atomically) and return the report path."""
    out = Path(out)
    k_split, k_fold = jax.random.split(jax.random.key(cfg.seed))
    stages = progress_bar(10, "demo", enabled=not quiet, unit="stage")
    started = time.perf_counter()
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_config(cfg, tmp / "config.json", command="longbrain demo")

        stages.set_postfix_str("simulate")
        bids = Simulator(cfg.simulation).run(tmp / "bids")
        stages.update()

        stages.set_postfix_str("read BIDS")
        cohort = read_bids(bids, LoadConfig(normalise=cfg.normalise))
        stages.update()

        stages.set_postfix_str("ground truth")
        deform_rows, jac_last, phis = _deformations(bids, cohort)
        stages.update()

        stages.set_postfix_str("volumes")
        vol_rows, group_rows = _volumes(cohort)
        stages.update()

        stages.set_postfix_str("image agreement")
        agree_rows = _agreement(cohort, phis)
        stages.update()

        stages.set_postfix_str("fit INRs")
        fit_cfg = dataclasses.replace(cfg.fit, inr=dataclasses.replace(cfg.fit.inr, ndim=cohort.ndim), seed=cfg.seed)
        fit = fit_cohort(cohort, tmp / "fit", fit_cfg, source_description="bids/")
        fit_rows = _fit_table(cohort, fit)
        stages.update()

        stages.set_postfix_str("classify")
        classify_md = _classify_section(tmp / "fit", cohort, dataclasses.replace(cfg.classify, seed=cfg.seed))
        stages.update()

        stages.set_postfix_str("register")
        register_md = _register_section(tmp / "register", bids, cohort, cfg)
        stages.update()

        stages.set_postfix_str("forecast")
        forecast_md = _forecast_section(tmp / "forecast", cohort, cfg.forecast)
        stages.update()

        stages.set_postfix_str("splits and report")
        train, test = train_test_split(k_split, cohort.num_subjects, cfg.test_fraction, strata=cohort.groups)
        folds = stratified_kfold(k_fold, cohort.num_subjects, cfg.folds, strata=cohort.groups)
        y, classes = cohort.group_index(("healthy", "dementia"))
        # A one-feature rule on the TRUE deformation (ventricle |J| growth per year):
        # a check of the metric code on known answers, not a learned classifier.
        score = np.array([(row[4] - 1.0) / max(float(cohort.times[i].max()), 1e-3) for i, row in enumerate(deform_rows)])
        threshold = float(np.median(score[train]))
        pred = (score[test] > threshold).astype(int)
        cls = {
            "accuracy": metrics.accuracy(y[test], pred),
            "balanced accuracy": metrics.balanced_accuracy(y[test], pred),
            "ROC AUC": metrics.roc_auc(y[test], score[test]) if len(set(y[test])) == 2 else float("nan"),
        }
        _jacobian_figure(tmp / "jacobians.png", cohort, jac_last)
        report = _report(
            cfg, cohort, deform_rows, vol_rows, group_rows, agree_rows, fit_rows, classify_md, register_md, forecast_md, train, test, folds, classes,
            cls, time.perf_counter() - started,
        )
        (tmp / "report.md").write_text(report)
        stages.update()
    stages.close()
    return out / "report.md"


def _deformations(bids: Path, cohort: Cohort) -> tuple[list[list[object]], dict[int, np.ndarray], dict]:
    """Per subject: ground-truth |J| statistics, read from the written derivatives."""
    rows, last, phis = [], {}, {}
    for i, sid in enumerate(cohort.subject_ids):
        t = int(cohort.num_scans[i])
        head = cohort.labels[i, 0] > 0
        jacs = []
        for j, ses in enumerate(cohort.session_ids[i]):
            jac, affine = load_image(derivative_path(bids, sid, ses, "jacdet", PIPELINE))
            u_mm, _ = load_displacement(derivative_path(bids, sid, ses, "truth", PIPELINE, suffix="xfm"))
            phis[i, j] = displacement_from_world(jnp.asarray(u_mm), affine)
            jacs.append(jac)
        series = jnp.asarray(np.stack(jacs))
        last[i] = jacs[-1]
        region_mean = [float(jacs[-1][np.isin(cohort.labels[i, 0], REGIONS[name])].mean()) for name in SHOWN]
        rows.append(
            [
                f"sub-{sid}",
                cohort.groups[i],
                t,
                f"{cohort.times[i, t - 1]:.1f}",
                region_mean[1],
                region_mean[0],
                float(metrics.folding_fraction(series, jnp.broadcast_to(jnp.asarray(head), series.shape))),
                float(metrics.monotone_fraction(series, jnp.asarray(cohort.times[i, :t]), jnp.asarray(head), tol=1e-3)),
            ]
        )
    return rows, last, phis


def _volumes(cohort: Cohort) -> tuple[list[list[object]], list[list[object]]]:
    rows, by_group = [], {}
    for i, sid in enumerate(cohort.subject_ids):
        t = int(cohort.num_scans[i])
        vols = np.stack([_group_volumes(cohort.labels[i, j], cohort.affines[i]) for j in range(t)])
        rates = [_annual_change(cohort.times[i, :t], vols[:, r]) for r in range(len(SHOWN))]
        by_group.setdefault(cohort.groups[i], []).append(rates)
        rows.append([f"sub-{sid}", cohort.groups[i], *[float(v) for v in vols[0]], *rates])
    group_rows = []
    for group, rates in sorted(by_group.items(), reverse=True):
        mean = np.nanmean(np.array(rates), 0)
        for r, name in enumerate(SHOWN):
            group_rows.append([group, name, len(rates), float(mean[r]), LITERATURE.get((group, name), "")])
    return rows, group_rows


def _agreement(cohort: Cohort, phis: dict) -> list[list[object]]:
    rows = []
    for i, sid in enumerate(cohort.subject_ids):
        base = jnp.asarray(cohort.volumes[i, 0])
        for j in range(1, int(cohort.num_scans[i])):
            scan = jnp.asarray(cohort.volumes[i, j])
            undone = warp(scan, phis[i, j])
            rows.append(
                [
                    f"sub-{sid}",
                    f"ses-{cohort.session_ids[i][j]}",
                    f"{cohort.times[i, j]:.1f}",
                    float(metrics.ssim(scan, base, 2.0)),
                    float(metrics.ssim(undone, base, 2.0)),
                    float(metrics.psnr(scan, base, 2.0)),
                    float(metrics.psnr(undone, base, 2.0)),
                ]
            )
    return rows


def _fit_table(cohort: Cohort, fit: FitResult) -> list[list[object]]:
    """Median PSNR/SSIM per scan role and group, with the carried-forward reference for held-out scans."""
    keys = ("role", "group", "n", "psnr", "ssim", "carried_forward_psnr")
    return [[row[k] for k in keys] for row in role_summary(fit, cohort.volumes, cohort.groups)]


def _jacobian_figure(path: Path, cohort: Cohort, jac_last: dict[int, np.ndarray]) -> None:
    picks = [cohort.groups.index(g) for g in ("healthy", "dementia") if g in cohort.groups]
    titles = [[f"true |J| at +{cohort.times[i, int(cohort.num_scans[i]) - 1]:.1f} y"] for i in picks]
    names = [f"sub-{cohort.subject_ids[i]} ({cohort.groups[i]})" for i in picks]
    masks = [cohort.labels[i, 0] > 0 for i in picks]
    save_figure(jacobian_overlay([cohort.volumes[i, 0] for i in picks], [[jac_last[i]] for i in picks], names, titles, masks=masks), path)


def _classify_section(fit_dir: Path, cohort: Cohort, cfg: ClassifyConfig) -> str:
    """The classification experiment at toy size, as Markdown (skipped below 3 subjects per group)."""
    counts = [cohort.groups.count(g) for g in ("healthy", "dementia")]
    if min(counts) < 3:
        return f"Skipped: needs at least 3 subjects per group (have {counts[0]} healthy, {counts[1]} dementia-like).\n"
    results = run_classification(load_fit(fit_dir), cohort, cfg)
    return (
        f"{len(results['train'])} training and {len(results['test'])} test subjects: far too few for the accuracy "
        "to mean anything; this shows the pipeline (`longbrain classify`). The experiment at scale: "
        "`benchmarks/trajectory_classification.py`.\n\n" + results_table(results)
    )


def _register_section(out: Path, bids: Path, cohort: Cohort, cfg: DemoConfig) -> str:
    """Register a few subjects, show |J| over time, score against the truth (Markdown)."""
    picks = [i for i in range(cohort.num_subjects) if cohort.num_scans[i] >= 2][: cfg.register_subjects]
    if not picks:
        return "Skipped: no subject has two scans.\n"
    reg = dataclasses.replace(cfg.registration, network=dataclasses.replace(cfg.registration.network, ndim=cohort.ndim), seed=cfg.seed)
    source = cohort.select(picks)
    last = float(source.ages[source.mask].max())
    register_cohort(source, out, reg, extra_ages=(last + 5.0,))
    rows = []
    for k, _ in enumerate(picks):
        n = int(source.num_scans[k])
        whens = [f"ses-{source.session_ids[k][j]}" for j in range(n)] + [f"age-{last + 5.0:05.1f}".replace(".", "p")]
        jacs = [load_image(out / f"sub-{source.subject_ids[k]}" / "anat" / f"sub-{source.subject_ids[k]}_{w}_desc-jacdet.nii.gz")[0] for w in whens]
        rows.append(jacs[1:])
    titles = [[f"{a:.0f} y" for a in source.ages[k, 1 : int(source.num_scans[k])]] + [f"{last + 5.0:.0f} y (no scan)"] for k in range(len(picks))]
    names = [f"sub-{source.subject_ids[k]} ({source.groups[k]})" for k in range(len(picks))]
    masks = [source.labels[k, 0] > 0 for k in range(len(picks))] if source.labels is not None else None
    save_figure(jacobian_overlay([source.volumes[k, 0] for k in range(len(picks))], rows, names, titles, masks=masks), out / "jacobians.png")
    summary = summarise(evaluate_against_truth(out, bids, reg))
    table = [[role, s["n"], s["dice_unregistered"], s["dice"], s["dice_truth"], s["jac_error"], s["jac_true_change"], s["monotone"], s["folding"]]
             for role, s in summary.items()]  # fmt: skip
    return (
        f"One displacement INR u(x, t) per subject for {len(picks)} subjects ({reg.steps} AdamW steps, width "
        f"{reg.network.width}, all four losses), trained on all but the middle and last scans; |J| of phi_t "
        f"at every scan and 5 years past the last (> 1: the follow-up's tissue maps to a larger baseline volume, "
        "so ventricles show red and shrinking tissue blue). Dice of the follow-up's labels carried onto the "
        "baseline (mean over hippocampus, ventricles, cortex and WM; medians over scans), next to no registration "
        "and to the simulator's true field (the ceiling of label resampling on this grid); |J| error against "
        "the true |J| and the true mean change. Toy sizes: the benchmark is `benchmarks/registration.py`. "
        "Outputs: `register/` (`longbrain register`).\n\n"
        + markdown_table(["scans", "n", "Dice unregistered", "Dice", "Dice true field", "|J| error", "true |J| change", "monotone", "folding"], table)
        + "\n![registration jacobians](register/jacobians.png)\n"
    )


def _forecast_section(out: Path, cohort: Cohort, cfg: ForecastConfig) -> str:
    """The forecasting experiment at toy size, as Markdown (skipped without held-out scans)."""
    usable = int(np.sum(cohort.num_scans >= 3))
    if usable < 4:  # the slope prior is estimated from the other subjects' known scans
        return f"Skipped: needs at least 4 subjects with 3 or more scans (have {usable}).\n"
    result = run_forecasting(cohort, dataclasses.replace(cfg, autoencoder=dataclasses.replace(cfg.autoencoder, ndim=cohort.ndim)))
    write_forecasting(out, result, cfg, "The demo cohort.", cohort.spatial_shape)
    return (
        f"Held-out scans predicted from the others by last observation carried forward, voxelwise linear regression, "
        f"MRExtrap (autoencoder {cfg.autoencoder.steps} steps, population slope prior) and NODER "
        f"({cfg.noder.iterations} iterations); regional volumes by a U-Net trained on the known scans "
        f"({cfg.segmenter.steps} steps). Toy sizes: see `benchmarks/RESULTS.md` for the benchmark. Outputs: `forecast/`.\n\n"
        + results_markdown(result) + "\n![forecasts](forecast/forecast.png)\n"
    )


def _report(cfg, cohort, deform_rows, vol_rows, group_rows, agree_rows, fit_rows, classify_md, register_md, forecast_md, train, test, folds, classes, cls, seconds) -> str:
    sim = cfg.simulation
    return "\n".join(
        [
            "# longbrain demo report\n",
            f"Simulated cohort: {cohort.num_subjects} subjects ({cohort.groups.count('healthy')} healthy, "
            f"{cohort.groups.count('dementia')} dementia-like), {int(cohort.mask.sum())} scans at ages "
            f"{cohort.ages[cohort.mask].min():.1f}-{cohort.ages[cohort.mask].max():.1f}, {sim.ndim}D grid "
            f"{cohort.spatial_shape} at {sim.resolution_mm} mm, seed {sim.seed}; ran in {seconds:.1f} s on "
            f"{jax.devices()[0].platform} ({len(jax.devices())} device(s)). Configuration: `config.json`; "
            "the dataset and its ground truth: `bids/` (see `bids/derivatives/simulator/README.md`).\n",
            "![simulated subjects](bids/derivatives/simulator/montage.png)\n",
            "## Regional volume change from the label maps\n",
            "Annualised change of the written label maps (least-squares slope of log volume), group "
            "means, against the literature ranges the simulator follows. Dementia-like subjects differ "
            "only in brain-age drift, as in Aulakh et al.; their brain age runs up to about twice as fast.\n",
            markdown_table(["group", "region", "subjects", "%/yr (label maps)", "literature %/yr"], group_rows),
            markdown_table(
                ["subject", "group", "hippocampus mm^3", "ventricles mm^3", "hippocampus %/yr", "ventricles %/yr"], vol_rows
            ),
            "## Ground-truth deformation\n",
            "|J| of the true map from the baseline scan (>1 growth), read from "
            "`bids/derivatives/simulator/sub-*/ses-*/anat/*_desc-jacdet.nii.gz`; folding and the share of "
            "head voxels whose volume-change rate keeps one sign over time.\n",
            markdown_table(
                ["subject", "group", "scans", "years", "ventricle |J| (last)", "hippocampus |J| (last)", "folding", "monotone"],
                deform_rows,
            ),
            "![jacobians](jacobians.png)\n",
            "## Image agreement with the baseline, before and after undoing the true deformation\n",
            "Scans carry independent noise and bias fields, so agreement after undoing stays below 1.\n",
            markdown_table(["subject", "session", "years", "SSIM raw", "SSIM undone", "PSNR raw", "PSNR undone"], agree_rows),
            "## Spatiotemporal INRs fitted to the cohort\n",
            f"One semi-disentangled INR per subject (width {cfg.fit.inr.width}, {cfg.fit.inr.spatial_activation}/"
            f"{cfg.fit.inr.temporal_activation}/{cfg.fit.inr.combined_activation}), shared initialisation "
            f"({cfg.fit.shared.steps} steps) then {cfg.fit.finetune.steps} steps for every subject at once; a middle "
            "scan (subjects with >= 4) and the last scan (>= 3) held out. Median PSNR (dB) and SSIM of the "
            "reconstruction against the scan at its age; for held-out scans, the PSNR of simply carrying the "
            "previous training scan forward, for reference (every scan has its own noise and bias field, "
            "which no model can predict). Outputs: `fit/` (parameters, weight table, metrics).\n",
            markdown_table(["scans", "group", "n", "PSNR", "SSIM", "carried-forward PSNR"], fit_rows),
            "![reconstructions](fit/figures/reconstruction.png)\n",
            "## Classifying trajectories from INR weights and from the scans\n",
            classify_md,
            "## Longitudinal registration in continuous time\n",
            register_md,
            "## Forecasting held-out scans\n",
            forecast_md,
            "## Subject-level splits\n",
            f"Train/test ({1 - cfg.test_fraction:.2f}/{cfg.test_fraction:.2f}, stratified by group): "
            f"{len(train)} / {len(test)} subjects; {cfg.folds}-fold test sizes {[len(f[1]) for f in folds]}.\n",
            "Sanity check of the classification metrics (a one-feature threshold on the TRUE ventricle "
            f"|J| per year, classes {classes}; not a learned method):\n",
            markdown_table(["metric", "test value"], list(cls.items())),
        ]
    )
