"""Follow-up to baseline rigid alignment against the simulator's truth: ours vs ANTsPy, same pairs.

Simulates a 3D cohort whose follow-ups are misaligned by a known rigid motion
(`longbrain simulate --misalign 5 5`: angles uniform in +-5 degrees about each axis,
shifts in +-5 mm), aligns every (baseline, follow-up) pair with `longbrain_jax.align`
(the whole cohort through one compiled program, chunk by chunk, compilation and image
reading included in the time) and with ANTsPy (`ants.registration(fixed, moving,
type_of_transform="Rigid")`: Mattes MI, 4 levels; reading included), one pair after
another in the same process, and prints for each the median and 90th percentile
rotation error (degrees: the angle of R_est R_true^T) and translation error (mm, at the
baseline's centre of mass) against the truth, and wall seconds per subject.
Goals (issue): ours median <= 0.2 degrees and <= 0.2 mm, at least as accurate as ANTs
and faster per subject for a cohort of 32.

    python benchmarks/align.py [--subjects 32 --resolution 2 --misalign 5,5 --chunk-size 8
                                --ants-transform Rigid --no-ants --work DIR]

Needs `antspyx` (pip install ".[ants]") for the ANTs column; set ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS
to the cores JAX uses (the script sets it to all of this machine's cores if unset).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", str(os.cpu_count() or 1))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from _common import print_results  # noqa: E402

from longbrain_jax.align import AlignConfig, estimate_transforms  # noqa: E402
from longbrain_jax.align.parameters import transform_error  # noqa: E402
from longbrain_jax.io import load_transform, scan_bids, scan_path  # noqa: E402
from longbrain_jax.io.transforms import from_itk_parameters  # noqa: E402
from longbrain_jax.simulate import ScannerConfig, SimulationConfig, simulate_cohort  # noqa: E402
from longbrain_jax.simulate.simulator import PIPELINE, RIGID_TRUTH  # noqa: E402


def simulate(root: Path, args) -> Path:
    if (root / "participants.tsv").is_file():
        return root
    degrees, mm = (float(v) for v in args.misalign.split(","))
    cfg = SimulationConfig(num_subjects=args.subjects, resolution_mm=args.resolution, ndim=3, chunk_size=4, write_fields=False,
                           seed=args.seed, scanner=ScannerConfig(rotation_deg=degrees, translation_mm=mm))  # fmt: skip
    start = time.perf_counter()
    simulate_cohort(root, cfg)
    print(f"simulated {args.subjects} subjects at {args.resolution} mm in {time.perf_counter() - start:.0f} s", flush=True)
    return root


def errors(estimates: dict, truths: dict, centres: dict) -> np.ndarray:
    """(pairs, 2): rotation (degrees) and translation (mm at the baseline centre) errors."""
    return np.array([transform_error(estimates[k], truths[k], centres[k[0]]) for k in sorted(truths)])


def summary(name: str, err: np.ndarray, seconds: float, subjects: int) -> dict:
    return {
        f"{name}_rotation_median_deg": float(np.median(err[:, 0])),
        f"{name}_rotation_p90_deg": float(np.percentile(err[:, 0], 90)),
        f"{name}_translation_median_mm": float(np.median(err[:, 1])),
        f"{name}_translation_p90_mm": float(np.percentile(err[:, 1], 90)),
        f"{name}_seconds_per_subject": seconds / subjects,
        f"{name}_seconds": seconds,
    }


def run_ants(root: Path, pairs: list[tuple[int, int, str, str, str]], transform: str, seed: int) -> tuple[dict, float]:
    import ants

    estimates, start = {}, time.perf_counter()
    for i, t, sub, base, ses in pairs:
        fixed = ants.image_read(str(scan_path(root, sub, base)))
        moving = ants.image_read(str(scan_path(root, sub, ses)))
        reg = ants.registration(fixed, moving, type_of_transform=transform, random_seed=seed)
        tx = ants.read_transform(reg["fwdtransforms"][0])  # fixed point -> moving point, as ours
        estimates[(i, t)] = from_itk_parameters(tx.parameters, tx.fixed_parameters, "AffineTransform")
    return estimates, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=32)
    parser.add_argument("--resolution", type=float, default=2.0)
    parser.add_argument("--misalign", default="5,5", help="Max rotation (degrees) and shift (mm) of follow-ups.")
    parser.add_argument("--chunk-size", type=int, default=8)
    parser.add_argument("--samples", type=int, default=AlignConfig().samples)
    parser.add_argument("--iterations", default="", help="Per level, comma-separated (default: AlignConfig's).")
    parser.add_argument("--ants-transform", default="Rigid", help="ants.registration's type_of_transform.")
    parser.add_argument("--no-ants", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="Keep (and reuse) the simulated cohort here.")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = simulate((args.work or Path(tmp)) / f"cohort-{args.subjects}-{args.resolution}mm-seed{args.seed}", args)
        dataset = scan_bids(root)
        pairs, truths = [], {}
        for i, e in enumerate(dataset._entries):
            for t in range(1, len(e.session_ids)):
                ses = e.session_ids[t]
                pairs.append((i, t, e.subject_id, e.session_ids[0], ses))
                truths[(i, t)] = load_transform(root / "derivatives" / PIPELINE / f"sub-{e.subject_id}" / f"ses-{ses}" / "anat" / f"sub-{e.subject_id}_ses-{ses}_{RIGID_TRUTH}")
        n = dataset.num_subjects
        iterations = tuple(int(v) for v in args.iterations.split(",") if v.strip()) or None
        cfg = AlignConfig(chunk_size=args.chunk_size, samples=args.samples, iterations=iterations, seed=args.seed)
        start = time.perf_counter()
        est = estimate_transforms(dataset, cfg)
        ours_seconds = time.perf_counter() - start
        centres = {i: est.centre[i] for i in range(n)}
        ours = errors({(i, t): est.to_baseline[i, t] for i, t, *_ in pairs}, truths, centres)
        identity = errors({k: np.eye(4) for k in truths}, truths, centres)
        record = {"subjects": n, "pairs": len(pairs), "resolution_mm": args.resolution, "misalign": args.misalign,
                  "devices": f"{jax.device_count()} x {jax.devices()[0].platform}", "cpu_count": os.cpu_count(),
                  "config": {"samples": cfg.samples, "iterations": list(cfg.level_iterations), "sigmas": list(cfg.smoothing_sigmas),
                             "bias_degree": cfg.bias_degree, "chunk_size": cfg.chunk_size, "batch": cfg.batch},
                  **summary("ours", ours, ours_seconds, n), **summary("identity", identity, 0.0, n)}  # fmt: skip
        rows = [
            ("pairs (subjects)", f"{len(pairs)} ({n}), {args.resolution} mm 3D, misaligned up to {args.misalign} (deg, mm)"),
            ("misalignment (median)", f"{np.median(identity[:, 0]):.2f} deg, {np.median(identity[:, 1]):.2f} mm"),
            ("ours: rotation error", f"median {record['ours_rotation_median_deg']:.3f}, p90 {record['ours_rotation_p90_deg']:.3f} deg"),
            ("ours: translation error", f"median {record['ours_translation_median_mm']:.3f}, p90 {record['ours_translation_p90_mm']:.3f} mm"),
            ("ours: wall", f"{ours_seconds:.1f} s = {ours_seconds / n:.2f} s/subject (compilation and reading included)"),
        ]
        if not args.no_ants:
            ants_est, ants_seconds = run_ants(root, pairs, args.ants_transform, args.seed)
            theirs = errors(ants_est, truths, centres)
            record.update(summary("ants", theirs, ants_seconds, n), ants_transform=args.ants_transform,
                          itk_threads=os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"])  # fmt: skip
            rows += [
                (f"ANTs {args.ants_transform}: rotation error", f"median {record['ants_rotation_median_deg']:.3f}, p90 {record['ants_rotation_p90_deg']:.3f} deg"),
                (f"ANTs {args.ants_transform}: translation error", f"median {record['ants_translation_median_mm']:.3f}, p90 {record['ants_translation_p90_mm']:.3f} mm"),
                (f"ANTs {args.ants_transform}: wall", f"{ants_seconds:.1f} s = {ants_seconds / n:.2f} s/subject"),
                ("speed-up per subject", f"{ants_seconds / ours_seconds:.2f}x"),
            ]  # fmt: skip
        goals = record["ours_rotation_median_deg"] <= 0.2 and record["ours_translation_median_mm"] <= 0.2
        if "ants_seconds" in record:
            goals = goals and ours_seconds < record["ants_seconds"] and np.median(ours[:, 1]) <= np.median(theirs[:, 1]) and np.median(ours[:, 0]) <= np.median(theirs[:, 0])
        record["goals_met"] = bool(goals)
        rows.append(("goals met", str(goals)))
        print_results("Follow-up to baseline rigid alignment vs the simulator's truth", rows, record)


if __name__ == "__main__":
    main()
