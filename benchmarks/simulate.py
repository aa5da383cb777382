"""Wall time, peak memory and fidelity of the cohort simulator at cohort scale.

Each configuration runs in a fresh process (`longbrain simulate` as a user would:
450 subjects x 5 irregular scans in [50, 75], written as gzipped BIDS with the ground
truth), then the written volumes.tsv is scored against the prescribed rates.
Goal at 2 mm on a 2-core CPU: <= 10 minutes and <= 8 GB peak.

    python benchmarks/simulate.py [--subjects 450 --scans 5 --resolutions 2,3 [--no-fields]]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import measure_in_child, print_results  # noqa: E402


def run_simulation(out: str, subjects: int, scans: int, resolution: float, fields: bool, chunk: int) -> dict:
    from longbrain_jax.simulate import SimulationConfig, simulate_cohort

    cfg = SimulationConfig(
        num_subjects=subjects,
        sampling="irregular",
        scans_per_subject=(scans, scans),
        resolution_mm=resolution,
        chunk_size=chunk,
        write_fields=fields,
    )
    simulate_cohort(out, cfg)
    return {}


def fidelity(out: Path) -> dict[str, tuple[float, float, float]]:
    """How the written volumes follow the prescribed change since baseline, per region.

    **Returns:** (mean absolute error of the change in % of volume, its 99th
    percentile, the worst relative error among prescribed changes of 5 % or more).
    Relative errors of tiny changes (scans weeks apart) say nothing, so they are
    left out of the third figure.
    """
    from longbrain_jax.simulate import read_volumes
    from longbrain_jax.simulate.atrophy import AtrophyConfig, aging_profile, region_log_rates

    rates = region_log_rates(AtrophyConfig())
    by_subject: dict[str, list] = {}
    for row in read_volumes(out / "derivatives/simulator/volumes.tsv"):
        by_subject.setdefault(row["participant_id"], []).append(row)
    absolute: dict[str, list[float]] = {}
    relative: dict[str, list[float]] = {}
    for rows in by_subject.values():
        g = np.array([float(aging_profile(float(r["brain_age"]))) for r in rows])
        for region in ("hippocampus", "lateral_ventricles", "cortical_gm", "cerebral_wm"):
            prescribed = rates[region] * (g[1:] - g[0])
            for kind in ("pv", "label"):
                v = np.array([float(r[f"{region}_{kind}_mm3"]) for r in rows])
                err = np.abs(np.log(v[1:] / v[0]) - prescribed)
                absolute.setdefault(f"{region}_{kind}", []).extend((100 * err).tolist())
                big = np.abs(prescribed) >= np.log(1.05)
                relative.setdefault(f"{region}_{kind}", []).extend((err[big] / np.abs(prescribed[big])).tolist())
    return {
        k: (float(np.mean(v)), float(np.percentile(v, 99)), float(np.max(relative[k], initial=0.0)))
        for k, v in absolute.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=450)
    parser.add_argument("--scans", type=int, default=5)
    parser.add_argument("--resolutions", default="2,3")
    parser.add_argument("--chunk-size", type=int, default=8)
    parser.add_argument("--no-fields", action="store_true", help="skip |J| and displacement ground truth")
    parser.add_argument("--workdir", default=None, help="where to write (default: a temporary folder)")
    args = parser.parse_args()

    record: dict = {
        "benchmark": "simulate",
        "subjects": args.subjects,
        "scans_per_subject": args.scans,
        "fields": not args.no_fields,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "goal_2mm": "<= 600 s, <= 8192 MiB",
        "runs": {},
    }
    rows = []
    for res in (float(r) for r in args.resolutions.split(",")):
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            out = Path(tmp) / "bids"
            result = measure_in_child(run_simulation, str(out), args.subjects, args.scans, res, not args.no_fields, args.chunk_size)
            size_gib = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**30
            fid = fidelity(out)
        scans = args.subjects * args.scans
        run = {
            "seconds": round(result["seconds"], 1),
            "seconds_per_scan": round(result["seconds"] / scans, 3),
            "peak_rss_mib": round(result["peak_rss_mib"], 1),
            "output_gib": round(size_gib, 2),
            "fidelity_abs_pct_mean_p99_and_max_rel_for_changes_over_5pct": {
                k: [round(a, 3), round(b, 3), round(c, 3)] for k, (a, b, c) in fid.items()
            },
        }
        record["runs"][f"{res:g}mm"] = run
        rows += [
            (f"{res:g} mm: wall time (s)", f"{run['seconds']} ({run['seconds_per_scan']} s/scan)"),
            (f"{res:g} mm: peak RSS (MiB)", f"{run['peak_rss_mib']}"),
            (f"{res:g} mm: output (GiB)", f"{run['output_gib']}"),
        ]
        for k, (mean, p99, worst) in fid.items():
            rows.append(
                (f"{res:g} mm: {k} change error, % of volume (mean / p99); max rel. (>=5%)", f"{mean:.2f} / {p99:.2f}; {worst:.2f}")
            )
    print_results(f"Simulating {args.subjects} subjects x {args.scans} scans", rows, record)


if __name__ == "__main__":
    main()
