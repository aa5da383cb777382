"""The `longbrain` command.

Bad input prints one line naming the file and the problem and exits with code 2
(no traceback); usage errors also exit with 2.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import click

from longbrain_jax.errors import InputError


def _input_errors_exit_2(fn: Callable) -> Callable:
    """Bad input, or a memory budget too small for the smallest batch: one line, exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (InputError, MemoryError) as e:
            click.echo(f"longbrain: error: {e}", err=True)
            sys.exit(2)

    return wrapper


def _show_warnings() -> None:
    warnings.showwarning = lambda msg, *a, **k: click.echo(f"longbrain: warning: {msg}", err=True)


def _show_memory_plans(enabled: bool = True) -> None:
    """Print the sizes every stage plans from the memory budget (`longbrain_jax.memory`), one line each."""
    logger = logging.getLogger("longbrain_jax.memory")
    logger.handlers.clear()
    if enabled:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("longbrain: memory: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    logger.propagate = False


def _budget(text: str | None):
    """The `--memory-budget` (e.g. 16G) as an `memory.Budget`; default: a share of the device's memory."""
    from longbrain_jax.memory import Budget

    try:
        return Budget.resolve(text)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--memory-budget") from None


def group_column_option(fn: Callable) -> Callable:
    return click.option(
        "--group-column", default=None, metavar="COLUMN",
        help="participants.tsv column with each subject's clinical group (default: group, diagnosis or dx).",
    )(fn)  # fmt: skip


def common_grid_option(fn: Callable) -> Callable:
    return click.option(
        "--common-grid", is_flag=True,
        help="Resample every subject onto the first subject's grid (for datasets whose subjects' grids differ).",
    )(fn)  # fmt: skip


def align_option(fn: Callable) -> Callable:
    return click.option(
        "--align", "align_transform", type=click.Choice(["none", "rigid", "affine"]), default="none", show_default=True,
        help="Align each follow-up to its baseline as it is read (`longbrain align` writes the aligned dataset instead).",
    )(fn)  # fmt: skip


def _aligned(dataset, transform: str):
    """`dataset` itself, or seen through `align.AlignedSource` (follow-ups aligned chunk by chunk as they are read)."""
    if transform == "none":
        return dataset
    from longbrain_jax.align import AlignConfig, AlignedSource

    return AlignedSource(dataset, AlignConfig(transform=transform))


def memory_budget_option(fn: Callable) -> Callable:
    return click.option(
        "--memory-budget", default=None, metavar="SIZE",
        help="Memory this run may use, e.g. 16G (default: 60% of host RAM on the CPU, 90% of an accelerator's). "
             "Chunk and block sizes are planned from it.",
    )(fn)  # fmt: skip


def config_option(fn: Callable) -> Callable:
    return click.option(
        "--config", "config_file", type=click.Path(path_type=Path), default=None, metavar="RUN/config.json",
        help="Rerun the run that wrote this config.json (or its folder); options given here override it.",
    )(fn)  # fmt: skip


def _rerun(cls: type, cfg, fields: dict[str, tuple[str, ...]]):
    """`cfg` as the options built it; with `--config`, the recorded configuration with the fields of
    the options given on this command line (`fields`: option name -> the config fields it sets) taken from `cfg`."""
    from click.core import ParameterSource

    from longbrain_jax.config import field_value, read_config, with_overrides

    ctx = click.get_current_context()
    path = ctx.params.get("config_file")
    if path is None:
        return cfg
    recorded = read_config(cls, _config_file(path))
    given = [name for name in fields if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE]
    try:
        return with_overrides(recorded, {f: field_value(cfg, f) for name in given for f in fields[name]})
    except ValueError as e:
        raise click.UsageError(str(e)) from None


def _config_file(path: Path) -> Path:
    """The config.json that `--config PATH` names: the file, RUN/config.json, or (for a written
    dataset: simulate, align) the one config.json under RUN/derivatives/."""
    if not path.is_dir():
        return path
    found = [path / "config.json"] if (path / "config.json").is_file() else sorted(path.glob("derivatives/*/config.json"))
    if len(found) != 1:
        raise InputError(path, "holds no config.json of a run" if not found else f"holds {len(found)} configurations; name one of {[str(f) for f in found]}")
    return found[0]


#: `fit`'s options and the `FitConfig` fields each sets (for `--config` reruns).
FIT_FIELDS = {
    "width": ("inr.width",), "stream_layers": ("inr.stream_layers",), "combined_layers": ("inr.combined_layers",),
    "activations": ("inr.spatial_activation", "inr.temporal_activation", "inr.combined_activation"), "w0": ("inr.w0",),
    "shared_steps": ("shared.steps",), "shared_lr": ("shared.learning_rate",), "shared_fraction": ("shared.sample_fraction",),
    "steps": ("finetune.steps",), "lr": ("finetune.learning_rate",), "fraction": ("finetune.sample_fraction",),
    "schedule": ("finetune.schedule",), "holdout": ("holdout",), "chunk_size": ("chunk_size",), "seed": ("seed",),
}  # fmt: skip

#: The same for `simulate` (`SimulationConfig`).
SIMULATE_FIELDS = {
    "subjects": ("num_subjects",), "sampling": ("sampling",), "ages": ("regular_ages",), "scans": ("scans_per_subject",),
    "resolution": ("resolution_mm",), "dim": ("ndim",), "paired": ("paired",), "seed": ("seed",), "chunk_size": ("chunk_size",),
    "no_fields": ("write_fields",), "mtl_atrophy": ("atrophy.disease_mtl_pct_per_year",), "snr": ("scanner.snr",),
    "misalign": ("scanner.rotation_deg", "scanner.translation_mm"),
}  # fmt: skip

#: The same for `register` (`RegistrationConfig`).
REGISTER_FIELDS = {
    "width": ("network.width",), "hidden_layers": ("network.hidden_layers",), "time_features": ("network.time_features",),
    "w0": ("network.w0",), "time_scale": ("network.time_scale",), "steps": ("steps",), "lr": ("learning_rate",),
    "schedule": ("cosine_decay",), "patches": ("patches",), "patch_size": ("patch_size",),
    "losses": ("loss.identity", "loss.spatial", "loss.temporal", "loss.monotonic"), "curvature": ("loss.curvature",),
    "extrapolate_years": ("loss.extrapolate_years",), "chunk_size": ("chunk_size",), "seed": ("seed",),
}  # fmt: skip

#: The same for `forecast` (`ForecastConfig`).
FORECAST_FIELDS = {
    "methods": ("methods",), "holdout": ("holdout",), "ae_channels": ("autoencoder.channels",), "ae_steps": ("autoencoder.steps",),
    "adversarial_start": ("autoencoder.adversarial_start",), "prior": ("prior",), "noder_iterations": ("noder.iterations",),
    "inr_width": ("inr.inr.width",), "inr_steps": ("inr.finetune.steps",), "inr_time_curvature": ("inr.time_curvature",),
    "segmenter_steps": ("segmenter.steps",), "segmenter_volumes": ("segmenter.volumes",), "no_curve": ("curve",),
    "seed": ("seed", "autoencoder.seed", "noder.seed", "inr.seed", "segmenter.seed"),
}  # fmt: skip

#: The same for `classify` (`ClassifyConfig`).
CLASSIFY_FIELDS = {
    "token_widths": ("token_widths",), "head_width": ("head_width",), "tokens": ("tokens",),
    "epochs": ("encoder.epochs", "baseline.epochs", "sfcn.epochs"), "lr": ("encoder.learning_rate",),
    "sfcn_channels": ("sfcn_channels",), "streams": ("combinations",), "negative": ("groups.negative",),
    "positive": ("groups.positive",), "folds": ("folds",), "repeats": ("repeats",), "seed": ("seed",),
}  # fmt: skip

#: The same for `align` (`AlignConfig`).
ALIGN_FIELDS = {
    "transform": ("transform",), "metric": ("metric",), "to_template": ("to_template",),
    "template_resolution": ("template_resolution_mm",), "iterations": ("iterations",), "samples": ("samples",),
    "chunk_size": ("chunk_size",), "seed": ("seed",),
}  # fmt: skip


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
@click.option("--quick", is_flag=True, help="Every stage with few steps: checks an installation; the figures mean nothing.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_input_errors_exit_2
def demo(out: Path, subjects: int, resolution: float, dim: str, seed: int, quick: bool, overwrite: bool, quiet: bool) -> None:
    """Simulate a small cohort, run what the library does on it, write OUT/report.md."""
    from longbrain_jax.demo import DemoConfig, run_demo

    if subjects < 2:
        raise click.BadParameter("need --subjects >= 2 (one per group)")
    base = DemoConfig().quick() if quick else DemoConfig()
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
@click.option("--chunk-size", default=None, type=int, help="Most subjects generated together (default: as many as the memory budget allows).")
@memory_budget_option
@click.option("--no-fields", is_flag=True, help="Skip the |J| and displacement ground truth (smaller output).")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@config_option
@_input_errors_exit_2
def simulate(out: Path, subjects, sampling, ages, scans, resolution, dim, paired, seed, mtl_atrophy, snr, misalign, chunk_size, memory_budget, no_fields, overwrite, quiet, config_file) -> None:
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
    cfg = _rerun(SimulationConfig, cfg, SIMULATE_FIELDS)
    bar = LazyBar("simulating", enabled=not quiet, unit="subject")
    _show_memory_plans(not quiet)
    simulate_cohort(out, cfg, overwrite=overwrite, progress=bar, budget=_budget(memory_budget))
    bar.close()
    click.echo(f"wrote {out} (ground truth in {out / 'derivatives' / 'simulator'})")


class _FitBar:
    """Progress of `fit_cohort` on one tqdm bar: stage, step, loss, median PSNR of sampled points."""

    def __init__(self, cfg, num_subjects: int, enabled: bool):
        self.shared, self.steps = cfg.shared.steps, cfg.finetune.steps
        self.total = self.shared + -(-num_subjects // (cfg.chunk_size or num_subjects)) * self.steps
        self.enabled, self.bar = enabled, None

    def __call__(self, event: dict) -> None:
        from longbrain_jax.progress import progress_bar

        if self.bar is None:  # opened on the first step, so input errors print on a clean line
            self.bar = progress_bar(self.total, "fitting", enabled=self.enabled, unit="step")
        if event["stage"] == "shared":
            done, what = event["step"], "theta*"
        elif event["stage"] == "finetune":
            self.bar.total = self.shared + event["chunks"] * self.steps
            done, what = self.shared + event["chunk"] * self.steps + event["step"], f"chunk {event['chunk'] + 1}/{event['chunks']}"
        else:
            return
        self.bar.update(done - self.bar.n)
        self.bar.set_postfix_str(f"{what} loss {event['loss']:.4g} median PSNR {event['psnr']:.1f} dB")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{what} must be comma-separated numbers, got {text!r}") from None


@main.command()
@click.argument("bids_dir", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--width", default=512, show_default=True, help="Hidden width of the INR.")
@click.option("--stream-layers", default=5, show_default=True, help="Layers per stream (input layer included).")
@click.option("--combined-layers", default=3, show_default=True, help="Layers after the streams merge.")
@click.option("--activations", default="wire,relu,wire", show_default=True, help="Spatial,temporal,combined layer kinds (wire|sine|relu).")
@click.option("--w0", default=10.0, show_default=True, help="Frequency of sine/WIRE layers.")
@click.option("--shared-steps", default=250, show_default=True, help="Steps of the shared initialisation theta*.")
@click.option("--shared-lr", default=1e-4, show_default=True)
@click.option("--shared-fraction", default=0.001, show_default=True, help="Voxels per scan drawn per theta* step.")
@click.option("--steps", default=100, show_default=True, help="Per-subject fine-tuning steps.")
@click.option("--lr", default=1e-3, show_default=True, help="Per-subject learning rate (AdamW).")
@click.option("--fraction", default=0.01, show_default=True, help="Voxels per scan drawn per fine-tuning step.")
@click.option("--schedule", type=click.Choice(["constant", "cosine"]), default="constant", show_default=True)
@click.option("--holdout", type=click.Choice(["none", "extrapolation", "interpolation_extrapolation"]), default="none", show_default=True, help="Scans held out and scored.")
@click.option("--chunk-size", default=None, type=int, help="Most subjects trained together (default: as many as the memory budget allows).")
@align_option
@memory_budget_option
@click.option("--seed", default=0, show_default=True)
@click.option("--reconstruct-ages", default="", help="Also write every subject's reconstruction at these ages (e.g. 80,85).")
@click.option("--common-grid", is_flag=True, help="Resample every subject onto the first subject's grid.")
@group_column_option
@click.option("--resume", is_flag=True, help="Continue a killed run in OUT from its last checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--distributed", is_flag=True, help="Call jax.distributed.initialize() first (multi-host runs).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@config_option
@_input_errors_exit_2
def fit(bids_dir, out, width, stream_layers, combined_layers, activations, w0, shared_steps, shared_lr, shared_fraction, steps, lr, fraction, schedule, holdout, chunk_size, memory_budget, align_transform, seed, reconstruct_ages, common_grid, group_column, resume, overwrite, distributed, quiet, config_file) -> None:
    """Fit one spatiotemporal INR per subject of BIDS_DIR (all at once) and write them to OUT."""
    import jax
    import numpy as np

    from longbrain_jax.cohort import ROLES
    from longbrain_jax.fit import FitConfig, StageConfig, fit_cohort, load_fit, write_reconstructions
    from longbrain_jax.inr import INRConfig
    from longbrain_jax.io import LoadConfig, scan_bids

    if distributed:
        jax.distributed.initialize()
    kinds = activations.split(",")
    if len(kinds) != 3:
        raise click.BadParameter("--activations needs three kinds: spatial,temporal,combined")
    ages = _floats(reconstruct_ages, "--reconstruct-ages")
    dataset = _aligned(scan_bids(bids_dir, LoadConfig(common_grid=common_grid, labels=False, group_column=group_column)), align_transform)
    try:
        cfg = FitConfig(
            inr=INRConfig(
                ndim=dataset.ndim, width=width, stream_layers=stream_layers, combined_layers=combined_layers,
                spatial_activation=kinds[0], temporal_activation=kinds[1], combined_activation=kinds[2], w0=w0,
            ),
            shared=StageConfig(shared_steps, shared_lr, shared_fraction),
            finetune=StageConfig(steps, lr, fraction, schedule=schedule),
            holdout=holdout, chunk_size=chunk_size, seed=seed,
        )  # fmt: skip
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    cfg = _rerun(FitConfig, cfg, FIT_FIELDS)
    _show_memory_plans(not quiet)
    bar = _FitBar(cfg, dataset.num_subjects, enabled=not quiet)
    result = fit_cohort(dataset, out, cfg, resume=resume, overwrite=overwrite, progress=bar, source_description=str(bids_dir),
                        budget=_budget(memory_budget))  # fmt: skip
    bar.close()
    if ages and jax.process_index() == 0:
        fitted = load_fit(out)
        for i in range(dataset.num_subjects):
            write_reconstructions(out / "reconstructions", fitted, i, np.array(ages), dataset.spatial_shape, dataset.affines[i])
    failed = int((result.diverged_at >= 0).sum())
    click.echo(
        f"wrote {out}: {len(result.subject_ids)} subjects, median PSNR train {result.median('psnr', 'train'):.2f} dB"
        + "".join(f", {r} {result.median('psnr', r):.2f} dB" for r in ("interpolation", "extrapolation") if (result.roles == ROLES.index(r)).any())
        + (f"; {failed} subject(s) diverged (see subjects.tsv)" if failed else "")
    )


@main.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--bids", "bids_dir", type=click.Path(path_type=Path), default=None, help="Scans for SFCN (default: the dataset the fit read).")
@click.option("--no-sfcn", is_flag=True, help="Skip the image-space SFCN baseline.")
@click.option("--token-widths", default="512,1024,2048", show_default=True, help="Per-token MLP widths of the encoder.")
@click.option("--head-width", default=1024, show_default=True)
@click.option("--tokens", type=click.Choice(["raw", "standardised"]), default="raw", show_default=True,
              help="Encoder input: raw weights (the paper) or each entry z-scored over the training subjects.")
@click.option("--epochs", default=100, show_default=True, help="Epochs of every classifier.")
@click.option("--lr", default=1e-4, show_default=True, help="Peak one-cycle learning rate of the encoder.")
@click.option("--sfcn-channels", default="32,64,128,256,256", show_default=True)
@click.option("--streams", default="", help="Stream combinations, e.g. P_time,P_space+P_com (default: the paper's six).")
@click.option("--negative", default="healthy", show_default=True, metavar="NAMES",
              help="Group names of the reference class, comma-separated (e.g. Nondemented,CN).")
@click.option("--positive", default="dementia", show_default=True, metavar="NAMES",
              help="Group names of the other class (e.g. Demented,AD); subjects of other groups are left out.")
@group_column_option
@common_grid_option
@click.option("--folds", default=0, show_default=True, help="Repeated stratified k-fold by anatomy (0: off).")
@click.option("--repeats", default=1, show_default=True)
@click.option("--fit-width", default=512, show_default=True, help="INR width when SOURCE is a BIDS dataset (fitted first).")
@click.option("--fit-steps", default=100, show_default=True, help="Fine-tuning steps when SOURCE is a BIDS dataset.")
@click.option("--fit-fraction", default=0.01, show_default=True, help="Voxels per scan per step when SOURCE is a BIDS dataset.")
@memory_budget_option
@click.option("--seed", default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--quiet", is_flag=True, help="No progress output.")
@config_option
@_input_errors_exit_2
def classify(source, out, bids_dir, no_sfcn, token_widths, head_width, tokens, epochs, lr, sfcn_channels, streams, negative, positive, group_column, common_grid, folds, repeats,
             fit_width, fit_steps, fit_fraction, memory_budget, seed, overwrite, quiet, config_file) -> None:  # fmt: skip
    """Classify healthy vs dementia-like trajectories from INR weights (and SFCN on the scans).

    SOURCE is the folder of a finished `longbrain fit`, or a BIDS dataset, which is
    fitted first into OUT-fit with the paper's settings (--fit-* change the sizes).
    """
    import json

    from longbrain_jax.classification import ClassifyConfig, results_table, run_classification, write_classification
    from longbrain_jax.classifier import TrainConfig
    from longbrain_jax.files import check_writable
    from longbrain_jax.fit import FitConfig, StageConfig, fit_cohort, load_fit
    from longbrain_jax.groups import GroupMap
    from longbrain_jax.inr import INRConfig
    from longbrain_jax.io import LoadConfig, scan_bids

    check_writable(out, overwrite)
    load = LoadConfig(group_column=group_column, common_grid=common_grid)
    widths = tuple(int(w) for w in _floats(token_widths, "--token-widths"))
    channels = tuple(int(c) for c in _floats(sfcn_channels, "--sfcn-channels"))
    try:
        cfg = ClassifyConfig(
            token_widths=widths, head_width=head_width, tokens=tokens, encoder=TrainConfig(epochs=epochs, learning_rate=lr),
            baseline=TrainConfig(epochs=epochs, learning_rate=1e-3), sfcn_channels=channels,
            sfcn=TrainConfig(epochs=epochs, learning_rate=1e-3), folds=folds, repeats=repeats, seed=seed,
            groups=GroupMap(negative, positive),
            **({"combinations": tuple(tuple(c.split("+")) for c in streams.split(","))} if streams else {}),
        )  # fmt: skip
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    cfg = _rerun(ClassifyConfig, cfg, CLASSIFY_FIELDS)
    if not (source / "params").exists():
        dataset = scan_bids(source, load)
        fit_out = out.with_name(out.name + "-fit")
        fit_cfg = FitConfig(inr=INRConfig(ndim=dataset.ndim, width=fit_width), finetune=StageConfig(fit_steps, 1e-3, fit_fraction), seed=seed)
        bar = _FitBar(fit_cfg, dataset.num_subjects, enabled=not quiet)
        _show_memory_plans(not quiet)
        fit_cohort(dataset, fit_out, fit_cfg, overwrite=overwrite, progress=bar, source_description=str(source), budget=_budget(memory_budget))
        bar.close()
        bids_dir, source = bids_dir or source, fit_out
    fitted = load_fit(source)
    if bids_dir is None:
        recorded = json.loads((source / "config.json").read_text()).get("source", "")
        bids_dir = Path(recorded) if recorded else None
    images = None  # the scans: SFCN's input, and the anatomy pairs (pair_id) of the split
    if bids_dir is not None:
        images = scan_bids(bids_dir, load)
        missing = sorted(set(fitted.subject_ids) - set(images.subject_ids))
        if missing:
            raise InputError(bids_dir, f"lacks fitted subject(s) {missing[:3]}")
        images = images.subset([images.subject_ids.index(s) for s in fitted.subject_ids])
        fitted = dataclasses.replace(fitted, groups=images.groups)  # as the dataset names them now (--group-column)
    progress = None if quiet else (lambda what: click.echo(f"training {what}", err=True))
    _show_memory_plans(not quiet)
    results = run_classification(fitted, images, cfg, progress=progress, use_images=not no_sfcn, budget=_budget(memory_budget))
    report = write_classification(out, results, cfg, f"Fitted cohort: `{source}` ({len(fitted.subject_ids)} subjects).", overwrite=overwrite)
    click.echo(f"wrote {report}")
    click.echo(results_table(results))


@main.command()
@click.argument("bids_dir", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--width", default=256, show_default=True, help="First-layer width of the displacement INR.")
@click.option("--hidden-layers", default=4, show_default=True, help="SIREN layers after the first (each gets g(t)).")
@click.option("--time-features", default=64, show_default=True)
@click.option("--w0", default=30.0, show_default=True, help="SIREN frequency.")
@click.option("--time-scale", default=1.0, show_default=True, help="Years per unit of the time input (about 10 for decades of follow-up).")
@click.option("--steps", default=2000, show_default=True, help="AdamW steps per subject.")
@click.option("--lr", default=4e-5, show_default=True)
@click.option("--schedule", type=click.Choice(["constant", "cosine"]), default="cosine", show_default=True,
              help="Learning rate: constant (the paper) or cosine decay to 1% over the steps.")
@click.option("--patches", default=12, show_default=True, help="Patches per step.")
@click.option("--patch-size", default=12, show_default=True, help="Patch edge in voxels.")
@click.option("--losses", default="100,0.1,0.01,0.001", show_default=True, help="Weights: identity, spatial, temporal, monotonic.")
@click.option("--curvature", default=0.0, show_default=True,
              help="Weight of the temporal curvature term (ours; straight paths in t between and past the scans).")
@click.option("--extrapolate-years", default=2.0, show_default=True, help="How far past the last scan the regularisers reach.")
@click.option("--extra-ages", default="", help="Also write fields at these ages (e.g. 80,81,82).")
@click.option("--chunk-size", default=None, type=int, help="Most subjects registered together (default: as many as the memory budget allows).")
@align_option
@memory_budget_option
@click.option("--seed", default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue a killed run in OUT from its last checkpoint.")
@group_column_option
@common_grid_option
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@config_option
@_input_errors_exit_2
def register(bids_dir, out, width, hidden_layers, time_features, w0, time_scale, steps, lr, schedule, patches, patch_size, losses, curvature,
             extrapolate_years, extra_ages, chunk_size, memory_budget, align_transform, seed, group_column, common_grid, resume, overwrite, quiet, config_file) -> None:  # fmt: skip
    """Register each subject's scans into a continuous-time deformation (|J| maps, fields, labels)."""
    from longbrain_jax.io import LoadConfig, scan_bids
    from longbrain_jax.progress import progress_bar
    from longbrain_jax.registration import DisplacementConfig, LossConfig, RegistrationConfig
    from longbrain_jax.registration.cohort import register_cohort

    weights = _floats(losses, "--losses")
    if len(weights) != 4:
        raise click.BadParameter("--losses needs four weights: identity, spatial, temporal, monotonic")
    dataset = _aligned(scan_bids(bids_dir, LoadConfig(group_column=group_column, common_grid=common_grid)), align_transform)
    try:
        cfg = RegistrationConfig(
            network=DisplacementConfig(ndim=dataset.ndim, width=width, hidden_layers=hidden_layers, time_features=time_features, w0=w0, time_scale=time_scale),
            loss=LossConfig(*weights, extrapolate_years=extrapolate_years, curvature=curvature), steps=steps, learning_rate=lr, cosine_decay=schedule == "cosine", patches=patches, patch_size=patch_size,
            chunk_size=chunk_size, seed=seed,
        )  # fmt: skip
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    cfg = _rerun(RegistrationConfig, cfg, REGISTER_FIELDS)
    bars: dict = {}

    def progress(event: dict) -> None:
        if event["stage"] == "register":
            if "reg" not in bars:
                bars["reg"] = progress_bar(event["chunks"] * event["total"], "registering", enabled=not quiet, unit="step")
            bars["reg"].update(event["chunk"] * event["total"] + event["step"] - bars["reg"].n)
            bars["reg"].set_postfix_str(f"chunk {event['chunk'] + 1}/{event['chunks']} loss {event['loss']:.4g}")
        elif event["stage"] == "written":
            if "out" not in bars:
                bars["out"] = progress_bar(event["subjects"], "writing", enabled=not quiet, unit="subject")
            bars["out"].update(1)

    _show_memory_plans(not quiet)
    register_cohort(dataset, out, cfg, extra_ages=_floats(extra_ages, "--extra-ages"), resume=resume, overwrite=overwrite,
                    progress=progress, source_description=str(bids_dir), budget=_budget(memory_budget))  # fmt: skip
    for bar in bars.values():
        bar.close()
    click.echo(f"wrote {out} (|J| maps, displacements and carried labels per subject; trajectories.tsv)")


@main.command()
@click.argument("bids_dir", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--method", "methods", default="all", show_default=True,
              help="Forecasters, comma-separated: last_observation, voxelwise_linear, mrextrap, noder, inr, or all.")
@click.option("--holdout", type=click.Choice(["extrapolation", "interpolation_extrapolation"]), default="interpolation_extrapolation", show_default=True)
@click.option("--labels", "label_pipeline", default="simulator", show_default=True,
              help="derivatives pipeline with the label maps (regional volumes and Dice); ignored if the dataset has none.")
@click.option("--autoencoder", "autoencoder_dir", type=click.Path(path_type=Path), default=None,
              help="A trained autoencoder (OUT/autoencoder of an earlier run) instead of training one.")
@click.option("--ae-channels", default="32,64,128", show_default=True, help="Autoencoder channels per level (latent 2**(levels-1) coarser).")
@click.option("--ae-steps", default=5000, show_default=True, help="Autoencoder training steps.")
@click.option("--adversarial-start", default=2000, show_default=True, help="Step at which the adversarial loss is switched on.")
@click.option("--prior", type=click.Choice(["population", "group", "none"]), default="population", show_default=True, help="MRExtrap's slope prior.")
@click.option("--noder-iterations", default=300, show_default=True)
@click.option("--inr-width", default=128, show_default=True, help="Width of the spatiotemporal INR (paper: 512).")
@click.option("--inr-steps", default=1000, show_default=True, help="Fine-tuning steps of the spatiotemporal INR.")
@click.option("--inr-time-curvature", default=0.01, show_default=True,
              help="Weight of the INR's temporal curvature penalty (straighter trajectories past the last scan).")
@click.option("--segmenter-steps", default=1500, show_default=True)
@click.option("--segmenter-bids", type=click.Path(path_type=Path), default=None,
              help="A labelled dataset (e.g. `longbrain simulate` with another seed) to train the volume-measuring U-Net on, "
                   "instead of the known scans.")
@click.option("--segmenter-volumes", type=click.Choice(["soft", "hard"]), default="soft", show_default=True,
              help="Regional volumes as sums of class probabilities (soft) or arg-max label counts (hard).")
@click.option("--no-curve", is_flag=True, help="Skip error against the number of scans used.")
@click.option("--seed", default=0, show_default=True)
@group_column_option
@common_grid_option
@align_option
@memory_budget_option
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--quiet", is_flag=True, help="No progress messages.")
@config_option
@_input_errors_exit_2
def forecast(bids_dir, out, methods, holdout, label_pipeline, autoencoder_dir, ae_channels, ae_steps, adversarial_start, prior, noder_iterations,
             inr_width, inr_steps, inr_time_curvature, segmenter_steps, segmenter_bids, segmenter_volumes, no_curve, seed, group_column,
             common_grid, memory_budget, align_transform, overwrite, quiet, config_file) -> None:  # fmt: skip
    """Forecast held-out scans with MRExtrap, NODER, the spatiotemporal INR and two baselines; score them."""
    import tempfile

    from longbrain_jax.files import check_writable
    from longbrain_jax.fit import FitConfig, StageConfig
    from longbrain_jax.forecast import (
        METHODS,
        ForecastConfig,
        MRExtrapModel,
        results_markdown,
        run_forecasting,
        write_forecasting,
    )
    from longbrain_jax.inr import INRConfig
    from longbrain_jax.io import LoadConfig, scan_bids
    from longbrain_jax.latent.autoencoder import AutoencoderConfig
    from longbrain_jax.noder import NODERConfig
    from longbrain_jax.segmenter import SegmenterConfig

    check_writable(out, overwrite)
    chosen = METHODS if methods == "all" else tuple(m.strip() for m in methods.split(",") if m.strip())
    if not Path(bids_dir, "derivatives", label_pipeline).is_dir():
        label_pipeline = None
    dataset = _aligned(scan_bids(bids_dir, LoadConfig(label_pipeline=label_pipeline, group_column=group_column, common_grid=common_grid)), align_transform)
    from longbrain_jax.cohort import scan_roles

    if not (scan_roles(dataset.mask, holdout) >= 2).any():  # before any model is built; names the dataset
        raise InputError(bids_dir, f"no held-out scans: forecasting needs subjects with >= 3 scans (most scans of a subject: {dataset.max_scans})")
    segmenter_dataset = None
    if segmenter_bids is not None:
        seg_pipeline = label_pipeline or "simulator"
        if not Path(segmenter_bids, "derivatives", seg_pipeline).is_dir():
            raise InputError(segmenter_bids, f"has no label maps (derivatives/{seg_pipeline}) to train the segmenter on")
        segmenter_dataset = scan_bids(segmenter_bids, LoadConfig(label_pipeline=seg_pipeline))
        if segmenter_dataset.spatial_shape != dataset.spatial_shape:
            raise InputError(segmenter_bids, f"grid {segmenter_dataset.spatial_shape} differs from the dataset's {dataset.spatial_shape}")
    try:
        cfg = ForecastConfig(
            methods=chosen, holdout=holdout, prior=prior,
            autoencoder=AutoencoderConfig(ndim=dataset.ndim, channels=tuple(int(c) for c in _floats(ae_channels, "--ae-channels")),
                                          steps=ae_steps, adversarial_start=adversarial_start, seed=seed),
            noder=NODERConfig(iterations=noder_iterations, seed=seed),
            inr=FitConfig(inr=INRConfig(ndim=dataset.ndim, width=inr_width), finetune=StageConfig(steps=inr_steps, learning_rate=1e-3, sample_fraction=0.05),
                          seed=seed, time_curvature=inr_time_curvature),
            segmenter=SegmenterConfig(steps=segmenter_steps, volumes=segmenter_volumes, seed=seed), curve=not no_curve, seed=seed,
        )  # fmt: skip
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    cfg = _rerun(ForecastConfig, cfg, FORECAST_FIELDS)
    if cfg.autoencoder.ndim != dataset.ndim or cfg.inr.inr.ndim != dataset.ndim:  # a recorded run of other data: ndim follows this one
        from longbrain_jax.config import with_overrides

        cfg = with_overrides(cfg, {"autoencoder.ndim": dataset.ndim, "inr.inr.ndim": dataset.ndim})
    progress = None if quiet else (lambda what: click.echo(f"running {what}", err=True))
    model = None
    if autoencoder_dir is not None:
        from longbrain_jax.latent.autoencoder import load_autoencoder

        if not (autoencoder_dir / "config.json").is_file():
            raise InputError(autoencoder_dir, "not a saved autoencoder (no config.json)")
        params, ae_cfg, shape = load_autoencoder(autoencoder_dir)
        if shape != dataset.spatial_shape:
            raise InputError(autoencoder_dir, f"autoencoder was trained on grid {shape}, the dataset is {dataset.spatial_shape}")
        model = MRExtrapModel(params, ae_cfg, prior)
        cfg = dataclasses.replace(cfg, autoencoder=ae_cfg)
    _show_memory_plans(not quiet)
    Path(out).absolute().parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{Path(out).name}.predictions-", dir=Path(out).absolute().parent) as predictions:
        result = run_forecasting(dataset, cfg, progress=progress, model=model, segmenter_source=segmenter_dataset,
                                 predictions=Path(predictions) / "p", budget=_budget(memory_budget))  # fmt: skip
        description = f"Dataset: `{bids_dir}` ({dataset.num_subjects} subjects, {dataset.ndim}D {dataset.spatial_shape})."
        report = write_forecasting(out, result, cfg, description, dataset.spatial_shape, overwrite=overwrite, predictions=Path(predictions) / "p")
    click.echo(f"wrote {report}")
    click.echo(results_markdown(result))


@main.command()
@click.argument("bids_dir", type=click.Path(path_type=Path))
@click.option("--common-grid", is_flag=True, help="Resample every subject onto the first subject's grid.")
@click.option("--no-normalise", is_flag=True, help="Keep raw intensities.")
@click.option("--workers", default=2, show_default=True, help="Threads reading images.")
@group_column_option
@memory_budget_option
@_input_errors_exit_2
def inspect(bids_dir: Path, common_grid: bool, no_normalise: bool, workers: int, group_column: str | None, memory_budget: str | None) -> None:
    """Validate and summarise a longitudinal BIDS dataset (every image is read once, in chunks of subjects)."""
    import numpy as np

    from longbrain_jax.io import LoadConfig, scan_bids
    from longbrain_jax.memory import plan_host
    from longbrain_jax.progress import progress_bar

    cfg = LoadConfig(normalise=None if no_normalise else LoadConfig().normalise, common_grid=common_grid, workers=workers, group_column=group_column)
    data = scan_bids(bids_dir, cfg)
    _show_memory_plans()
    chunk = plan_host("inspect: read", "subjects per chunk", _budget(memory_budget), data.num_subjects, data.scan_bytes()).sizes["subjects per chunk"]
    bar = None
    for start in range(0, data.num_subjects, chunk):
        data.select(np.arange(start, min(start + chunk, data.num_subjects)))  # validates every voxel, then is dropped
        bar = bar or progress_bar(data.num_subjects, "reading scans", unit="subject")
        bar.update(min(start + chunk, data.num_subjects) - bar.n)
    bar.close()
    groups = {g or "(unknown)": data.groups.count(g) for g in sorted(set(data.groups))}
    scans, times = data.mask.sum(1), np.where(data.mask, data.ages - data.ages[:, :1], 0.0)
    click.echo(f"{bids_dir}: {data.num_subjects} subjects, {int(data.mask.sum())} scans, {data.ndim}D grid {data.spatial_shape}")
    click.echo(f"  scans per subject: min {scans.min()}, max {scans.max()}; single-scan subjects: {int((scans < 2).sum())}")
    click.echo(f"  ages: {data.ages[data.mask].min():.1f} to {data.ages[data.mask].max():.1f} years; follow-up up to {times.max():.1f} years")
    click.echo(f"  groups: {groups}; label maps: {'yes' if data.has_labels else 'no'}")


@main.command()
@click.argument("bids_dir", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--transform", type=click.Choice(["rigid", "affine"]), default="rigid", show_default=True,
              help="Follow-up to baseline: rigid (6 dof) or affine (12; rigid first).")
@click.option("--metric", type=click.Choice(["ncc", "mi"]), default="ncc", show_default=True,
              help="ncc for the same contrast, mi (mutual information) for different contrasts.")
@click.option("--to-template", is_flag=True, help="Also register baselines (affinely) to the MNI152 template; write every scan on its grid.")
@click.option("--template-resolution", default=2.0, show_default=True, help="Template grid voxel size in mm (with --to-template).")
@click.option("--iterations", default="", help="Optimiser iterations per pyramid level, comma-separated, or one for every level "
              "(default: 8,6,4 for ncc, 200,120,80 for mi).")
@click.option("--samples", default=32768, show_default=True, help="Random points per pyramid level.")
@click.option("--chunk-size", default=8, show_default=True, help="Pairs aligned together by one compiled program (memory).")
@click.option("--seed", default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@memory_budget_option
@config_option
@_input_errors_exit_2
def align(bids_dir, out, transform, metric, to_template, template_resolution, iterations, samples, chunk_size, memory_budget, seed, overwrite, quiet, config_file) -> None:  # fmt: skip
    """Align every follow-up to its baseline (rigid / affine) and write the aligned dataset to OUT."""
    from longbrain_jax.align import AlignConfig, align_dataset
    from longbrain_jax.progress import progress_bar

    levels = len(AlignConfig().smoothing_sigmas)
    counts = tuple(int(n) for n in _floats(iterations, "--iterations"))
    try:
        cfg = AlignConfig(transform=transform, metric=metric, to_template=to_template, template_resolution_mm=template_resolution,
                          iterations=(counts * levels if len(counts) == 1 else counts) or None, samples=samples,
                          chunk_size=chunk_size, seed=seed)  # fmt: skip
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    cfg = _rerun(AlignConfig, cfg, ALIGN_FIELDS)
    bars: dict = {}
    names = {"align": ("aligning follow-ups", "pair"), "template": ("registering to the template", "subject"), "write": ("writing", "subject")}

    def progress(event: dict) -> None:
        if event["stage"] not in bars:
            for bar in bars.values():  # one stage at a time
                bar.close()
            desc, unit = names[event["stage"]]
            bars[event["stage"]] = progress_bar(event["total"], desc, enabled=not quiet, unit=unit)
        bars[event["stage"]].update(event["done"] - bars[event["stage"]].n)

    _show_memory_plans(not quiet)
    align_dataset(bids_dir, out, cfg, overwrite=overwrite, progress=progress, budget=_budget(memory_budget))
    for bar in bars.values():
        bar.close()
    click.echo(f"wrote {out} (transforms and alignment.tsv in {out / 'derivatives' / 'longbrain-align'})")


if __name__ == "__main__":
    main()
