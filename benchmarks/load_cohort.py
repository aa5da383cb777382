"""Time to load a longitudinal BIDS cohort with longbrain_jax vs nibabel alone.

Writes a cohort (default 100 subjects x 4 scans of 64^3, gzipped NIfTI), then, each
in a fresh process, (a) reads every image with plain nibabel into float32 arrays and
(b) runs `read_bids` (all validation, per-scan percentile normalisation, padded
cohort arrays). Prints both load times, their ratio (goal <= 1.5), each import
time (paid once per process, shown apart) and each peak RSS.

    python benchmarks/load_cohort.py [--subjects 100 --scans 4 --size 64 --repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import measure_in_child, print_results  # noqa: E402


def make_dataset(root: Path, subjects: int, scans: int, size: int, seed: int) -> None:
    """A cohort of smooth random brains (MRI-like compressibility), written as BIDS."""
    from scipy.ndimage import gaussian_filter

    from longbrain_jax.cohort import Cohort
    from longbrain_jax.io import write_bids

    rng = np.random.default_rng(seed)
    shape = (size,) * 3
    base = gaussian_filter(rng.random(shape, np.float32), 2.0) * 1000
    volumes = np.empty((subjects, scans, *shape), np.float32)
    for i in range(subjects):
        anatomy = base * rng.uniform(0.9, 1.1)
        for t in range(scans):
            volumes[i, t] = np.round(anatomy + rng.normal(0, 5, shape).astype(np.float32))
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    cohort = Cohort(
        volumes=volumes,
        mask=np.ones((subjects, scans), bool),
        ages=(60 + np.arange(scans) * 2.0)[None].repeat(subjects, 0).astype(np.float32),
        affines=np.repeat(affine[None], subjects, 0),
        subject_ids=tuple(f"{i:03d}" for i in range(subjects)),
        session_ids=tuple(tuple(str(t) for t in range(scans)) for _ in range(subjects)),
        groups=("healthy",) * subjects,
        sexes=("F",) * subjects,
    )
    write_bids(cohort, root)


def read_with_nibabel(root: str) -> dict:
    start = time.perf_counter()
    import nibabel as nib

    imported = time.perf_counter()
    paths = sorted(Path(root).glob("sub-*/ses-*/anat/*_T1w.nii.gz"))
    arrays = [np.asarray(nib.load(p).dataobj, dtype=np.float32) for p in paths]
    return {"scans": len(arrays), "import_seconds": imported - start, "load_seconds": time.perf_counter() - imported}


def read_with_longbrain(root: str, workers: int) -> dict:
    start = time.perf_counter()
    from longbrain_jax.io import LoadConfig, read_bids

    imported = time.perf_counter()
    cohort = read_bids(root, LoadConfig(workers=workers))
    return {
        "scans": int(cohort.mask.sum()),
        "cohort_mib": cohort.volumes.nbytes / 2**20,
        "import_seconds": imported - start,
        "load_seconds": time.perf_counter() - imported,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=100)
    parser.add_argument("--scans", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "bids"
        make_dataset(root, args.subjects, args.scans, args.size, args.seed)
        on_disk = sum(p.stat().st_size for p in root.rglob("*.nii.gz")) / 2**20
        nib_runs, ours_runs = [], []
        for _ in range(args.repeats):  # interleaved, so both see the same machine load
            nib_runs.append(measure_in_child(read_with_nibabel, str(root)))
            ours_runs.append(measure_in_child(read_with_longbrain, str(root), args.workers))
    t_nib = statistics.median(r["load_seconds"] for r in nib_runs)
    t_ours = statistics.median(r["load_seconds"] for r in ours_runs)
    imp_nib = statistics.median(r["import_seconds"] for r in nib_runs)
    imp_ours = statistics.median(r["import_seconds"] for r in ours_runs)
    record = {
        "benchmark": "load_cohort",
        "subjects": args.subjects,
        "scans_per_subject": args.scans,
        "size": args.size,
        "workers": args.workers,
        "repeats": args.repeats,
        "files_mib": round(on_disk, 1),
        "nibabel_seconds": round(t_nib, 3),
        "longbrain_seconds": round(t_ours, 3),
        "ratio": round(t_ours / t_nib, 3),
        "nibabel_import_seconds": round(imp_nib, 3),
        "longbrain_import_seconds": round(imp_ours, 3),
        "goal_ratio_max": 1.5,
        "nibabel_peak_rss_mib": round(max(r["peak_rss_mib"] for r in nib_runs), 1),
        "longbrain_peak_rss_mib": round(max(r["peak_rss_mib"] for r in ours_runs), 1),
        "cohort_array_mib": round(ours_runs[0]["cohort_mib"], 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }
    print_results(
        f"Loading {args.subjects} x {args.scans} scans of {args.size}^3 ({on_disk:.0f} MiB gzipped NIfTI)",
        [
            ("nibabel alone (median s)", f"{t_nib:.2f}"),
            (f"longbrain read_bids, {args.workers} workers (median s)", f"{t_ours:.2f}"),
            ("ratio longbrain / nibabel (goal <= 1.5)", f"{t_ours / t_nib:.2f}"),
            ("import once per process, nibabel / longbrain (s)", f"{imp_nib:.2f} / {imp_ours:.2f}"),
            ("peak RSS nibabel / longbrain (MiB)", f"{record['nibabel_peak_rss_mib']} / {record['longbrain_peak_rss_mib']}"),
            ("cohort array (MiB)", f"{record['cohort_array_mib']}"),
        ],
        record,
    )


if __name__ == "__main__":
    main()
