"""The 4D deformation diffusion model, measured against the simulator's truth.

What it measures, step by step:

1. **Training.** Simulates a training cohort (default 200 subjects: 100 anatomies written
   as a healthy and a dementia-like twin, `paired`, irregular ages over the forecasting
   benchmark's span 50-75, 2D at 3 mm) and trains the model on it
   (`diffusion.generate.train_model`: stage 1 SVFs, stage 2 denoiser). Wall seconds, in
   all and per subject.
2. **Stage 1 ceiling.** The SVFs of the first `--stage1-subjects` training subjects scored
   against the simulator's true deformations (`svf.evaluate_against_truth`): displacement
   RMSE (mm), mean | |J| - |J_true| |, folding. The simulator's flow is not stationary, so
   this bounds what stage 2 can learn. Also, over the `--recognition-subjects` registered,
   each SCORED structure's mean volume change (% per year) the SVFs carry
   (`regional_rates`) beside the true label maps' (`true_rates`).
3. **Forecasting.** The cohort of `benchmarks/forecasting.py` (16 subjects, regular ages 50,
   58, 67, 75, seed `--seed`; the last scan held out for extrapolation, the middle-but-one
   for interpolation) and its separate segmenter cohort (seed + 1000); every forecaster in
   `--methods`, the `diffusion` one from the model of step 1 (`ForecastConfig.diffusion_model`).
   The report table, and per method the means of SSIM, PSNR and the mean regional volume
   error of the extrapolated scans.
4. **Diffusion-only scores** on that cohort, from K = `--samples` sequences per subject drawn
   at its true follow-up ages (`generate.generate_velocities`):
   (a) folding: share of voxels with |J| <= 0 over every sample's map (`model.field`, then
       `grid.jacobian_determinant`, as `model.scans_from_velocities` returns them), after
       `model.unfold` smoothed the sequences that folded as drawn (their share:
       `diffusion_unfolded_share`; `--unfold-sigmas none` scores the draws as drawn);
   (b) monotone share: per subject and sample, the |J| maps at its follow-up ages (|J| = 1
       at the baseline, time 0 of the series), `metrics.monotone_fraction` inside the brain
       (baseline labels > 0) at the registration benchmark's tolerance (`metrics.MONOTONE_TOL`),
       mean over samples and subjects (temporal consistency, which the paper does not measure).
       For reference, the same share of stage 1's pairwise SVFs and of the simulator's true maps
       on the first `--stage1-subjects` training subjects (`stage1_monotone_share`,
       `true_monotone_share`);
   (a-c) are given for the same draws made SVFs both ways (`DiffusionConfig.trajectory`:
       `diffusion_*` for `--trajectory`, `diffusion_frames_*` or `diffusion_monotone_*` for the other);
   (c) calibration: the regional volumes (hippocampus, lateral ventricles, cortical GM,
       cerebral WM) of the carried labels of the K samples at the extrapolated scan; the
       share of (scan, structure) pairs whose true volume lies in the samples' 10th-90th
       percentile interval (well calibrated: about 0.8);
   (d) counterfactual: a small paired cohort (`--paired-anatomies` anatomies x healthy /
       dementia-like twin, regular ages, seed + 3000); each healthy twin's baseline generated
       as "healthy" and as "dementia" (same keys): the hippocampal atrophy rate (% per year,
       `regional_rates`, mean over the K samples) compared (the goal: faster as dementia in
       >= 90 %), and the hippocampal volume of the carried labels at the last age (whole
       voxels: 27 mm^3 steps in 2D at 3 mm); also the true dementia twin's hippocampus
       against the true healthy twin's at that age.
   (e) group recognisability: each sequence's regional volume change (% per year; the soft
       volume of each SCORED structure of the baseline labels carried by each frame's map, a
       least-squares slope through the origin over the intervals) classified healthy / dementia
       by logistic regression trained on the stage 1 SVFs of the first `--recognition-subjects`
       training subjects (real trajectories, the model's own training data); its accuracy on
       the counterfactual cohort's stage 1 SVFs (real, held out) against its accuracy on
       sequences generated from the same baselines with their true groups (K each). Goal: the
       two within 0.05.
5. All figures printed as one table and one JSON line, and written to `--out`:
   results.json, stage1.tsv, diffusion_subjects.tsv, counterfactual.tsv, the model
   (`model/`) and the forecasting report (`forecasting/`).

Goals (the paper, arXiv 2604.22700, and what it could not measure): folding 0 to 7.5e-6 per
frame; the extrapolated scans' regional volume error below last observation carried forward;
monotone share near 1; the 10-90 % interval covering about 80 % of true volumes; the
dementia counterfactual's hippocampus smaller in >= 90 % of anatomies, in the direction of
the true dementia twin.

CPU default (2 cores, 2026-12-02: simulation and training 26 min, 0.41 s per denoiser step; the
forecasting stage then trains MRExtrap's autoencoder at ~2.2 s/step, ~55 min for 1500 steps, and the
U-Net at ~1 s/step, so the whole default run takes about 2 hours; `--quick`, a smoke run, took 5-7
minutes):

    python benchmarks/diffusion.py
    python benchmarks/diffusion.py --quick --out /tmp/diffbench-quick

Noise-free simulation (no Rician noise, no bias field): add `--snr 1000 --bias-sd 0`.

3D at 6 mm on the CPU costs 22 s per stage 1 pair (100 steps) and 15.4 s per denoiser step (2026-12-05,
RESULTS.md), so this smaller run takes about 4.5 hours on 2 cores:

    python benchmarks/diffusion.py --dim 3 --resolution 6 --train-subjects 40 --steps 600 --svf-steps 100 \
        --eval-subjects 8 --segmenter-subjects 8 --segmenter-steps 150 --paired-anatomies 6 \
        --recognition-subjects 24 --stage1-subjects 6 --samples 4 --methods last_observation,voxelwise_linear,diffusion

A model trained by an earlier run, scored again with other sampling options (the cohort options
must be those it was trained with; `--samples`, `--sample-steps`, `--guidance`, `--trajectory`,
`--unfold-sigmas` given here replace the model's):

    python benchmarks/diffusion.py --model diffusion-benchmark/model --unfold-sigmas none --out diffusion-rescored

Accelerator, paper-like sizes (3D at 1.5 mm, velocity grid 4x coarser, about the paper's 32^3;
a wider denoiser trained 100k steps):

    python benchmarks/diffusion.py --dim 3 --resolution 1.5 --velocity-factor 4 --train-subjects 400 \\
        --channels 64,128,256 --steps 100000 --batch-size 8 --samples 16 --svf-steps 300 \\
        --ae-steps 3000 --noder-iterations 300 --segmenter-steps 3000 --out diffusion-benchmark-3d
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _common import print_results  # noqa: E402

from longbrain_jax import grid, metrics  # noqa: E402
from longbrain_jax.atlas import REGIONS  # noqa: E402
from longbrain_jax.config import config_to_dict  # noqa: E402
from longbrain_jax.diffusion import DenoiserConfig, DiffusionConfig, SVFConfig, svf  # noqa: E402
from longbrain_jax.diffusion import generate as gen  # noqa: E402
from longbrain_jax.diffusion import model as dm  # noqa: E402
from longbrain_jax.files import write_tsv  # noqa: E402
from longbrain_jax.fit import FitConfig, StageConfig  # noqa: E402
from longbrain_jax.forecast import ForecastConfig, results_markdown, run_forecasting, write_forecasting  # noqa: E402
from longbrain_jax.inr import INRConfig  # noqa: E402
from longbrain_jax.io import LoadConfig, derivative_path, load_image, read_bids  # noqa: E402
from longbrain_jax.latent.autoencoder import AutoencoderConfig  # noqa: E402
from longbrain_jax.noder import NODERConfig  # noqa: E402
from longbrain_jax.segmenter import SCORED, SegmenterConfig  # noqa: E402
from longbrain_jax.simulate import SimulationConfig, simulate_cohort  # noqa: E402
from longbrain_jax.simulate.scanner import ScannerConfig  # noqa: E402
from longbrain_jax.simulate.simulator import PIPELINE  # noqa: E402

#: what `--quick` sets (each only where the option was left at its default)
QUICK = {"train_subjects": 12, "steps": 30, "samples": 2, "svf_steps": 20, "sample_steps": 5, "stage1_subjects": 4,
         "eval_subjects": 4, "segmenter_subjects": 4, "paired_anatomies": 2, "recognition_subjects": 8, "ae_steps": 20, "noder_iterations": 5,
         "segmenter_steps": 20}  # fmt: skip
#: seed offsets of the cohorts (the evaluation cohort uses --seed itself, as benchmarks/forecasting.py)
SEGMENTER_SEED, TRAIN_SEED, PAIRED_SEED = 1000, 2000, 3000


def parse_args() -> argparse.Namespace:
    """The options; `--quick` replaces the defaults it names in QUICK."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smoke run: tiny cohorts and few steps")
    # the simulation
    p.add_argument("--train-subjects", type=int, default=200, help="training subjects (half as many anatomies, paired)")
    p.add_argument("--dim", type=int, default=2)
    p.add_argument("--resolution", type=float, default=3.0)
    p.add_argument("--snr", type=float, default=ScannerConfig.snr, help="scanner SNR (noise-free: 1000)")
    p.add_argument(
        "--bias-sd", type=float, default=ScannerConfig.bias_sd, help="std of the log bias field (noise-free: 0)"
    )
    # the model
    p.add_argument("--steps", type=int, default=3000, help="denoiser training steps")
    p.add_argument("--channels", default="32,64", help="denoiser channels per level")
    p.add_argument("--batch-size", type=int, default=DiffusionConfig.batch_size)
    p.add_argument(
        "--velocity-factor", type=int, default=2, help="velocity grid this many times coarser than the scans"
    )
    p.add_argument("--svf-steps", type=int, default=200, help="stage 1 Adam steps per pair")
    p.add_argument("--svf-smooth-weight", type=float, default=SVFConfig.smooth_weight, help="stage 1 weight of mean ||grad v||^2")
    p.add_argument("--svf-similarity", choices=["ssd", "lncc"], default=SVFConfig.similarity, help="stage 1 dissimilarity")
    # sampling (default: DiffusionConfig's, or with --model the model's)
    p.add_argument("--samples", type=int, default=None, help=f"sequences drawn per subject (K; {DiffusionConfig.samples})")
    p.add_argument("--sample-steps", type=int, default=None, help=f"sampler steps ({DiffusionConfig.sample_steps})")
    p.add_argument("--guidance", type=float, default=None, help=f"classifier-free guidance scale ({DiffusionConfig.guidance})")
    p.add_argument("--trajectory", choices=("monotone", "frames"), default=None,
                   help=f"how samples become SVFs (the forecasting row; {DiffusionConfig.trajectory}); step 4 scores both side by side")  # fmt: skip
    p.add_argument("--unfold-sigmas", default=None,
                   help="widths that smooth a drawn sequence that folds (DiffusionConfig.unfold_sigmas, "
                        f"{','.join(f'{w:g}' for w in DiffusionConfig.unfold_sigmas)}); 'none': keep every draw")  # fmt: skip
    p.add_argument("--model", type=Path, default=None,
                   help="score a model this script trained before (same cohort options) instead of training one; it is copied "
                        "to OUT/model with this command's sampling options (--samples, --sample-steps, --guidance, --trajectory, "
                        "--unfold-sigmas)")  # fmt: skip
    # the evaluation
    p.add_argument(
        "--stage1-subjects", type=int, default=16, help="training subjects whose SVFs are scored against the truth"
    )
    p.add_argument("--eval-subjects", type=int, default=16)
    p.add_argument("--paired-anatomies", type=int, default=16,
                   help="anatomies of the counterfactual cohort (also the held-out set of (e))")
    p.add_argument("--recognition-subjects", type=int, default=64,
                   help="training subjects whose stage 1 SVFs train the group classifier of (e)")
    p.add_argument("--methods", default="last_observation,voxelwise_linear,mrextrap,noder,diffusion")
    p.add_argument("--ae-steps", type=int, default=1500)
    p.add_argument("--ae-channels", default="16,32,64")
    p.add_argument("--noder-iterations", type=int, default=200)
    p.add_argument("--segmenter-steps", type=int, default=1500)
    p.add_argument(
        "--segmenter-subjects",
        type=int,
        default=48,
        help="subjects of the U-Net's own training cohort (0: the known scans)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("diffusion-benchmark"))
    args = p.parse_args()
    if args.quick:
        for name, value in QUICK.items():
            if getattr(args, name) == p.get_default(name):
                setattr(args, name, value)
    return args


def log(started: float, what: str) -> None:
    print(f"[{time.perf_counter() - started:7.1f} s] {what}", flush=True)


def simulate(root: Path, args: argparse.Namespace, **fields) -> tuple[Path, object]:
    """Simulate a cohort with the benchmark's grid and scanner (`fields` override SimulationConfig) and read it."""
    n = fields["num_subjects"]
    sim = SimulationConfig(resolution_mm=args.resolution, ndim=args.dim, chunk_size=min(n, 8),
                           scanner=dataclasses.replace(ScannerConfig(), snr=args.snr, bias_sd=args.bias_sd), **fields)  # fmt: skip
    bids = simulate_cohort(root, sim)
    return bids, read_bids(bids, LoadConfig(label_pipeline=PIPELINE))


def volume(labels: np.ndarray, affine: np.ndarray, region: str) -> float:
    """Volume (mm^3) of one of REGIONS in a label map."""
    return float(np.isin(labels, REGIONS[region]).sum() * float(metrics.voxel_volume(jnp.asarray(affine))))


def mean_of(rows: list[dict], key: str) -> float:
    """The mean of `key` over the rows that have a finite value of it (NaN if none)."""
    values = [float(r[key]) for r in rows if r.get(key) is not None and np.isfinite(float(r[key]))]
    return float(np.mean(values)) if values else float("nan")


# -- 1. training -----------------------------------------------------------------------------------
def diffusion_config(args: argparse.Namespace) -> DiffusionConfig:
    """The model's configuration from the options."""
    return DiffusionConfig(
        svf=SVFConfig(velocity_factor=args.velocity_factor, steps=args.svf_steps, smooth_weight=args.svf_smooth_weight,
                      similarity=args.svf_similarity, seed=args.seed),
        denoiser=DenoiserConfig(channels=tuple(int(c) for c in args.channels.split(","))),
        steps=args.steps, batch_size=args.batch_size, seed=args.seed, **sampling_options(args),
    )  # fmt: skip


def sampling_options(args: argparse.Namespace) -> dict:
    """The DiffusionConfig fields that sampling alone reads, as far as the command line gives them."""
    given = {f: getattr(args, f) for f in ("samples", "sample_steps", "guidance", "trajectory", "unfold_sigmas") if getattr(args, f) is not None}
    if "unfold_sigmas" in given:
        text = given["unfold_sigmas"].strip().lower()
        given["unfold_sigmas"] = () if text == "none" else tuple(float(v) for v in text.split(",") if v.strip())
    return given


def reuse_model(source: Path, model_dir: Path, cohort, args: argparse.Namespace) -> None:
    """`source` (a model this script trained on `cohort`) copied to `model_dir` with the sampling options given
    written into its configuration; exits if it was trained on other subjects or another grid."""
    model = gen.load_model(source)  # refuses what is not a trained model
    record = json.loads((source / "config.json").read_text())
    if model.shape != tuple(cohort.spatial_shape) or record.get("subjects") != list(cohort.subject_ids):
        sys.exit(f"--model {source}: trained on other subjects or another grid ({model.shape}) than this command's training cohort "
                 f"({tuple(cohort.spatial_shape)}); give the options it was trained with")  # fmt: skip
    if source.resolve() != model_dir.resolve():
        shutil.rmtree(model_dir, ignore_errors=True)
        shutil.copytree(source, model_dir)
    record["config"] = config_to_dict(dataclasses.replace(model.cfg, **sampling_options(args)))
    (model_dir / "config.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def train(cohort, model_dir: Path, cfg: DiffusionConfig, started: float) -> dict:
    """Train the model on the training cohort and write it to `model_dir`; wall seconds of stage 1 (up to its
    last registration) and in all."""
    t0 = time.perf_counter()
    marks = {"svf_end": t0, "printed": 0.0}

    def progress(p: dict) -> None:
        now = time.perf_counter()
        if p["stage"] == "svf":
            marks["svf_end"] = now
        last = p["stage"] == "train" and p["step"] == p["steps"]
        if now - marks["printed"] > 20 or last:
            marks["printed"] = now
            what = (f"stage 1: chunk {p['chunk'] + 1}/{p['chunks']}, {p['done']}/{p['total']} pair steps, loss {p['loss']:.4g}"
                    if p["stage"] == "svf" else f"stage 2: step {p['step']}/{p['steps']}, loss {p['loss']:.4g}")  # fmt: skip
            log(started, what)

    gen.train_model(
        cohort,
        model_dir,
        cfg,
        overwrite=True,
        progress=progress,
        source_description="benchmarks/diffusion.py training cohort",
    )
    seconds = time.perf_counter() - t0
    return {"train_seconds": seconds, "train_seconds_per_subject": seconds / cohort.num_subjects,
            "train_stage1_seconds": marks["svf_end"] - t0, "train_scans": int(cohort.mask.sum())}  # fmt: skip


# -- 2. stage 1 against the truth --------------------------------------------------------------------
def score_stage_one(bids: Path, cohort, n: int, registered: int, cfg: DiffusionConfig) -> tuple[dict, list[dict], np.ndarray]:
    """The first max(`n`, `registered`) training subjects registered again (stage 1 is deterministic, so these
    are the SVFs the model learned from, before their smoothing), the first `n` scored against the simulator's
    truth; also their regional rates (`regional_rates`, for (e))."""
    sub = cohort.select(np.arange(min(max(n, registered), cohort.num_subjects)))
    t0 = time.perf_counter()
    velocities, valid = svf.register_cohort(sub.volumes, sub.mask, cfg.svf)
    seconds = time.perf_counter() - t0
    rates = real_rates(velocities, valid, sub, cfg.svf)
    n = min(n, sub.num_subjects)
    velocities, valid = velocities[:n], valid[:n]
    rows = svf.evaluate_against_truth(velocities, valid, bids, sub.subject_ids[:n], sub.session_ids[:n], cfg.svf)
    keys = (
        "displacement_rmse_mm",
        "true_displacement_rms_mm",
        "jac_error",
        "jac_true_change",
        "jac_correlation",
        "folding",
    )
    summary = {f"stage1_{k}": mean_of(rows, k) for k in keys}
    summary["stage1_monotone_share"], summary["true_monotone_share"] = reference_monotone_shares(bids, sub.select(np.arange(n)), velocities, valid, cfg.svf)
    summary |= {"stage1_folding_max": float(max(r["folding"] for r in rows)), "stage1_pairs": len(rows),
                "stage1_seconds_per_pair": seconds / max(int(sub.mask[:, 1:].sum()), 1)}  # fmt: skip
    truth = true_rates(sub)  # what the SVFs carry of each structure's volume change, over every registered subject
    for j, s in enumerate(SCORED):
        summary |= {f"stage1_{s}_rate_pct_per_year": float(rates[:, j].mean()), f"stage1_{s}_true_rate_pct_per_year": float(truth[:, j].mean())}
    return summary, rows, rates


# -- 3. forecasting ----------------------------------------------------------------------------------
def forecast(cohort, seg_cohort, model_dir: Path, args: argparse.Namespace, started: float) -> tuple[dict, str]:
    """Every forecaster on the evaluation cohort (as benchmarks/forecasting.py), the diffusion one from the
    trained model; the report goes to OUT/forecasting. Per method the means over extrapolated scans."""
    n = cohort.num_subjects
    cfg = ForecastConfig(
        methods=tuple(args.methods.split(",")),
        autoencoder=AutoencoderConfig(ndim=args.dim, channels=tuple(int(c) for c in args.ae_channels.split(",")), steps=args.ae_steps,
                                      adversarial_start=args.ae_steps // 2, learning_rate=1e-3, seed=args.seed),
        noder=NODERConfig(iterations=args.noder_iterations, seed=args.seed),
        inr=FitConfig(inr=INRConfig(ndim=args.dim, width=64, stream_layers=3, combined_layers=2),
                      shared=StageConfig(steps=100, learning_rate=1e-3, sample_fraction=0.05),
                      finetune=StageConfig(steps=600, learning_rate=1e-3, sample_fraction=0.1),
                      chunk_size=n, steps_per_call=100, checkpoint_every=1000, seed=args.seed, time_curvature=0.01),
        segmenter=SegmenterConfig(steps=args.segmenter_steps, seed=args.seed),
        diffusion_model=str(model_dir),
    )  # fmt: skip
    result = run_forecasting(cohort, cfg, progress=lambda what: log(started, what), segmenter_source=seg_cohort)
    description = (f"Evaluation cohort: {n} subjects, regular ages, {args.dim}D at {args.resolution} mm {cohort.spatial_shape}, "
                   f"seed {args.seed}; diffusion model from {model_dir}; total {result.seconds:.0f} s.")  # fmt: skip
    write_forecasting(args.out / "forecasting", result, cfg, description, cohort.spatial_shape, overwrite=True)
    table = results_markdown(result)
    figures = {}
    for m in dict.fromkeys(r["method"] for r in result.rows):
        sel = [r for r in result.rows if r["method"] == m and r["role"] == "extrapolation"]
        key = m.replace(" ", "_")
        if m != "segmenter on the true scan":  # that row has volume errors only (the U-Net's own)
            figures[f"forecast_{key}_ssim"] = mean_of(sel, "ssim")
            figures[f"forecast_{key}_psnr"] = mean_of(sel, "psnr")
        for r in sel:
            r["volume_error_pct"] = float(np.mean([r[f"volume_error_pct_{s}"] for s in SCORED]))
        figures[f"forecast_{key}_volume_error_pct"] = mean_of(sel, "volume_error_pct")
    figures["forecast_seconds"] = result.seconds
    return figures, table


# -- 4. diffusion-specific scores --------------------------------------------------------------------
def follow_up_targets(cohort) -> np.ndarray:
    """(N, T - 1) each subject's true follow-up ages, NaN in padding slots."""
    return np.where(cohort.mask[:, 1:], cohort.ages[:, 1:], np.nan).astype(np.float32)


def sample_scores(model, cohort, samples: int) -> tuple[dict, list[dict]]:
    """(a) folding, (b) monotone share and (c) calibration of K sequences per subject drawn at its follow-up ages."""
    target = follow_up_targets(cohort)
    v, widths = gen.generate_velocities(model, cohort.volumes[:, 0], cohort.ages[:, 0], target, cohort.groups, cohort.sexes,
                                        np.arange(cohort.num_subjects), samples)  # fmt: skip
    rows, folding, covered = [], [], []
    for i, sid in enumerate(cohort.subject_ids):
        frames = np.flatnonzero(np.isfinite(target[i]))
        if not frames.size:
            continue
        baseline, labels0, affine = cohort.volumes[i, 0], cohort.labels[i, 0], cohort.affines[i]
        brain, years = labels0 > 0, target[i, frames] - cohort.ages[i, 0]
        last = int(frames[-1]) + 1  # the extrapolated scan's slot
        monotone, vols = [], {s: [] for s in SCORED}
        for k in range(samples):
            _, carried, dets = dm.scans_from_velocities(v[i, k, frames], baseline, labels0, model.cfg.svf)
            folding += [float(np.mean(d <= 0)) for d in dets]
            monotone.append(monotone_share(dets, years, brain))
            for s in SCORED:
                vols[s].append(volume(carried[-1], affine, s))
        row = {"participant_id": sid, "group": cohort.groups[i], "monotone": float(np.mean(monotone))}
        for s in SCORED:
            true = volume(cohort.labels[i, last], affine, s)
            lo, hi = np.percentile(vols[s], [10, 90])
            covered.append(lo <= true <= hi)
            row |= {f"true_{s}": true, f"sample_mean_{s}": float(np.mean(vols[s])), f"p10_{s}": float(lo), f"p90_{s}": float(hi),
                    f"covered_{s}": bool(lo <= true <= hi)}  # fmt: skip
        rows.append(row)
    return {
        "diffusion_folding_share": float(np.mean(folding)),
        "diffusion_folding_max": float(np.max(folding)),
        "diffusion_unfolded_share": float(np.mean(widths != 0)),  # sequences `model.unfold` smoothed (they folded as drawn)
        "diffusion_monotone_share": mean_of(rows, "monotone"),
        "diffusion_calibration_coverage_10_90": float(np.mean(covered)),
        "diffusion_samples": samples,
    }, rows


def counterfactual(model, cohort, samples: int) -> tuple[dict, list[dict]]:
    """(d) each healthy twin's baseline generated as healthy and as dementia (same keys); the hippocampus of the
    carried labels at the last age (mean over samples), and the true twins' hippocampi at that age."""
    twins = {}
    for i, (sid, meta) in enumerate(zip(cohort.subject_ids, cohort.metadata, strict=True)):
        twins.setdefault(meta.get("pair_id") or sid[:-1], {})[cohort.groups[i]] = i
    pairs = [(p, t["healthy"], t["dementia"]) for p, t in sorted(twins.items()) if {"healthy", "dementia"} <= t.keys()]
    idx = np.array([h for _, h, _ in pairs])
    sub = cohort.select(idx)
    target = follow_up_targets(sub)
    keys = np.arange(len(idx))
    drawn = {g: gen.generate_velocities(model, sub.volumes[:, 0], sub.ages[:, 0], target, [g] * len(idx), sub.sexes, keys, samples)[0]
             for g in ("healthy", "dementia")}  # fmt: skip
    rows = []
    for j, (pair, h, d) in enumerate(pairs):
        frames = np.flatnonzero(np.isfinite(target[j]))
        last = int(frames[-1]) + 1
        affine = sub.affines[j]
        generated = {}
        for g, v in drawn.items():
            carried = [dm.scans_from_velocities(v[j, k, frames[-1:]], sub.volumes[j, 0], sub.labels[j, 0], model.cfg.svf)[1][0]
                       for k in range(samples)]  # fmt: skip
            generated[g] = float(np.mean([volume(c, affine, "hippocampus") for c in carried]))
        true_h = volume(cohort.labels[h, last], cohort.affines[h], "hippocampus")
        true_d = volume(cohort.labels[d, last], cohort.affines[d], "hippocampus")
        rows.append({"pair_id": pair, "age": float(sub.ages[j, last]), "baseline_hippocampus": volume(sub.labels[j, 0], affine, "hippocampus"),
                     "generated_healthy": generated["healthy"], "generated_dementia": generated["dementia"],
                     "true_healthy": true_h, "true_dementia": true_d})  # fmt: skip
    rates = {g: sampled_rates(v, sub, target, model.cfg.svf)[..., 0].mean(0) for g, v in drawn.items()}
    for r, h, d in zip(rows, rates["healthy"], rates["dementia"], strict=True):
        r |= {"generated_healthy_rate_pct_per_year": float(h), "generated_dementia_rate_pct_per_year": float(d)}
    gen_diff = np.array([r["generated_dementia"] - r["generated_healthy"] for r in rows])
    true_diff = np.array([r["true_dementia"] - r["true_healthy"] for r in rows])
    return {
        "counterfactual_anatomies": len(rows),
        "counterfactual_dementia_smaller_share": float(np.mean(gen_diff < 0)),
        "counterfactual_dementia_faster_rate_share": float(np.mean(rates["dementia"] < rates["healthy"])),
        "counterfactual_mean_rate_difference_pct_per_year": float(np.mean(rates["dementia"] - rates["healthy"])),
        "counterfactual_tie_share": float(np.mean(gen_diff == 0)),
        "counterfactual_goal_met": bool(np.mean(rates["dementia"] < rates["healthy"]) >= 0.9),
        "counterfactual_mean_difference_mm3": float(np.mean(gen_diff)),
        "counterfactual_true_dementia_smaller_share": float(np.mean(true_diff < 0)),
        "counterfactual_true_mean_difference_mm3": float(np.mean(true_diff)),
        "counterfactual_direction_agrees_share": float(np.mean(np.sign(gen_diff) == np.sign(true_diff))),
    }, rows


def _soft_volumes(velocity, indicators, svf_cfg: SVFConfig) -> jnp.ndarray:
    """(R,) voxel counts of the structures `indicators` (R, *s) float carried by the map of an effective velocity."""
    u = dm.field(velocity, indicators.shape[1:], svf_cfg)
    return jax.vmap(lambda m: jnp.sum(grid.warp(m, u)))(indicators)


_soft_volumes = jax.jit(_soft_volumes, static_argnames=("svf_cfg",))


def regional_rates(velocities: np.ndarray, valid: np.ndarray, labels: np.ndarray, intervals: np.ndarray, svf_cfg: SVFConfig) -> np.ndarray:
    """(N, len(SCORED)) % per year: the soft volume of each SCORED structure of each subject's baseline labels
    (N, *s) carried by its frames' maps (effective velocities (N, F, *c, D), `valid` (N, F), years since the
    baseline `intervals` (N, F)), a least-squares slope through the origin of (V_f / V_0 - 1) x 100 over the
    intervals. Continuous where carried label maps move in whole voxels."""
    out = np.zeros((len(labels), len(SCORED)), np.float32)
    for i in range(len(labels)):
        masks = jnp.asarray(np.stack([np.isin(labels[i], REGIONS[s]) for s in SCORED]).astype(np.float32))
        base = np.maximum(np.asarray(masks.sum(axis=tuple(range(1, masks.ndim)))), 1.0)
        frames = np.flatnonzero(valid[i])
        if not frames.size:
            continue
        change = np.stack([100.0 * (np.asarray(_soft_volumes(jnp.asarray(velocities[i, f]), masks, svf_cfg)) / base - 1.0) for f in frames])
        out[i] = slope_through_origin(intervals[i, frames], change)
    return out


def slope_through_origin(t: np.ndarray, change: np.ndarray) -> np.ndarray:
    """Least-squares slope (R,) of changes (F, R) over times (F,) on a line through the origin."""
    t = np.asarray(t, np.float64)[:, None]
    return (t * change).sum(0) / (t**2).sum(0)


def true_rates(cohort) -> np.ndarray:
    """(N, len(SCORED)) % per year from the true label maps' voxel counts, as `regional_rates` reads SVFs."""
    out = np.zeros((cohort.num_subjects, len(SCORED)), np.float32)
    for i in range(cohort.num_subjects):
        frames = np.flatnonzero(cohort.mask[i, 1:]) + 1
        if frames.size:
            counts = np.array([[np.isin(cohort.labels[i, f], REGIONS[s]).sum() for s in SCORED] for f in [0, *frames]], np.float64)
            out[i] = slope_through_origin(cohort.ages[i, frames] - cohort.ages[i, 0], 100.0 * (counts[1:] / np.maximum(counts[0], 1) - 1))
    return out


def effective_velocities(velocities: np.ndarray, svf_cfg: SVFConfig) -> np.ndarray:
    """Stage 1's follow-up SVFs (`svf.register_cohort`'s (N, T, ...), slot 0 the baseline) -> (N, T - 1, ...) smoothed
    as the model learns them."""
    return np.asarray(jax.vmap(jax.vmap(lambda v: svf.smooth(v, svf_cfg)))(jnp.asarray(velocities[:, 1:])))


def real_rates(velocities: np.ndarray, valid: np.ndarray, cohort, svf_cfg: SVFConfig) -> np.ndarray:
    """`regional_rates` of stage 1's SVFs (`svf.register_cohort`'s (N, T, ...), slot 0 the baseline), smoothed as
    the model learns them."""
    intervals = np.where(cohort.mask[:, 1:], cohort.ages[:, 1:] - cohort.ages[:, :1], 0.0)
    return regional_rates(effective_velocities(velocities, svf_cfg), np.asarray(valid[:, 1:]), cohort.labels[:, 0], intervals, svf_cfg)


def monotone_share(dets: np.ndarray, years: np.ndarray, brain: np.ndarray) -> float:
    """(b) of |J| maps (M, *s) at `years` (M,) after the baseline (|J| = 1 there, time 0 of the series) inside
    `brain`: `metrics.monotone_fraction` at `metrics.MONOTONE_TOL`, the registration benchmark's tolerance."""
    series = jnp.concatenate([jnp.ones((1, *dets.shape[1:])), jnp.asarray(dets)])
    times = jnp.asarray(np.concatenate([[0.0], years]), jnp.float32)
    return float(metrics.monotone_fraction(series, times, jnp.asarray(brain), tol=metrics.MONOTONE_TOL))


def reference_monotone_shares(bids: Path, cohort, velocities: np.ndarray, valid: np.ndarray, svf_cfg: SVFConfig) -> tuple[float, float]:
    """(b) of stage 1's pairwise SVFs (effective) and of the simulator's true |J| maps, mean over `cohort`'s subjects
    with two follow-ups or more: what the model learns from, and what a real trajectory keeps."""
    effective = effective_velocities(velocities, svf_cfg)
    learned, truth = [], []
    for i, sid in enumerate(cohort.subject_ids):
        frames = np.flatnonzero(valid[i, 1:])
        if frames.size < 2:
            continue
        years, brain = cohort.ages[i, frames + 1] - cohort.ages[i, 0], cohort.labels[i, 0] > 0
        dets = dm.scans_from_velocities(effective[i, frames], cohort.volumes[i, 0], None, svf_cfg)[2]
        true = np.stack([load_image(derivative_path(bids, sid, cohort.session_ids[i][f + 1], "jacdet", PIPELINE))[0] for f in frames])
        learned.append(monotone_share(dets, years, brain))
        truth.append(monotone_share(true, years, brain))
    return float(np.mean(learned)) if learned else float("nan"), float(np.mean(truth)) if truth else float("nan")


def sampled_rates(drawn: np.ndarray, cohort, target: np.ndarray, svf_cfg: SVFConfig) -> np.ndarray:
    """(K, N, len(SCORED)) `regional_rates` of generated sequences (N, K, F, *c, D) drawn at `target` ages (N, F)."""
    intervals = np.nan_to_num(target - cohort.ages[:, :1])
    return np.stack([regional_rates(drawn[:, k], np.isfinite(target), cohort.labels[:, 0], intervals, svf_cfg)
                     for k in range(drawn.shape[1])])  # fmt: skip


def recognisability(model, cohort, train_rates: np.ndarray, train_groups: np.ndarray, samples: int) -> dict:
    """(e) logistic regression (healthy 0 / dementia 1) on standardised regional rates of real training
    trajectories; its accuracy on `cohort`'s real (stage 1) trajectories and on K generated ones per subject."""
    from longbrain_jax.classification import standardise
    from longbrain_jax.classifier import TrainConfig, predict_proba, train_classifier
    from longbrain_jax.weightspace.models import LinearClassifier

    keep = np.isin(train_groups, ("healthy", "dementia"))
    x_train, y_train = train_rates[keep], (train_groups[keep] == "dementia").astype(np.int32)
    velocities, valid = svf.register_cohort(cohort.volumes, cohort.mask, model.cfg.svf)
    real = real_rates(velocities, valid, cohort, model.cfg.svf)
    target = follow_up_targets(cohort)
    drawn, _ = gen.generate_velocities(model, cohort.volumes[:, 0], cohort.ages[:, 0], target, cohort.groups, cohort.sexes,
                                       np.arange(cohort.num_subjects), samples)  # fmt: skip
    generated = sampled_rates(drawn, cohort, target, model.cfg.svf).reshape(-1, len(SCORED))  # sample-major
    y_test = (np.asarray(cohort.groups) == "dementia").astype(np.int32)
    everything = np.concatenate([x_train, real, generated])
    z = standardise(everything, np.arange(len(x_train)))
    model_ = LinearClassifier()
    trained = train_classifier(model_, z[: len(x_train)], y_train, TrainConfig(epochs=200, batch_size=16, learning_rate=1e-2,
                               validation_fraction=0.0), jax.random.key(0))  # fmt: skip
    predicted = predict_proba(model_, trained.variables, z).argmax(-1)
    p_train, p_real, p_gen = np.split(predicted, [len(x_train), len(x_train) + len(real)])
    acc_real, acc_gen = float(np.mean(p_real == y_test)), float(np.mean(p_gen == np.tile(y_test, samples)))
    return {
        "recognition_train_subjects": len(x_train),
        "recognition_train_accuracy": float(np.mean(p_train == y_train)),
        "recognition_real_accuracy": acc_real,
        "recognition_generated_accuracy": acc_gen,
        "recognition_gap": abs(acc_real - acc_gen),
        "recognition_goal_met": bool(abs(acc_real - acc_gen) <= 0.05),
        "recognition_real_dementia_minus_healthy_hippocampus_rate": float(real[y_test == 1, 0].mean() - real[y_test == 0, 0].mean()),
        "recognition_generated_dementia_minus_healthy_hippocampus_rate":
            float(generated[np.tile(y_test, samples) == 1, 0].mean() - generated[np.tile(y_test, samples) == 0, 0].mean()),
    }


# -- 5. output ---------------------------------------------------------------------------------------
def write_rows(path: Path, rows: list[dict]) -> None:
    if rows:
        write_tsv(path, list(rows[0]), [list(r.values()) for r in rows])


def fmt(value) -> str:
    """A figure for the readable table."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def finite(record: dict) -> dict:
    """`record` with non-finite floats as None, so its JSON is valid (json.dumps writes NaN otherwise)."""
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in record.items()}


def main() -> None:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    cfg = diffusion_config(args)
    model_dir = args.out / "model"
    figures: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        log(started, f"simulating the training cohort ({args.train_subjects} subjects, paired, irregular ages)")
        train_bids, train_cohort = simulate(tmp / "train", args, num_subjects=max(1, args.train_subjects // 2), paired=True,
                                            sampling="irregular", age_range=(50.0, 75.0), seed=args.seed + TRAIN_SEED)  # fmt: skip
        if args.model is None:
            figures |= train(train_cohort, model_dir, cfg, started)
            log(started, f"trained in {figures['train_seconds']:.1f} s; scoring stage 1 on {args.stage1_subjects} subjects")
        else:
            reuse_model(args.model, model_dir, train_cohort, args)
            log(started, f"model of {args.model} (not trained here); scoring stage 1 on {args.stage1_subjects} subjects")
        cfg = gen.load_model(model_dir).cfg  # what was trained (stage 1 scored as it) and is sampled
        samples = cfg.samples
        stage1, stage1_rows, train_rates = score_stage_one(train_bids, train_cohort, args.stage1_subjects, args.recognition_subjects, cfg)
        figures |= stage1
        train_groups = np.asarray(train_cohort.groups[: len(train_rates)])
        del train_cohort

        log(started, f"simulating the evaluation cohort ({args.eval_subjects} subjects) and its segmenter cohort")
        _, cohort = simulate(tmp / "eval", args, num_subjects=args.eval_subjects, sampling="regular", seed=args.seed)
        seg_cohort = None
        if args.segmenter_subjects:
            _, seg_cohort = simulate(tmp / "segmenter", args, num_subjects=args.segmenter_subjects, sampling="irregular",
                                     age_range=(50.0, 75.0), seed=args.seed + SEGMENTER_SEED)  # fmt: skip
        forecasting, table = forecast(cohort, seg_cohort, model_dir, args, started)
        figures |= forecasting

        log(started, f"diffusion scores: {samples} samples per subject")
        model = gen.load_model(model_dir)
        scores, subject_rows = sample_scores(model, cohort, samples)
        figures |= scores
        other = "frames" if model.cfg.trajectory == "monotone" else "monotone"  # the same draws made SVFs the other way
        scores, _ = sample_scores(dataclasses.replace(model, cfg=dataclasses.replace(model.cfg, trajectory=other)), cohort, samples)
        figures |= {key.replace("diffusion_", f"diffusion_{other}_"): value for key, value in scores.items() if key != "diffusion_samples"}

        log(started, f"counterfactual cohort ({args.paired_anatomies} anatomies x 2)")
        _, paired = simulate(tmp / "paired", args, num_subjects=args.paired_anatomies, paired=True, sampling="regular",
                             seed=args.seed + PAIRED_SEED)  # fmt: skip
        cf, cf_rows = counterfactual(model, paired, samples)
        figures |= cf
        log(started, f"group recognisability: a classifier of {len(train_rates)} training subjects' stage 1 rates")
        figures |= recognisability(model, paired, train_rates, train_groups, samples)
    figures["total_seconds"] = time.perf_counter() - started

    print("\n" + table)
    write_rows(args.out / "stage1.tsv", stage1_rows)
    write_rows(args.out / "diffusion_subjects.tsv", subject_rows)
    write_rows(args.out / "counterfactual.tsv", cf_rows)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    (args.out / "results.json").write_text(
        json.dumps({"figures": finite(figures), "config": config, "model_config": config_to_dict(cfg)}, indent=2, sort_keys=True) + "\n"
    )
    print_results("Deformation diffusion: training, stage 1 ceiling, forecasting, samples, counterfactual",
                  [(k, fmt(v)) for k, v in figures.items()], finite(figures) | {"config": config})  # fmt: skip


if __name__ == "__main__":
    main()
