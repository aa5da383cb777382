"""The forecasting table: every forecaster on the same held-out scans of a simulated cohort.

Simulates a cohort (regular ages 50, 58, 67, 75 by default: the middle-but-one scan held
out for interpolation, the last for extrapolation) and a second, independent one (other
subjects, irregular ages over the same span) that trains the segmentation U-Net which
measures every regional volume (`--segmenter-subjects 0` trains it on the known scans
instead); trains the autoencoder on the known scans, runs last observation carried forward,
voxelwise linear regression, MRExtrap (population slope prior), NODER and the
spatiotemporal INR, and prints SSIM / PSNR / MAE against the true scans, Dice of
NODER's carried labels, regional volume errors against the simulator's label maps,
wall time per subject, and the volume error against the number of scans used. Writes
the report, scores and plots to --out. Goal (issue): every learned forecaster beats
last-observation-carried-forward on regional volume error for the extrapolated scan.

    python benchmarks/forecasting.py [--subjects 16 --dim 2 --resolution 3 --ae-steps 1500 ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import print_results  # noqa: E402

from longbrain_jax.fit import FitConfig, StageConfig  # noqa: E402
from longbrain_jax.forecast import ForecastConfig, results_markdown, run_forecasting, write_forecasting  # noqa: E402
from longbrain_jax.inr import INRConfig  # noqa: E402
from longbrain_jax.io import LoadConfig, read_bids  # noqa: E402
from longbrain_jax.latent.autoencoder import AutoencoderConfig  # noqa: E402
from longbrain_jax.noder import NODERConfig  # noqa: E402
from longbrain_jax.segmenter import SCORED, SegmenterConfig  # noqa: E402
from longbrain_jax.simulate import SimulationConfig, simulate_cohort  # noqa: E402
from longbrain_jax.simulate.simulator import PIPELINE  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subjects", type=int, default=16)
    p.add_argument("--dim", type=int, default=2)
    p.add_argument("--resolution", type=float, default=3.0)
    p.add_argument("--sampling", default="regular")
    p.add_argument("--ae-steps", type=int, default=1500)
    p.add_argument("--ae-channels", default="16,32,64")
    p.add_argument("--noder-iterations", type=int, default=200)
    p.add_argument("--inr-width", type=int, default=64)
    p.add_argument("--inr-steps", type=int, default=600)
    p.add_argument("--inr-time-curvature", type=float, default=0.01, help="weight of the INR's temporal curvature penalty")
    p.add_argument("--segmenter-steps", type=int, default=1500)
    p.add_argument("--segmenter-subjects", type=int, default=48, help="subjects of the U-Net's own training cohort (0: the known scans)")
    p.add_argument("--segmenter-volumes", choices=("soft", "hard"), default="soft")
    p.add_argument("--methods", default="last_observation,voxelwise_linear,mrextrap,noder,inr")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("forecasting-benchmark"))
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        sim = SimulationConfig(num_subjects=args.subjects, resolution_mm=args.resolution, ndim=args.dim, sampling=args.sampling,
                               chunk_size=min(args.subjects, 8), seed=args.seed)  # fmt: skip
        bids = simulate_cohort(Path(tmp) / "bids", sim)
        cohort = read_bids(bids, LoadConfig(label_pipeline=PIPELINE))
        seg_cohort = None
        if args.segmenter_subjects:
            ages = sim.regular_ages if args.sampling == "regular" else sim.age_range
            seg_sim = dataclasses.replace(sim, num_subjects=args.segmenter_subjects, sampling="irregular", age_range=(min(ages), max(ages)),
                                          chunk_size=min(args.segmenter_subjects, 8), seed=args.seed + 1000)  # fmt: skip
            seg_cohort = read_bids(simulate_cohort(Path(tmp) / "segmenter", seg_sim), LoadConfig(label_pipeline=PIPELINE))
    cfg = ForecastConfig(
        methods=tuple(args.methods.split(",")),
        autoencoder=AutoencoderConfig(ndim=args.dim, channels=tuple(int(c) for c in args.ae_channels.split(",")), steps=args.ae_steps,
                                      adversarial_start=args.ae_steps // 2, learning_rate=1e-3, seed=args.seed),
        noder=NODERConfig(iterations=args.noder_iterations, seed=args.seed),
        inr=FitConfig(inr=INRConfig(ndim=args.dim, width=args.inr_width, stream_layers=3, combined_layers=2),
                      shared=StageConfig(steps=100, learning_rate=1e-3, sample_fraction=0.05),
                      finetune=StageConfig(steps=args.inr_steps, learning_rate=1e-3, sample_fraction=0.1),
                      chunk_size=args.subjects, steps_per_call=100, checkpoint_every=1000, seed=args.seed,
                      time_curvature=args.inr_time_curvature),
        segmenter=SegmenterConfig(steps=args.segmenter_steps, volumes=args.segmenter_volumes, seed=args.seed),
    )  # fmt: skip
    started = time.perf_counter()
    result = run_forecasting(cohort, cfg, progress=lambda what: print(f"[{time.perf_counter() - started:7.1f} s] {what}", flush=True),
                             segmenter_source=seg_cohort)  # fmt: skip
    description = (f"Simulated cohort: {args.subjects} subjects, {args.sampling} sampling, {args.dim}D at {args.resolution} mm "
                   f"{cohort.spatial_shape}, seed {args.seed}; autoencoder {args.ae_steps} steps, NODER {args.noder_iterations} "
                   f"iterations, INR width {args.inr_width} x {args.inr_steps} steps (temporal curvature {args.inr_time_curvature}), "
                   f"U-Net {args.segmenter_steps} steps on "
                   + (f"{int(seg_cohort.mask.sum())} scans of {args.segmenter_subjects} other simulated subjects (seed {args.seed + 1000})"
                      if seg_cohort is not None else "the known scans") + f", {args.segmenter_volumes} volumes; "
                   f"total {result.seconds:.0f} s on this machine.")  # fmt: skip
    write_forecasting(args.out, result, cfg, description, cohort.spatial_shape, overwrite=True)
    print("\n" + description + "\n")
    print(results_markdown(result))

    extrap = {}
    for m in dict.fromkeys(r["method"] for r in result.rows):
        sel = [r for r in result.rows if r["method"] == m and r["role"] == "extrapolation"]
        extrap[m] = float(np.mean([np.mean([r[f"volume_error_pct_{s}"] for s in SCORED]) for r in sel]))
    floor = extrap["last_observation"]
    rows = [(f"{m}: extrapolated volume error %", f"{v:.2f}" + ("" if m in ("last_observation", "segmenter on the true scan") else
             f"  ({'beats' if v < floor else 'does not beat'} last observation {floor:.2f})")) for m, v in extrap.items()]  # fmt: skip
    print_results("Forecasting: regional volume error of the extrapolated scan", rows,
                  {"extrapolated_volume_error_pct": extrap, "segmenter_dice": result.segmenter_dice, "seconds": result.seconds,
                   "config": vars(args) | {"out": str(args.out)}})  # fmt: skip


if __name__ == "__main__":
    main()
