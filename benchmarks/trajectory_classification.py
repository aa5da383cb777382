"""The whole trajectory-classification experiment: simulate, fit, classify, SFCN (paper Table 2).

For each sampling scheme: simulate a paired cohort (every anatomy as a healthy and a
dementia-like subject), fit one spatiotemporal INR per subject, then train and test
the token encoder and logistic regression on every stream combination and SFCN on the
scans, on the paper's split (2:1 by anatomy; test = both versions of each test
anatomy, train = one version per anatomy), optionally with repeated k-fold. Prints one
table per sampling next to the paper's accuracies.

CPU scale (default): 2D axial slices at 3 mm, 60 anatomies (120 subjects), INR width
64, small classifier widths. GPU, the paper's scale: `--anatomies 225 --dim 3
--resolution 2 --fit-width 512 --fit-steps 100 --fit-fraction 0.01 --paper-classifiers`.

    python benchmarks/trajectory_classification.py [--anatomies 60 --samplings irregular,regular]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from _common import print_results  # noqa: E402

from longbrain_jax.classification import ClassifyConfig, results_table, run_classification  # noqa: E402
from longbrain_jax.classifier import TrainConfig  # noqa: E402
from longbrain_jax.fit import FitConfig, StageConfig, fit_cohort, load_fit  # noqa: E402
from longbrain_jax.inr import INRConfig  # noqa: E402
from longbrain_jax.io import read_bids  # noqa: E402
from longbrain_jax.simulate import ScannerConfig, SimulationConfig, simulate_cohort  # noqa: E402

PAPER = {  # accuracy %, regular / irregular
    "SFCN images": (97.7, 73.7), "P_time": (95.6, 81.3), "P_space": (50.0, 49.8), "P_space+P_com": (91.7, 74.6),
    "P_time+P_com": (96.3, 78.3), "P_space+P_time+P_com": (95.3, 77.3),
}  # fmt: skip


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of y against x (0 for a single point)."""
    return float(np.polyfit(x, y, 1)[0]) if x.size > 1 else 0.0


def oracle_features(bids: Path, subject_ids) -> dict[str, np.ndarray]:
    """What separates the simulated classes by construction, from the simulator's ground truth
    (`derivatives/simulator/volumes.tsv`), one row per subject in `subject_ids` order:

    - "true volume rates + ages": each region's log-volume slope (1/yr) from its exact
      partial volume, with the first and last scan age (the rates grow with brain age, so a
      rate means little without the age it was measured at);
    - "true brain-age gap": brain age minus age at the first and the last scan, and its slope.

    Classified like every other method (same splits, logistic regression): the ceiling a
    perfect measurement of the simulated signal allows.
    """
    from longbrain_jax.simulate import read_volumes

    by_subject: dict[str, list[dict[str, str]]] = {}
    for row in read_volumes(bids / "derivatives" / "simulator" / "volumes.tsv"):
        by_subject.setdefault(row["participant_id"].removeprefix("sub-"), []).append(row)
    regions = [k.removesuffix("_pv_mm3") for k in next(iter(by_subject.values()))[0] if k.endswith("_pv_mm3")]
    volumes, gaps = [], []
    for sid in subject_ids:
        rows = sorted(by_subject[str(sid).removeprefix("sub-")], key=lambda r: float(r["age"]))
        age = np.array([float(r["age"]) for r in rows])
        gap = np.array([float(r["brain_age"]) for r in rows]) - age
        logs = [np.log(np.maximum([float(r[f"{name}_pv_mm3"]) for r in rows], 1e-3)) for name in regions]
        volumes.append([_slope(age, v) for v in logs] + [age[0], age[-1]])
        gaps.append([gap[0], gap[-1], _slope(age, gap)])
    volumes = np.array(volumes, np.float32)
    volumes = volumes[:, np.any(volumes != 0, axis=0)]  # regions off a 2D slice for every subject
    return {"oracle: true volume rates + ages": volumes, "oracle: true brain-age gap": np.array(gaps, np.float32)}


# The arguments that make a simulated cohort and its fit; `--work` reuses both only when these agree.
WORK_ARGS = ("anatomies", "dim", "resolution", "fit_width", "fit_steps", "fit_fraction", "fit_time_curvature", "snr", "bias_sd", "seed")


def check_work(work: Path, args: argparse.Namespace) -> None:
    """Record the cohort/fit arguments in WORK/args.json, or stop if a different run made WORK."""
    wanted = {k: getattr(args, k) for k in WORK_ARGS}
    record = work / "args.json"
    if record.exists():
        made = json.loads(record.read_text())
        if made != wanted:
            differ = {k: (made.get(k), v) for k, v in wanted.items() if made.get(k) != v}
            sys.exit(f"{work} was made with other arguments (recorded, asked): {differ}; use another --work")
    else:
        work.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(wanted, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--anatomies", type=int, default=60)
    ap.add_argument("--samplings", default="irregular,regular")
    ap.add_argument("--dim", type=int, default=2)
    ap.add_argument("--resolution", type=float, default=3.0)
    ap.add_argument("--fit-width", type=int, default=64)
    ap.add_argument("--fit-steps", type=int, default=300)
    ap.add_argument("--fit-fraction", type=float, default=0.1)
    ap.add_argument("--fit-time-curvature", type=float, default=0.0,
                    help="FitConfig.time_curvature: penalise the INR's second difference in time (0 = off, the paper)")
    ap.add_argument("--tokens", default="raw", choices=("raw", "standardised"), help="ClassifyConfig.tokens: the encoder's input")
    ap.add_argument("--work", type=Path, default=None,
                    help="keep the simulated cohorts and fits here (WORK/SAMPLING/{bids,fit}) and reuse them when present")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--folds", type=int, default=0)
    ap.add_argument("--paper-classifiers", action="store_true", help="the paper's classifier widths (GPU)")
    ap.add_argument("--snr", type=float, default=30.0, help="Rician SNR of the simulated scans")
    ap.add_argument("--bias-sd", type=float, default=0.08, help="bias-field sd of the simulated scans")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    if args.paper_classifiers:
        ccfg = ClassifyConfig(tokens=args.tokens, folds=args.folds, seed=args.seed)
    else:
        ccfg = ClassifyConfig(
            token_widths=(64, 128, 256), head_width=128, tokens=args.tokens, encoder=TrainConfig(epochs=args.epochs, learning_rate=1e-3),
            baseline=TrainConfig(epochs=args.epochs, learning_rate=1e-3), sfcn_channels=(16, 32, 64, 64, 64),
            sfcn=TrainConfig(epochs=args.epochs, learning_rate=1e-3), folds=args.folds, seed=args.seed,
        )  # fmt: skip
    rows, record = [], {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "samplings": {}}
    for sampling in args.samplings.split(","):
        col = 0 if sampling == "regular" else 1
        with tempfile.TemporaryDirectory() as tmp:
            work = (args.work / sampling) if args.work is not None else Path(tmp)
            check_work(work, args)
            start = time.perf_counter()
            sim = SimulationConfig(num_subjects=args.anatomies, sampling=sampling, paired=True, resolution_mm=args.resolution,
                                   ndim=args.dim, seed=args.seed, chunk_size=8, write_fields=False,
                                   scanner=ScannerConfig(snr=args.snr, bias_sd=args.bias_sd))  # fmt: skip
            if not (work / "bids" / "participants.tsv").exists():
                simulate_cohort(work / "bids", sim)
            cohort = read_bids(work / "bids")
            sim_s = time.perf_counter() - start
            fcfg = FitConfig(
                inr=INRConfig(ndim=args.dim, width=args.fit_width),
                shared=StageConfig(100, 1e-3, min(1.0, args.fit_fraction / 2)),
                finetune=StageConfig(args.fit_steps, 1e-3, args.fit_fraction),
                chunk_size=64, steps_per_call=50, checkpoint_every=100, seed=args.seed, time_curvature=args.fit_time_curvature,
            )  # fmt: skip
            start = time.perf_counter()
            if not (work / "fit" / "params").exists():
                fit_cohort(cohort, work / "fit", fcfg, resume=(work / "fit").exists())
            fit_s = time.perf_counter() - start
            fitted = load_fit(work / "fit")
            start = time.perf_counter()
            results = run_classification(fitted, cohort, ccfg, features=oracle_features(work / "bids", cohort.subject_ids))
            cls_s = time.perf_counter() - start
        print(f"\n## {sampling} sampling\n\n" + results_table(results))
        record["samplings"][sampling] = {"results": results["rows"], "simulate_s": sim_s, "fit_s": fit_s, "classify_s": cls_s,
                                         "train": len(results["train"]), "test": len(results["test"])}  # fmt: skip
        for r in results["rows"]:
            key = "SFCN images" if r["method"] == "SFCN" else r["streams"]
            paper = PAPER.get(key) if r["method"] != "INR logistic" else None
            rows.append((f"{sampling:9s} {r['method']:12s} {r['streams']}",
                         f"acc {r['accuracy']:.3f}  bal {r['balanced_accuracy']:.3f}  AUC {r['auc']:.3f}"
                         + (f"  | paper {paper[col]}%" if paper else "")))  # fmt: skip
        rows.append((f"{sampling:9s} sizes / time", f"{len(results['train'])} train / {len(results['test'])} test subjects; "
                     f"simulate {sim_s:.0f} s, fit {fit_s:.0f} s, classify {cls_s:.0f} s on {jax.default_backend()}"))  # fmt: skip
    print_results(f"Trajectory classification ({args.anatomies} anatomies, {args.dim}D at {args.resolution} mm, "
                  f"SNR {args.snr}, bias sd {args.bias_sd}, seed {args.seed})", rows, record)  # fmt: skip


if __name__ == "__main__":
    main()
