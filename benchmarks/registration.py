"""Longitudinal registration on a simulated cohort, scored against the ground truth.

Simulates a cohort (regular ages 50, 58, 67, 75 by default), registers every subject
with the middle scan held out (interpolation) and the last held out (extrapolation),
for each loss ablation (NCC only; + spatial + temporal; all four; NCC + monotonic),
and prints Dice (mean over hippocampus, ventricles, cortex, WM) at training,
interpolated and extrapolated scans, the |J| error per structure against the true
change, the monotone share and folding; plus per-subject wall time and the ratio of
the vmapped cohort program to a per-subject loop of the same steps, in one process.
Goals (issue): Dice >= 0.89 interpolation, >= 0.85 extrapolation, monotone >= 0.98
with the monotonic loss, folding < 0.01%.

    python benchmarks/registration.py [--subjects 8 --dim 2 --resolution 3 --steps 2000 --ages 50,58,67,75]

Also the pairwise baseline (`registration/pairwise.py`: each training follow-up
registered to the baseline alone, fields interpolated / extrapolated linearly in
time), and for every row the Dice that the simulator's true field reaches on this
grid (the ceiling label resampling allows) next to the unregistered Dice.

And ANTs (`antspyx`, the bench extra; `--ants`, default its best script
`antsRegistrationSyN[s]`, rigid + affine + SyN): the baseline registered to each
training follow-up as the pairwise baseline does, its composite field read back in
our convention and interpolated / extrapolated in time the same way, scored with the
same definitions. In 3D at 3 mm over three decades (the change exceeds a voxel):

    python benchmarks/registration.py --dim 3 --resolution 3 --subjects 4 --ages 50,60,70,80 --ablations "all four"
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _common import print_results  # noqa: E402

from longbrain_jax import grid  # noqa: E402
from longbrain_jax.cohort import scan_roles  # noqa: E402
from longbrain_jax.io import LoadConfig, read_bids, scan_bids  # noqa: E402
from longbrain_jax.registration import DisplacementConfig, LossConfig, RegistrationConfig  # noqa: E402
from longbrain_jax.registration.cohort import register_cohort  # noqa: E402
from longbrain_jax.registration.evaluate import evaluate_against_truth, score_fields, summarise  # noqa: E402
from longbrain_jax.registration.pairwise import PairwiseFields, register_pairwise  # noqa: E402
from longbrain_jax.registration.train import init_states, registration_block  # noqa: E402
from longbrain_jax.simulate import SimulationConfig, simulate_cohort  # noqa: E402
from longbrain_jax.simulate.simulator import PIPELINE  # noqa: E402

ABLATIONS = {
    "NCC only": LossConfig(spatial=0.0, temporal=0.0, monotonic=0.0),
    "+ spatial + temporal": LossConfig(monotonic=0.0),
    "all four": LossConfig(),
    "NCC + monotonic": LossConfig(spatial=0.0, temporal=0.0),
}


def vmapped_vs_loop(cfg: RegistrationConfig, volumes, times, observed, steps: int) -> dict:
    """Seconds for `steps` steps of n subjects: one vmapped program vs n single-subject calls."""
    n = volumes.shape[0]
    args = lambda sl, ids: (jnp.asarray(volumes[sl]), jnp.asarray(times[sl]), jnp.asarray(observed[sl]), ids, jnp.int32(0), jnp.int32(0))  # noqa: E731
    run = lambda k, a: jax.block_until_ready(registration_block(init_states(cfg, k), *a, num_steps=steps, cfg=cfg))  # noqa: E731
    all_args = args(slice(None), jnp.arange(n, dtype=jnp.int32))
    run(n, all_args)
    start = time.perf_counter()
    run(n, all_args)
    together = time.perf_counter() - start
    one = [args(slice(i, i + 1), jnp.array([i], jnp.int32)) for i in range(n)]
    run(1, one[0])
    start = time.perf_counter()
    for a in one:
        run(1, a)
    loop = time.perf_counter() - start
    return {"vmapped_s": together, "loop_s": loop, "ratio": loop / together}


def register_ants(volumes: np.ndarray, times: np.ndarray, train: np.ndarray, transform: str, seed: int) -> PairwiseFields:
    """ANTs registering every training follow-up (train[i, j], j > 0) of every subject to its baseline.

    `volumes` (N, T, *spatial), `times` (N, T) years since baseline. Fixed = baseline, moving =
    follow-up, on a voxel grid (spacing 1, identity direction), so ANTs' composite forward field
    (rigid + affine + SyN composed) is phi(x) - x in voxels along the array axes: the map that
    carries the follow-up onto the baseline, as ours. Returned in normalised units as `PairwiseFields`
    (linear in time between the pair fields, like the pairwise baseline).
    """
    try:
        import ants
    except ImportError as err:  # the bench extra
        raise SystemExit("ANTs needs antspyx: pip install -e '.[bench]' (or --ants '' to skip it)") from err
    shape = volumes.shape[2:]
    fields, field_times = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(volumes.shape[0]):
            subject_fields, subject_times = [], []
            # ANTs starts from the intensity-weighted centres of mass: give it non-negative images (one linear map per subject)
            low, high = float(np.min(volumes[i, 0])), float(np.max(volumes[i, 0]))
            image = lambda v, low=low, high=high: ants.from_numpy(np.ascontiguousarray((v - low) / (high - low), np.float32), spacing=(1.0,) * len(shape))  # noqa: E731
            fixed = image(volumes[i, 0])
            for j in range(1, volumes.shape[1]):
                if not train[i, j]:
                    continue
                moving = image(volumes[i, j])
                reg = ants.registration(fixed, moving, type_of_transform=transform, random_seed=seed, outprefix=os.path.join(tmp, f"{i}_{j}_"))
                composed = ants.apply_transforms(fixed, moving, reg["fwdtransforms"], compose=os.path.join(tmp, f"{i}_{j}_composed_"))
                u_voxels = ants.image_read(composed).numpy()  # (*spatial, D)
                subject_fields.append(np.asarray(grid.displacement_from_world(jnp.asarray(u_voxels, jnp.float32), np.eye(4))))
                subject_times.append(float(times[i, j]))
            fields.append(np.stack(subject_fields) if subject_fields else np.zeros((0, *shape, len(shape)), np.float32))
            field_times.append(np.asarray(subject_times))
    return PairwiseFields(fields, field_times)


def with_weights(loss: LossConfig, args) -> LossConfig:
    """The ablation's loss with --temporal and --monotonic in place of the terms it keeps; --curvature and
    --extrapolate-years for all (curvature is ours, 0 by default: "NCC only" stays NCC only unless asked)."""
    return dataclasses.replace(loss, temporal=loss.temporal and args.temporal, monotonic=loss.monotonic and args.monotonic,
                               curvature=args.curvature, extrapolate_years=args.extrapolate_years)  # fmt: skip


def summary_rows(name: str, summary: dict) -> list[tuple[str, str]]:
    return [(f"{name:22s} {role:13s}", f"Dice {s['dice']:.3f} (unregistered {s['dice_unregistered']:.3f}, true field {s['dice_truth']:.3f})  "
             f"|J| error {s['jac_error']:.3f} of true change {s['jac_true_change']:.3f}  monotone {s['monotone']:.3f}  folding {100 * s['folding']:.4f}%")
            for role, s in summary.items()]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=8)
    ap.add_argument("--dim", type=int, default=2)
    ap.add_argument("--resolution", type=float, default=3.0)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--hidden-layers", type=int, default=2)
    ap.add_argument("--w0", type=float, default=3.0)
    ap.add_argument("--time-scale", type=float, default=10.0, help="years per unit time input (the simulated follow-up spans 25 y)")
    ap.add_argument("--ages", default="50,58,67,75", help="scan ages (regular sampling); the middle and last are held out")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--patches", type=int, default=16)
    ap.add_argument("--patch-size", type=int, default=9)
    ap.add_argument("--temporal", type=float, default=LossConfig().temporal, help="beta (the ablations keep their own zeros)")
    ap.add_argument("--monotonic", type=float, default=LossConfig().monotonic, help="gamma (the ablations keep their own zeros)")
    ap.add_argument("--curvature", type=float, default=0.0, help="kappa, the temporal curvature weight (ours; 0 = the paper)")
    ap.add_argument("--extrapolate-years", type=float, default=LossConfig().extrapolate_years,
                    help="how far past the last scan the regularisers reach")
    ap.add_argument("--no-pairwise", action="store_true", help="skip the pairwise baseline")
    ap.add_argument("--ants", default="antsRegistrationSyN[s]",
                    help="comma-separated ants.registration transforms to score beside ours ('' = none), e.g. 'antsRegistrationSyN[s],SyNCC,SyN'")
    ap.add_argument("--ablations", default=",".join(ABLATIONS))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    rows, record = [], {"args": vars(args), "ablations": {}}
    with tempfile.TemporaryDirectory() as tmp:
        ages = tuple(float(a) for a in args.ages.split(","))
        bids = simulate_cohort(Path(tmp) / "bids", SimulationConfig(num_subjects=args.subjects, sampling="regular", regular_ages=ages, resolution_mm=args.resolution,
                                                                    ndim=args.dim, seed=args.seed, chunk_size=min(8, args.subjects)))  # fmt: skip
        dataset = scan_bids(bids)
        base = RegistrationConfig(
            network=DisplacementConfig(ndim=args.dim, width=args.width, hidden_layers=args.hidden_layers, time_features=8, w0=args.w0, time_scale=args.time_scale),
            steps=args.steps, learning_rate=args.lr, patches=args.patches, patch_size=args.patch_size, chunk_size=args.subjects,
            steps_per_call=50, checkpoint_every=100, holdout="interpolation_extrapolation", seed=args.seed,
        )  # fmt: skip
        for name in args.ablations.split(","):
            loss = with_weights(ABLATIONS[name], args)
            cfg = dataclasses.replace(base, loss=loss)
            start = time.perf_counter()
            register_cohort(dataset, Path(tmp) / "reg", cfg, overwrite=True)
            seconds = time.perf_counter() - start
            summary = summarise(evaluate_against_truth(Path(tmp) / "reg", bids, cfg))
            record["ablations"][name] = {"summary": summary, "seconds": seconds}
            rows += summary_rows(name, summary)
            rows.append((f"{name:22s} wall time", f"{seconds / args.subjects:.1f} s per subject (registration + writing outputs)"))
        if not args.no_pairwise:
            cohort = read_bids(bids, LoadConfig(label_pipeline=PIPELINE))
            times = np.where(cohort.mask, cohort.ages - cohort.ages[:, :1], 0).astype(np.float32)
            cfg = dataclasses.replace(base, loss=with_weights(ABLATIONS["all four"], args))
            start = time.perf_counter()
            pairs = register_pairwise(cohort.volumes, times, scan_roles(cohort.mask, base.holdout) == 1, cfg)
            seconds = time.perf_counter() - start
            summary = summarise(score_fields(pairs.field, cohort, bids, base.holdout))
            record["ablations"]["pairwise"] = {"summary": summary, "seconds": seconds}
            rows += summary_rows("pairwise (all four)", summary)
            rows.append((f"{'pairwise (all four)':22s} wall time", f"{seconds / args.subjects:.1f} s per subject (registration only)"))
        for transform in filter(None, args.ants.split(",")):
            cohort = read_bids(bids, LoadConfig(label_pipeline=PIPELINE))
            times = np.where(cohort.mask, cohort.ages - cohort.ages[:, :1], 0).astype(np.float32)
            start = time.perf_counter()
            pairs = register_ants(cohort.volumes, times, scan_roles(cohort.mask, base.holdout) == 1, transform, args.seed)
            seconds = time.perf_counter() - start
            summary = summarise(score_fields(pairs.field, cohort, bids, base.holdout))
            record["ablations"][f"ANTs {transform}"] = {"summary": summary, "seconds": seconds}
            rows += summary_rows(f"ANTs {transform}", summary)
            rows.append((f"{'ANTs ' + transform:22s} wall time", f"{seconds / args.subjects:.1f} s per subject (registration only)"))
        cohort = dataset.select(np.arange(dataset.num_subjects))
        times = np.where(cohort.mask, cohort.ages - cohort.ages[:, :1], 0).astype(np.float32)
        speed = vmapped_vs_loop(base, cohort.volumes, times, cohort.mask, 20)
        record["speed"] = speed
        rows.append(("vmapped vs per-subject loop", f"{speed['vmapped_s']:.2f} s vs {speed['loop_s']:.2f} s for 20 steps x {args.subjects} subjects: {speed['ratio']:.2f}x"))
    rows.append(("sizes", f"{args.subjects} subjects, {args.dim}D {dataset.spatial_shape} at {args.resolution} mm, width {args.width}, "
                          f"{args.steps} steps, {args.patches} patches of {args.patch_size}, ages {args.ages}, seed {args.seed}, {jax.default_backend()}"))  # fmt: skip
    print_results("Longitudinal registration against ground truth", rows, record)


if __name__ == "__main__":
    main()
