"""The `longbrain` command.

Bad input prints one line naming the file and the problem and exits with code 2
(no traceback); usage errors also exit with 2.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import click

from longbrain_jax.errors import InputError


def _input_errors_exit_2(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except InputError as e:
            click.echo(f"longbrain: error: {e}", err=True)
            sys.exit(2)

    return wrapper


def _show_warnings() -> None:
    warnings.showwarning = lambda msg, *a, **k: click.echo(f"longbrain: warning: {msg}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="longbrain_jax")
def main() -> None:
    """Longitudinal brain MRI at cohort scale, in JAX."""
    _show_warnings()


@main.command()
@click.argument("out", type=click.Path(path_type=Path), default="longbrain-demo")
@click.option("--subjects", default=8, show_default=True, help="Subjects in the demo cohort.")
@click.option("--resolution", default=3.0, show_default=True, help="Voxel size in mm.")
@click.option("--dim", type=click.Choice(["2", "3"]), default="2", show_default=True, help="2D axial slice or 3D volumes.")
@click.option("--seed", default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_input_errors_exit_2
def demo(out: Path, subjects: int, resolution: float, dim: str, seed: int, overwrite: bool, quiet: bool) -> None:
    """Simulate a small cohort, run what the library does on it, write OUT/report.md."""
    from longbrain_jax.demo import DemoConfig, run_demo

    if subjects < 2:
        raise click.BadParameter("need --subjects >= 2 (one per group)")
    base = DemoConfig()
    try:
        simulation = dataclasses.replace(
            base.simulation, num_subjects=subjects, resolution_mm=resolution, ndim=int(dim), seed=seed, chunk_size=min(subjects, 8)
        )
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    report = run_demo(out, dataclasses.replace(base, simulation=simulation, seed=seed), overwrite=overwrite, quiet=quiet)
    click.echo(f"wrote {report}")


@main.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--subjects", default=20, show_default=True, help="Anatomies (doubled with --paired).")
@click.option("--sampling", type=click.Choice(["regular", "irregular"]), default="irregular", show_default=True)
@click.option("--ages", default="50,58,67,75", show_default=True, help="Scan ages for --sampling regular.")
@click.option("--scans", default="3,5", show_default=True, help="Min,max scans for --sampling irregular.")
@click.option("--resolution", default=2.0, show_default=True, help="Voxel size in mm.")
@click.option("--dim", type=click.Choice(["2", "3"]), default="3", show_default=True, help="3D volumes or a 2D axial slice.")
@click.option("--paired", is_flag=True, help="Write each anatomy as a healthy and a dementia-like subject.")
@click.option("--seed", default=0, show_default=True)
@click.option("--mtl-atrophy", default=0.0, show_default=True, help="Extra hippocampus/amygdala %/yr for dementia-like (e.g. -2).")
@click.option("--snr", default=30.0, show_default=True, help="White-matter SNR of the Rician noise.")
@click.option("--misalign", nargs=2, type=float, default=(0.0, 0.0), show_default=True, help="Max rotation (deg) and shift (mm) of follow-ups.")
@click.option("--chunk-size", default=4, show_default=True, help="Subjects generated together (memory).")
@click.option("--no-fields", is_flag=True, help="Skip the |J| and displacement ground truth (smaller output).")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_input_errors_exit_2
def simulate(out: Path, subjects, sampling, ages, scans, resolution, dim, paired, seed, mtl_atrophy, snr, misalign, chunk_size, no_fields, overwrite, quiet) -> None:
    """Simulate a longitudinal cohort with ground truth and write it as BIDS to OUT."""
    from longbrain_jax.progress import LazyBar
    from longbrain_jax.simulate import AtrophyConfig, ScannerConfig, SimulationConfig, simulate_cohort

    try:
        cfg = SimulationConfig(
            num_subjects=subjects,
            sampling=sampling,
            regular_ages=tuple(float(a) for a in ages.split(",")),
            scans_per_subject=tuple(int(n) for n in scans.split(",")),
            resolution_mm=resolution,
            ndim=int(dim),
            paired=paired,
            seed=seed,
            chunk_size=chunk_size,
            write_fields=not no_fields,
            atrophy=AtrophyConfig(disease_mtl_pct_per_year=mtl_atrophy),
            scanner=ScannerConfig(snr=snr, rotation_deg=misalign[0], translation_mm=misalign[1]),
        )
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    bar = LazyBar("simulating", enabled=not quiet, unit="subject")
    simulate_cohort(out, cfg, overwrite=overwrite, progress=bar)
    bar.close()
    click.echo(f"wrote {out} (ground truth in {out / 'derivatives' / 'simulator'})")


@main.command()
@click.argument("bids_dir", type=click.Path(path_type=Path))
@click.option("--common-grid", is_flag=True, help="Resample every subject onto the first subject's grid.")
@click.option("--no-normalise", is_flag=True, help="Keep raw intensities.")
@click.option("--workers", default=2, show_default=True, help="Threads reading images.")
@_input_errors_exit_2
def inspect(bids_dir: Path, common_grid: bool, no_normalise: bool, workers: int) -> None:
    """Validate and summarise a longitudinal BIDS dataset."""
    from longbrain_jax.io import LoadConfig, read_bids
    from longbrain_jax.progress import LazyBar

    cfg = LoadConfig(normalise=None if no_normalise else LoadConfig().normalise, common_grid=common_grid, workers=workers)
    bar = LazyBar("reading scans", unit="scan")
    cohort = read_bids(bids_dir, cfg, progress=bar)
    bar.close()
    groups = {g or "(unknown)": cohort.groups.count(g) for g in sorted(set(cohort.groups))}
    click.echo(f"{bids_dir}: {cohort.num_subjects} subjects, {int(cohort.mask.sum())} scans, {cohort.ndim}D grid {cohort.spatial_shape}")
    click.echo(f"  scans per subject: min {cohort.num_scans.min()}, max {cohort.num_scans.max()}; single-scan subjects: {int(cohort.single_scan.sum())}")
    click.echo(f"  ages: {cohort.ages[cohort.mask].min():.1f} to {cohort.ages[cohort.mask].max():.1f} years; follow-up up to {cohort.times.max():.1f} years")
    click.echo(f"  groups: {groups}; label maps: {'yes' if cohort.labels is not None else 'no'}")


if __name__ == "__main__":
    main()
