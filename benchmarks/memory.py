"""Predicted against measured peak memory of every stage, at two cohort sizes, under a budget.

Each stage runs in a fresh process (so its peak resident memory, VmHWM, is its own) with
`--memory-budget`, on two datasets:

- `2d`: 2D 256 x 256 slices, 128 subjects x 5 scans (synthetic heads with label maps;
  memory does not depend on what the images show);
- `3d`: the simulator's 3D anatomy at 2 mm (84 x 103 x 90), `--subjects-3d` subjects x 5 scans.

Stages: read (chunked validation, as `longbrain inspect`), fit (theta*, fine-tuning and
scoring, reconstruction), register (training and outputs), forecast (autoencoder,
segmenter, NODER), classify (encoder, logistic regression, SFCN), align (if present),
generate (the diffusion model: stage 1 SVFs, denoiser training, sampling and its outputs).
Every plan is made from XLA's buffers (`memory.PLAN_EXACTLY`), not the cheap upper
bound a run uses when even the bound fits, so each prediction can be compared with its
measurement. Network widths and step counts are small (memory does not depend on step counts); the
sizes every stage plans are what the budget allows. For each stage: the largest
predicted peak over the plans it logged, the measured peak, their ratio, and whether the
measurement stayed under the budget. Goals (issue 18): measured <= budget; prediction
within 30% of the measurement.

    python benchmarks/memory.py [--budget 3G --datasets 2d,3d --stages read,fit,register,forecast,classify,align,generate]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import measure_in_child, print_results  # noqa: E402

STAGES = ("read", "fit", "register", "forecast", "classify", "align", "generate")


# -- datasets ------------------------------------------------------------------------------------
def synthetic_2d(root: Path, subjects: int, scans: int, shape=(256, 256), seed: int = 0) -> Path:
    """Head-like 2D slices that shrink with age, with label maps (cortex, WM, ventricles, hippocampus)."""
    from longbrain_jax.cohort import Cohort
    from longbrain_jax.io import write_bids

    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    volumes = np.zeros((subjects, scans, *shape), np.float32)
    labels = np.zeros((subjects, scans, *shape), np.int32)
    ages = np.zeros((subjects, scans), np.float32)
    for i in range(subjects):
        a0 = rng.uniform(60, 75)
        for t in range(scans):
            ages[i, t] = a0 + 2.0 * t + rng.uniform(0, 0.5)
            r = np.hypot(yy / 0.8, xx / 0.7)
            vent = np.hypot(yy / (0.12 + 0.004 * t), xx / 0.1) < 1
            lab = np.where(r < 1, 3, 0) + np.where(r < 0.85, -1, 0)  # cortex 3 on a rim, WM 2 inside
            lab = np.where(vent, 4, lab)
            lab = np.where(np.hypot((yy - 0.3) / 0.06, (xx - 0.35) / 0.1) < 1, 17, lab)
            labels[i, t] = lab
            img = np.select([lab == 0, lab == 3, lab == 2, lab == 4, lab == 17], [0.0, 0.6, 1.0, 0.2, 0.55])
            volumes[i, t] = img + 0.02 * rng.standard_normal(shape)
    cohort = Cohort(volumes=volumes, mask=np.ones((subjects, scans), bool), ages=ages,
                    affines=np.tile(np.diag([1.0, 1.0, 1.0, 1.0]), (subjects, 1, 1)),
                    subject_ids=tuple(f"{i:04d}" for i in range(subjects)),
                    session_ids=tuple(tuple(str(t + 1) for t in range(scans)) for _ in range(subjects)),
                    groups=tuple(("healthy", "dementia")[i % 2] for i in range(subjects)), sexes=("",) * subjects,
                    labels=labels)  # fmt: skip
    return write_bids(cohort, root, label_pipeline="simulator")


def simulated_3d(root: Path, subjects: int) -> Path:
    from longbrain_jax.simulate import ScannerConfig, SimulationConfig, simulate_cohort

    cfg = SimulationConfig(num_subjects=subjects, sampling="regular", regular_ages=(60.0, 64.0, 68.0, 72.0, 76.0), resolution_mm=2.0, ndim=3,
                           write_fields=False, scanner=ScannerConfig(rotation_deg=3.0, translation_mm=3.0))  # fmt: skip
    return simulate_cohort(root, cfg)


# -- one stage in a child process --------------------------------------------------------------
class _Plans(logging.Handler):
    """Collects every plan a stage logs, with the time it was made, and when each planning began."""

    def __init__(self):
        super().__init__()
        self.plans, self.starts = [], []

    def emit(self, record):
        if hasattr(record, "plan"):
            self.plans.append((time.perf_counter(), record.plan))
        elif hasattr(record, "planning"):
            self.starts.append(time.perf_counter())

    def windows(self, end: float) -> list[tuple[float, float]]:
        """Each plan's phase: from the start of its planning (the compilations that measure its
        programs) to the next planning's start, or to `end`."""
        return [(max([s for s in self.starts if s <= t] + [t]), min([s for s in self.starts if s > t] + [end])) for t, _ in self.plans]


class _Sampler:
    """Resident memory every 10 ms in a thread, to attribute peaks to the phase each plan governs."""

    def __init__(self):
        import threading

        from longbrain_jax.memory import process_resident

        self.samples, self.running = [], True
        self.thread = threading.Thread(target=self._run, args=(process_resident,), daemon=True)
        self.thread.start()

    def _run(self, resident):
        while self.running:
            self.samples.append((time.perf_counter(), resident()))
            time.sleep(0.01)

    def peak_between(self, start: float, end: float) -> int:
        return max((r for t, r in self.samples if start <= t <= end), default=0)


def run_stage(stage: str, bids: str, work: str, budget_text: str, register_subjects: int = 16) -> dict:
    """Run `stage` on the dataset `bids` under the budget; returns the plans it made."""

    import longbrain_jax.memory
    from longbrain_jax.io import LoadConfig, scan_bids
    from longbrain_jax.memory import Budget, plan_host

    longbrain_jax.memory.PLAN_EXACTLY = True  # predictions from XLA's buffers, not the cheap upper bound

    collector, sampler = _Plans(), _Sampler()
    logger = logging.getLogger("longbrain_jax.memory")
    logger.addHandler(collector)
    logger.setLevel(logging.DEBUG)  # the collector reads the planning records; the debug log is printed on request
    if os.environ.get("LONGBRAIN_MEMORY_DEBUG"):
        debug = logging.StreamHandler(sys.stderr)
        debug.setLevel(logging.DEBUG)
        logger.addHandler(debug)
    logger.propagate = False
    budget = Budget.resolve(budget_text)
    data = scan_bids(bids, LoadConfig(label_pipeline="simulator"))
    shape, ndim = data.spatial_shape, data.ndim
    out = Path(work) / stage
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(Path(work) / "fit", ignore_errors=True)
    if stage == "read":
        chunk = plan_host("read", "subjects per chunk", budget, data.num_subjects, data.scan_bytes()).sizes["subjects per chunk"]
        for start in range(0, data.num_subjects, chunk):
            data.select(np.arange(start, min(start + chunk, data.num_subjects)))
    elif stage == "fit":
        from longbrain_jax.fit import FitConfig, StageConfig, fit_cohort, load_fit
        from longbrain_jax.fit.outputs import write_reconstructions
        from longbrain_jax.inr import INRConfig

        cfg = FitConfig(inr=INRConfig(ndim=ndim, width=64), shared=StageConfig(10, 1e-4, 0.001), finetune=StageConfig(10, 1e-3, 0.01),
                        holdout="extrapolation", steps_per_call=10, checkpoint_every=10)  # fmt: skip
        fit_cohort(data, out, cfg, budget=budget)
        write_reconstructions(Path(work) / "recon", load_fit(out), 0, np.array([80.0, 85.0]), shape, data.affines[0], budget=budget)
    elif stage == "register":
        from longbrain_jax.registration import DisplacementConfig, RegistrationConfig
        from longbrain_jax.registration.cohort import register_cohort

        # 3D: the narrowest network (each |J| map evaluates the network's Jacobian at every voxel of every scan)
        network = DisplacementConfig(ndim=ndim, width=64) if ndim == 2 else DisplacementConfig(ndim=ndim, width=32, time_features=16)
        cfg = RegistrationConfig(network=network, steps=10, steps_per_call=10, checkpoint_every=10)
        register_cohort(data.subset(range(min(register_subjects, data.num_subjects))), out, cfg, budget=budget)
    elif stage == "forecast":
        from longbrain_jax.forecast import ForecastConfig, run_forecasting
        from longbrain_jax.latent.autoencoder import AutoencoderConfig
        from longbrain_jax.noder import NODERConfig
        from longbrain_jax.segmenter import SegmenterConfig

        # 3D: autoencoder channels 8,16,32 (one 2 mm scan needs 3.5 GiB to train at 8,16,32 and 4.3 GiB at 16,32,64);
        # NODER needs 6.13 GiB for one 2 mm subject (its program 3.25 GiB, compiling it 0.85): use --budget 7G
        cfg = ForecastConfig(methods=("last_observation", "mrextrap", "noder"),
                             autoencoder=AutoencoderConfig(ndim=ndim, channels=(16, 32, 64) if ndim == 2 else (8, 16, 32), steps=5, adversarial_start=2),
                             noder=NODERConfig(iterations=5), segmenter=SegmenterConfig(steps=5), curve=False)  # fmt: skip
        run_forecasting(data, cfg, predictions=out / "predictions", budget=budget)
    elif stage == "classify":
        from longbrain_jax.classification import ClassifyConfig, run_classification
        from longbrain_jax.classifier import TrainConfig
        from longbrain_jax.fit import FitConfig, StageConfig, fit_cohort, load_fit
        from longbrain_jax.inr import INRConfig

        fit_cfg = FitConfig(inr=INRConfig(ndim=ndim, width=32, stream_layers=3, combined_layers=2), shared=StageConfig(2, 1e-4, 0.001),
                            finetune=StageConfig(2, 1e-3, 0.001), steps_per_call=2, checkpoint_every=2)  # fmt: skip
        fit_cohort(data, Path(work) / "fit", fit_cfg, budget=budget)  # under the same budget: the peak is the stage's
        train = TrainConfig(epochs=1)
        cfg = ClassifyConfig(encoder=train, baseline=train, sfcn=train, combinations=(("P_time",), ("P_space", "P_time", "P_com")),
                             folds=2)  # the split and two folds: three runs per method, planned to train together  # fmt: skip
        run_classification(load_fit(Path(work) / "fit"), data, cfg, budget=budget)
    elif stage == "align":
        from longbrain_jax.align import AlignConfig, align_dataset

        align_dataset(bids, out, AlignConfig(), budget=budget)
    elif stage == "generate":
        from longbrain_jax.diffusion import DiffusionConfig, SVFConfig
        from longbrain_jax.diffusion.generate import load_model, sample_model, train_model

        cfg = DiffusionConfig(svf=SVFConfig(steps=5), steps=5, checkpoint_every=5, sample_steps=4, samples=4)
        train_model(data, out / "model", cfg, budget=budget)
        sample_model(load_model(out / "model"), data, out / "samples", years=(2.0, 5.0), budget=budget)
    end = time.perf_counter()
    sampler.running = False
    phases = [{"plan": p.describe(), "predicted_bytes": p.predicted_bytes, "exact": p.exact, "stage": p.stage,
               "measured_bytes": sampler.peak_between(*window)} for (_, p), window in zip(collector.plans, collector.windows(end), strict=True)]  # fmt: skip
    best = max(phases, key=lambda p: p["predicted_bytes"], default=None)
    from longbrain_jax.memory import process_peak

    return {
        "process_peak_bytes": process_peak(),  # VmHWM across the resets that measuring compilations makes
        "phases": phases,
        "predicted_bytes": best["predicted_bytes"] if best else 0,
        "predicted_stage": best["stage"] if best else "",
        "exact": bool(best["exact"]) if best else False,
        "budget_bytes": budget.bytes,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", default="3G", help="--memory-budget of every stage")
    ap.add_argument("--datasets", default="2d,3d")
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--subjects-2d", type=int, default=128)
    ap.add_argument("--subjects-3d", type=int, default=16)
    ap.add_argument("--register-subjects", type=int, default=16, help="subjects registered (registration's chunk is what matters)")
    ap.add_argument("--work", type=Path, default=None, help="keep datasets and outputs here (default: a temporary folder)")
    args = ap.parse_args()

    from longbrain_jax.memory import format_size, parse_size

    budget = parse_size(args.budget)
    tmp = tempfile.TemporaryDirectory() if args.work is None else None
    work = Path(tmp.name) if tmp else args.work
    rows, record = [], {"budget_bytes": budget, "stages": {}}
    for name in args.datasets.split(","):
        started = time.perf_counter()
        bids = work / f"bids-{name}"
        if not bids.exists():
            if name == "2d":
                synthetic_2d(bids, args.subjects_2d, 5)
            else:
                simulated_3d(bids, args.subjects_3d)
        print(f"[{name}] dataset ready in {time.perf_counter() - started:.0f} s", flush=True)
        for stage in args.stages.split(","):
            if stage == "align":
                try:
                    import longbrain_jax.align  # noqa: F401
                except ImportError:
                    continue
            try:
                m = measure_in_child(run_stage, stage, str(bids), str(work / f"out-{name}"), args.budget, args.register_subjects)
            except RuntimeError as e:
                rows.append((f"{name} {stage}", f"FAILED ({e})"))
                continue
            measured = m.get("process_peak_bytes", m["peak_rss_mib"] * 2**20)
            ratio = m["predicted_bytes"] / measured if measured else float("nan")
            ok = measured <= budget
            rows.append((f"{name} {stage}", f"predicted {format_size(m['predicted_bytes'])} ({m['predicted_stage']}, "
                                            f"{'XLA' if m['exact'] else 'bound'}), measured {format_size(measured)}, "
                                            f"ratio {ratio:.2f}, {'under' if ok else 'OVER'} the budget, {m['seconds']:.0f} s"))  # fmt: skip
            record["stages"][f"{name}/{stage}"] = {**m, "measured_bytes": measured, "ratio": ratio, "under_budget": ok}
            lines = [f"    {p['plan']} -> measured {format_size(p['measured_bytes'])} ({p['predicted_bytes'] / max(p['measured_bytes'], 1):.2f})"
                     for p in m["phases"]]  # fmt: skip
            print(rows[-1][0], rows[-1][1], *lines, sep="\n", flush=True)
    print_results(f"Peak memory per stage under a {args.budget} budget (predicted / measured)", rows, record)
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
