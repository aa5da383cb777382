"""Which setting of the displacement INR closes its gap to ANTs SyN: one pair per subject, one knob at a time.

Simulates `--subjects` subjects scanned at two ages (default 50 and 70: two decades, a change
well over a voxel), registers each follow-up to its baseline with the pairwise baseline
(`registration/pairwise.py`: the same displacement INR and losses as the continuous-time
model, on one pair) under each variant, and ANTs (`antspyx`, the bench extra) on the same
pairs, all scored against the simulator's truth by `registration/evaluate.py` (Dice of the
carried labels, |J| error per structure against the true change, monotone share, folding).
A variant is `default` (the base: the registration benchmark's settings, width 32, 2 hidden
layers, w0 3, lr 2e-3, 16 patches of 9, gamma 0.1, kappa 1e8, at `--steps`), settings changed
from it (`_common.registration_variant`: `name=value` joined by `+`), or `ants=<transform>`:

    python benchmarks/registration_knobs.py --dim 3 --resolution 3 --subjects 2 --variants \\
        "ants=antsRegistrationSyN[s],default,lr=1e-2,spatial=0+temporal=0+monotonic=0+curvature=0,w0=10,w0=20,patches=64,w0=10+width=64"
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from _common import print_results, registration_variant  # noqa: E402
from registration import register_ants, summary_rows  # noqa: E402

from longbrain_jax.cohort import scan_roles  # noqa: E402
from longbrain_jax.io import LoadConfig, read_bids  # noqa: E402
from longbrain_jax.registration import DisplacementConfig, LossConfig, RegistrationConfig  # noqa: E402
from longbrain_jax.registration.evaluate import score_fields, summarise  # noqa: E402
from longbrain_jax.registration.pairwise import register_pairwise  # noqa: E402
from longbrain_jax.simulate import SimulationConfig, simulate_cohort  # noqa: E402
from longbrain_jax.simulate.simulator import PIPELINE  # noqa: E402


def base_config(dim: int, steps: int, subjects: int) -> RegistrationConfig:
    """The registration benchmark's settings (`benchmarks/registration.py`, gamma 0.1 and kappa 1e8)."""
    return RegistrationConfig(network=DisplacementConfig(ndim=dim, width=32, hidden_layers=2, time_features=8, w0=3.0, time_scale=10.0),
                              loss=LossConfig(monotonic=0.1, curvature=1e8), steps=steps, learning_rate=2e-3, patches=16, patch_size=9,
                              chunk_size=subjects, seed=0)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=2)
    ap.add_argument("--dim", type=int, default=3)
    ap.add_argument("--resolution", type=float, default=3.0)
    ap.add_argument("--ages", default="50,70", help="the two scan ages")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--variants", default="ants=antsRegistrationSyN[s],default,w0=10", help="','-separated (module docstring)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    ages = tuple(float(a) for a in args.ages.split(","))
    if len(ages) != 2:
        raise SystemExit("--ages takes two ages: a baseline and one follow-up")
    base = base_config(args.dim, args.steps, args.subjects)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    configs = {v: None if v.startswith("ants=") else registration_variant(base, v) for v in variants}  # every spec checked first
    rows, record = [], {"args": vars(args), "variants": {}}
    with tempfile.TemporaryDirectory() as tmp:
        bids = simulate_cohort(Path(tmp) / "bids", SimulationConfig(num_subjects=args.subjects, sampling="regular", regular_ages=ages,
                                                                    resolution_mm=args.resolution, ndim=args.dim, seed=args.seed,
                                                                    chunk_size=min(8, args.subjects)))  # fmt: skip
        cohort = read_bids(bids, LoadConfig(label_pipeline=PIPELINE))
        times = np.where(cohort.mask, cohort.ages - cohort.ages[:, :1], 0).astype(np.float32)
        train = scan_roles(cohort.mask, "none") == 1
        for variant, cfg in configs.items():
            start = time.perf_counter()
            if cfg is None:
                pairs = register_ants(cohort.volumes, times, train, variant.removeprefix("ants="), args.seed)
            else:
                pairs = register_pairwise(cohort.volumes, times, train, cfg)
            seconds = time.perf_counter() - start
            s = summarise(score_fields(pairs.field, cohort, bids, "none"))["train"]
            record["variants"][variant] = {"summary": s, "seconds_per_pair": seconds / args.subjects}
            rows += summary_rows(variant, {"train": s})
            rows.append((f"{variant:22s} wall time", f"{seconds / args.subjects:.0f} s per pair"))
            print(*rows[-2], *rows[-1], flush=True)
    rows.append(("sizes", f"{args.subjects} subjects, {args.dim}D {cohort.spatial_shape} at {args.resolution} mm, ages {args.ages}, "
                          f"base {args.steps} steps, seed {args.seed}, {jax.default_backend()}"))  # fmt: skip
    print_results("Pairwise INR registration settings against ANTs", rows, record)


if __name__ == "__main__":
    main()
