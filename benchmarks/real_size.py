"""A cohort at real size through every command, as a user runs them, inside one memory budget.

Simulates a 3D cohort (default 1.5 mm, 8 subjects x 4 scans, follow-ups misaligned by up
to 5 degrees and 5 mm), then runs `longbrain align`, `fit`, `register`, `forecast` and
`classify` on it as separate processes with `--memory-budget`, each with the default
settings except network widths and step counts (given below; peak memory is set by the
planned chunk and block sizes, not by the number of steps). On 2 CPU cores at 1.5 mm the run
takes over 2 hours: the forecast alone about 1 h 40 min (16 minutes to its autoencoder, segmenter
and MRExtrap, then about 10 minutes per subject for NODER, fitted and integrated at 1.5 mm;
RESULTS.md), fit and register about 15-20 minutes each. Registration's widths are the smallest: at width 64 with 64 time features
one training step of 8 subjects x 4 scans (12 patches of 12^3 voxels each) is about 0.9
TFLOP, over a minute on 2 cores, and its |J| maps evaluate the network's Jacobian at every
voxel of every scan. Prints each stage's wall time and the peak resident memory of its process
(the child's high-water mark followed while it runs, `run_stage`), against the budget.

    python benchmarks/real_size.py --work /tmp/real --budget 16G
    python benchmarks/real_size.py --work /tmp/real --resolution 3 --subjects 4   # a quick look

Stages that finished in WORK (each leaves `WORK/<stage>.done`) are skipped, so a stopped run
goes on from the stage it was in; pass `--fresh` to start over.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_results  # noqa: E402

LONGBRAIN = [sys.executable, "-m", "longbrain_jax.cli"]


def stages(work: Path, args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """(stage, command line) in the order a user runs them; every command reads the aligned dataset."""
    data, aligned = work / "bids", work / "aligned"
    budget = ["--memory-budget", args.budget, "--quiet", "--seed", "0"]
    scans = f"{args.scans},{args.scans}"
    return [
        ("simulate", ["simulate", data, "--subjects", args.subjects, "--scans", scans, "--resolution", args.resolution,
                      "--dim", "3", "--misalign", "5", "5", *budget]),
        ("align", ["align", data, aligned, "--transform", "rigid", *budget]),
        ("fit", ["fit", aligned, work / "fit", "--width", "64", "--shared-steps", "50", "--steps", "50", *budget]),
        ("register", ["register", aligned, work / "register", "--width", "32", "--time-features", "16", "--steps", "20", *budget]),
        ("forecast", ["forecast", aligned, work / "forecast", "--method", "last_observation,voxelwise_linear,mrextrap,noder",
                      "--ae-channels", "8,16,32", "--ae-steps", "4", "--adversarial-start", "2", "--noder-iterations", "4",
                      "--segmenter-steps", "4", "--no-curve", *budget]),
        ("classify", ["classify", work / "fit", work / "classify", "--bids", aligned, "--folds", "2", "--repeats", "1",
                      "--epochs", "5", "--sfcn-channels", "8,16,16,16,16", *budget]),
    ]  # fmt: skip


def high_water_mib(pid: int) -> float:
    """The kernel's high-water mark of a live process's resident memory (VmHWM, MiB); 0 once it has ended."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    return max((int(line.split()[1]) / 1024.0 for line in status.splitlines() if line.startswith(("VmHWM:", "VmRSS:"))), default=0.0)


def run_stage(command: list, every: float = 0.05, program: list = LONGBRAIN) -> tuple[float, float]:
    """Run one command in a child process: (wall seconds, the child's peak RSS in MiB).

    The peak is the largest high-water mark read every `every` seconds while the child runs, and its
    `ru_maxrss` at exit: the commands restart the kernel's high-water mark whenever they measure a
    compilation for a memory plan (`memory._reset_peak`), so `ru_maxrss` alone holds only the peak
    since the last restart and can miss the stage's largest phase."""
    start = time.perf_counter()
    proc = subprocess.Popen([*program, *map(str, command)])
    peak, done = [0.0], threading.Event()

    def follow() -> None:
        while not done.wait(every):
            peak[0] = max(peak[0], high_water_mib(proc.pid))

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    follower.join()
    seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"`longbrain {' '.join(map(str, command))}` failed with exit code {code}")
    return seconds, max(peak[0], usage.ru_maxrss / 1024.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/longbrain-real-size"))
    parser.add_argument("--budget", default="16G")
    parser.add_argument("--resolution", default="1.5")
    parser.add_argument("--subjects", default="8")
    parser.add_argument("--scans", default="4")
    parser.add_argument("--only", default="", help="Comma-separated stages to run (default: all).")
    parser.add_argument("--fresh", action="store_true", help="Delete WORK first.")
    args = parser.parse_args()
    if args.fresh and args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True, exist_ok=True)
    only = set(filter(None, args.only.split(",")))
    from longbrain_jax.memory import format_size, parse_size

    budget_mib = parse_size(args.budget) / 2**20
    record = {"budget_mib": budget_mib, "resolution_mm": float(args.resolution), "subjects": int(args.subjects),
              "scans": int(args.scans), "cpus": os.cpu_count(), "stages": {}}  # fmt: skip
    rows = []
    for name, command in stages(args.work, args):
        done = args.work / f"{name}.done"
        if (only and name not in only) or (not only and done.exists()):
            continue
        print(f"== {name}: longbrain {' '.join(map(str, command))}", flush=True)
        seconds, peak = run_stage(command)
        record["stages"][name] = {"seconds": round(seconds, 1), "peak_rss_mib": round(peak, 1),
                                  "within_budget": peak <= budget_mib, "command": " ".join(map(str, command))}  # fmt: skip
        rows.append((name, f"{seconds:8.1f} s  peak {format_size(peak * 2**20):>9}  "
                           f"({100 * peak / budget_mib:5.1f}% of {args.budget})"))  # fmt: skip
        print(f"{name}: {rows[-1][1]}", flush=True)  # each stage's figures as soon as it ends
        done.write_text(rows[-1][1] + "\n")
    print_results(f"Real size: 3D {args.resolution} mm, {args.subjects} subjects x {args.scans} scans", rows, record)


if __name__ == "__main__":
    main()
