"""The spatiotemporal INR's extrapolation with and without the temporal curvature penalty.

Simulates the forecasting benchmark's cohort (regular ages 50, 58, 67, 75; the 58- and
75-year scans held out), fits the INR on the two known scans of every subject at each
`--weights` value of `FitConfig.time_curvature`, and prints SSIM and PSNR of the
interpolated and extrapolated scans beside last observation carried forward and
voxelwise linear regression.

    python benchmarks/inr_time_curvature.py [--subjects 16 --weights 0,0.001,0.01,0.1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _common import print_results  # noqa: E402

from longbrain_jax import metrics  # noqa: E402
from longbrain_jax.cohort import ROLES, scan_roles  # noqa: E402
from longbrain_jax.fit import FitConfig, StageConfig  # noqa: E402
from longbrain_jax.fit.evaluate import DATA_RANGE  # noqa: E402
from longbrain_jax.forecast import forecasters as fc  # noqa: E402
from longbrain_jax.inr import INRConfig  # noqa: E402
from longbrain_jax.io import LoadConfig, read_bids  # noqa: E402
from longbrain_jax.simulate import SimulationConfig, simulate_cohort  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subjects", type=int, default=16)
    p.add_argument("--resolution", type=float, default=3.0)
    p.add_argument("--weights", default="0,0.001,0.01,0.1")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        sim = SimulationConfig(num_subjects=args.subjects, resolution_mm=args.resolution, ndim=2, sampling="regular",
                               chunk_size=min(args.subjects, 8), seed=args.seed)  # fmt: skip
        cohort = read_bids(simulate_cohort(Path(tmp) / "bids", sim), LoadConfig())
    roles = scan_roles(cohort.mask, "interpolation_extrapolation")
    known = roles == ROLES.index("train")
    ages = np.where(cohort.mask, cohort.ages, 0).astype(np.float32)

    def scores(f: fc.Forecast) -> dict:
        out = {}
        for role in ("interpolation", "extrapolation"):
            held = np.argwhere(roles == ROLES.index(role))
            pairs = [(jnp.asarray(f.images[i, j]), jnp.asarray(cohort.volumes[i, j])) for i, j in held]
            out[role] = {"ssim": float(np.mean([metrics.ssim(a, b, DATA_RANGE) for a, b in pairs])),
                         "psnr": float(np.mean([metrics.psnr(a, b, DATA_RANGE) for a, b in pairs]))}  # fmt: skip
        out["seconds"] = f.seconds
        return out

    record = {"last_observation": scores(fc.last_observation(cohort.volumes, ages, known)),
              "voxelwise_linear": scores(fc.voxelwise_linear(cohort.volumes, ages, known))}  # fmt: skip
    for w in (float(x) for x in args.weights.split(",")):
        cfg = FitConfig(inr=INRConfig(ndim=2, width=64, stream_layers=3, combined_layers=2),
                        shared=StageConfig(steps=100, learning_rate=1e-3, sample_fraction=0.05),
                        finetune=StageConfig(steps=args.steps, learning_rate=1e-3, sample_fraction=0.1),
                        chunk_size=args.subjects, steps_per_call=100, checkpoint_every=1000, seed=args.seed, time_curvature=w)  # fmt: skip
        record[f"inr, curvature {w:g}"] = scores(fc.inr_forecast(cohort, known, cfg))
    rows = [(f"{name:28s} {role}", f"SSIM {r[role]['ssim']:.4f}  PSNR {r[role]['psnr']:.2f} dB")
            for name, r in record.items() for role in ("interpolation", "extrapolation")]  # fmt: skip
    rows.append(("sizes", f"{args.subjects} subjects, 2D at {args.resolution} mm {cohort.spatial_shape}, INR width 64 x {args.steps} steps, seed {args.seed}"))
    print_results("Spatiotemporal INR: extrapolation against the temporal curvature weight", rows, record | {"args": vars(args)})


if __name__ == "__main__":
    main()
