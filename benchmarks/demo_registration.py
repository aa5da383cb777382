"""The demo's registration settings, varied one at a time, scored by how much true volume change they recover.

`longbrain demo` registers a few subjects of its cohort (2D, 3 mm) in 400 steps; its
report says how much of each structure's true volume change the registration recovers
(mean |J| - 1 over the structure's baseline voxels, estimated over true, on the
training follow-ups). This script runs the demo's registration on the first subjects of
the demo's cohort with one setting changed per variant and prints that share per
structure, the |J| error against the true change (mean over hippocampus, ventricles,
cortex and WM), the monotone share, folding and Dice, one row per variant:

    python benchmarks/demo_registration.py [--subjects 4 --variants default,w0=10,w0=3,lr=1e-2]

A variant is `default` (the demo's configuration) or `name=value` settings joined by `+`
(`_common.registration_variant`: w0, width, lr, steps, the loss weights, ...).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import print_results, registration_variant  # noqa: E402

from longbrain_jax.demo import DemoConfig  # noqa: E402
from longbrain_jax.io import LoadConfig, read_bids  # noqa: E402
from longbrain_jax.registration.cohort import register_cohort  # noqa: E402
from longbrain_jax.registration.evaluate import STRUCTURES, evaluate_against_truth, summarise  # noqa: E402
from longbrain_jax.simulate import Simulator  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=4)
    ap.add_argument("--variants", default="default,w0=3,w0=6,w0=20,lr=1e-2")
    ap.add_argument("--work", type=Path, default=None, help="keep the cohort and registrations here")
    args = ap.parse_args(argv)
    demo = DemoConfig()
    work = args.work or Path(tempfile.mkdtemp(prefix="longbrain-demo-registration-"))
    bids = work / "bids"
    if not (bids / "participants.tsv").exists():
        Simulator(dataclasses.replace(demo.simulation, num_subjects=args.subjects, chunk_size=args.subjects)).run(bids)
    cohort = read_bids(bids, LoadConfig(normalise=demo.normalise))
    specs = [s.strip() for s in args.variants.split(",") if s.strip()]
    configs = {s: registration_variant(demo.registration, s) for s in specs}  # every spec checked before the first run
    rows, record = [], {"args": {k: str(v) for k, v in vars(args).items()}, "variants": {}}
    for spec, cfg in configs.items():
        start = time.perf_counter()
        register_cohort(cohort, work / spec.replace("=", "_"), cfg)
        seconds = time.perf_counter() - start
        scored = evaluate_against_truth(work / spec.replace("=", "_"), bids, cfg)
        train = [r for r in scored if r["role"] == "train"]
        share = {s: float(np.mean([r[f"volume_change_{s}"] / r[f"true_volume_change_{s}"] for r in train
                                   if abs(r[f"true_volume_change_{s}"]) > 1e-3])) for s in STRUCTURES}  # fmt: skip
        summary = summarise(scored)
        record["variants"][spec] = {"recovered": share, "summary": summary, "seconds": seconds}
        t = summary["train"]
        rows.append((f"{spec}", "recovered " + ", ".join(f"{s} {100 * v:.0f}%" for s, v in share.items())))
        rows.append((f"{spec}", f"train |J| error {t['jac_error']:.3f} of {t['jac_true_change']:.3f}, Dice {t['dice']:.3f} "
                              f"(unregistered {t['dice_unregistered']:.3f}), monotone {t['monotone']:.3f}, folding {t['folding']:.1e}, {seconds:.0f} s"))  # fmt: skip
    print_results(f"The demo's registration, one setting changed at a time ({args.subjects} subjects)", rows, record)
    return record


if __name__ == "__main__":
    main()
