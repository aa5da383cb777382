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
    _show_log("longbrain_jax.memory", "longbrain: memory: ", enabled)


def _show_log(name: str, prefix: str, enabled: bool = True) -> None:
    """Print the logger `name`'s records (INFO and above) on stderr after `prefix`; warnings even when not `enabled`."""
    logger = logging.getLogger(name)
    logger.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{prefix}%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if enabled else logging.WARNING)
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


class ConfigOption(click.Option):
    """An option that sets fields of a configuration (`config`: "module:Class"; `fields`: dotted paths,
    default the option's name). The configuration is the only place its default lives: the
    option has none of its own, `--help` shows the configuration's, and the option replaces its
    fields only when it is given (`_configure`). `parse` turns the option's value into one value
    per field; `shown` replaces the default `--help` shows when the field's value reads badly."""

    def __init__(self, *decls, config: str, fields: tuple[str, ...] = (), parse: Callable | None = None, shown: str | None = None, **kwargs):
        super().__init__(*decls, default=None, **kwargs)
        self.config, self.fields, self.parse, self.shown = config, fields or (self.name,), parse, shown

    def field_values(self, value) -> dict:
        values = self.parse(value) if self.parse else (value,) * len(self.fields)
        return dict(zip(self.fields, values, strict=True))

    def get_help_record(self, ctx):
        record = super().get_help_record(ctx)
        if record is None or self.is_flag:
            return record
        return record[0], f"{record[1]}  [default: {self.shown or self.default_text()}]".strip()

    def default_text(self) -> str:
        """The configuration's default of the option's fields, as it is written on the command line."""
        from longbrain_jax.config import field_value

        defaults = _config_class(self.config)()
        values = [_as_text(field_value(defaults, f)) for f in self.fields]
        if self.nargs > 1:  # one field per argument, e.g. --misalign DEG MM
            return " ".join(values)
        return values[0] if len(set(values)) == 1 else ",".join(values)  # one value that sets several fields, or one per field


def _as_text(value) -> str:
    return ",".join(_as_text(v) for v in value) if isinstance(value, tuple) else str(value)


def _config_class(name: str) -> type:
    import importlib

    module, _, cls = name.partition(":")
    return getattr(importlib.import_module(module), cls)


def config_field(*decls, config: str, **kwargs) -> Callable:
    """`click.option` for a `ConfigOption`."""
    return click.option(*decls, cls=ConfigOption, config=config, **kwargs)


def _configure(cls: type, base, rerun: bool = True):
    """The command's configuration: `base` (the configuration's defaults with what the data fixes, e.g.
    `ndim`), or with `--config` (and `rerun`) the recorded one, with the fields of the `ConfigOption`s
    of `cls` given on this command line replaced."""
    from click.core import ParameterSource

    from longbrain_jax.config import read_config, with_overrides

    ctx = click.get_current_context()
    path = ctx.params.get("config_file") if rerun else None
    cfg = base if path is None else read_config(cls, _config_file(path))
    overrides: dict = {}
    for param in ctx.command.params:
        given = ctx.get_parameter_source(param.name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
        if isinstance(param, ConfigOption) and _config_class(param.config) is cls and given:
            overrides.update(param.field_values(ctx.params[param.name]))
    try:
        return with_overrides(cfg, overrides)
    except ValueError as e:
        raise click.UsageError(f"{cls.__name__}: {e}") from None


def _config_file(path: Path) -> Path:
    """The config.json that `--config PATH` names: the file, RUN/config.json, or (for a written
    dataset: simulate, align) the one config.json under RUN/derivatives/."""
    if not path.is_dir():
        return path
    found = [path / "config.json"] if (path / "config.json").is_file() else sorted(path.glob("derivatives/*/config.json"))
    if len(found) != 1:
        raise InputError(path, "holds no config.json of a run" if not found else f"holds {len(found)} configurations; name one of {[str(f) for f in found]}")
    return found[0]


def _forecasters(text: str) -> tuple[str, ...]:
    from longbrain_jax.forecast import METHODS

    return METHODS if text.strip() == "all" else tuple(m.strip() for m in text.split(",") if m.strip())


def _iterations(text: str) -> tuple[int, ...] | None:
    """`--iterations`: per pyramid level, or one count for every level; empty: the metric's default."""
    from longbrain_jax.align import AlignConfig

    counts = tuple(int(n) for n in _floats(text, "--iterations"))
    return (counts * len(AlignConfig().smoothing_sigmas) if len(counts) == 1 else counts) or None


def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{what} must be comma-separated numbers, got {text!r}") from None


def _ints(what: str, count: int | None = None) -> Callable[[str], tuple]:
    """A `parse` for a comma-separated list of integers, as the one value of one field (`count`: how many it needs)."""

    def parse(text: str) -> tuple:
        values = tuple(int(v) for v in _floats(text, what))
        if count is not None and len(values) != count:
            raise click.BadParameter(f"{what} needs {count} integers, got {text!r}")
        return (values,)

    return parse


def _widths(text: str) -> tuple[float, ...]:
    """--unfold-sigmas: comma-separated widths, or "none" for ()."""
    if text.strip().lower() == "none":
        return ()
    widths = _floats(text, "--unfold-sigmas")
    if not widths:
        raise click.BadParameter(f"--unfold-sigmas needs widths or 'none', got {text!r}")
    return widths


def _split(what: str, count: int) -> Callable[[str], tuple]:
    """A `parse` for `count` comma-separated values, one per field."""

    def parse(text: str) -> tuple:
        values = tuple(v.strip() for v in text.split(","))
        if len(values) != count:
            raise click.BadParameter(f"{what} needs {count} comma-separated values, got {text!r}")
        return values

    return parse


FIT = "longbrain_jax.fit.config:FitConfig"
SIMULATE = "longbrain_jax.simulate.simulator:SimulationConfig"
REGISTER = "longbrain_jax.registration.train:RegistrationConfig"
FORECAST = "longbrain_jax.forecast.experiment:ForecastConfig"
CLASSIFY = "longbrain_jax.classification:ClassifyConfig"
ALIGN = "longbrain_jax.align.config:AlignConfig"
LOAD = "longbrain_jax.io.bids:LoadConfig"
DEMO = "longbrain_jax.demo:DemoConfig"
GENERATE = "longbrain_jax.diffusion.config:DiffusionConfig"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="longbrain_jax")
def main() -> None:
    """Longitudinal brain MRI at cohort scale, in JAX."""
    _show_warnings()


@main.command()
@click.argument("out", type=click.Path(path_type=Path), default="longbrain-demo")
@config_field("--subjects", type=int, config=DEMO, fields=("simulation.num_subjects",), help="Subjects in the demo cohort.")
@config_field("--resolution", type=float, config=DEMO, fields=("simulation.resolution_mm",), help="Voxel size in mm.")
@config_field("--dim", type=click.Choice(["2", "3"]), config=DEMO, fields=("simulation.ndim",), parse=lambda d: (int(d),),
              help="2D axial slice or 3D volumes.")
@config_field("--seed", type=int, config=DEMO, fields=("simulation.seed", "seed"))
@click.option("--quick", is_flag=True, help="Every stage with few steps: checks an installation; the figures mean nothing.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_input_errors_exit_2
def demo(out: Path, quick: bool, overwrite: bool, quiet: bool, **settings) -> None:
    """Simulate a small cohort, run what the library does on it, write OUT/report.md."""
    from longbrain_jax.demo import DemoConfig, run_demo

    cfg = _configure(DemoConfig, DemoConfig().quick() if quick else DemoConfig())
    if cfg.simulation.num_subjects < 2:
        raise click.BadParameter("need --subjects >= 2 (one per group)")
    cfg = dataclasses.replace(cfg, simulation=dataclasses.replace(cfg.simulation, chunk_size=min(cfg.simulation.num_subjects, 8)))
    report = run_demo(out, cfg, overwrite=overwrite, quiet=quiet)
    click.echo(f"wrote {report}")


@main.command()
@click.argument("out", type=click.Path(path_type=Path))
@config_field("--subjects", type=int, config=SIMULATE, fields=("num_subjects",), help="Anatomies (doubled with --paired).")
@config_field("--sampling", type=click.Choice(["regular", "irregular"]), config=SIMULATE)
@config_field("--ages", config=SIMULATE, fields=("regular_ages",), parse=lambda t: (_floats(t, "--ages"),), help="Scan ages for --sampling regular.")
@config_field("--scans", config=SIMULATE, fields=("scans_per_subject",), parse=_ints("--scans", 2), help="Min,max scans for --sampling irregular.")
@config_field("--resolution", type=float, config=SIMULATE, fields=("resolution_mm",), help="Voxel size in mm.")
@config_field("--dim", type=click.Choice(["2", "3"]), config=SIMULATE, fields=("ndim",), parse=lambda d: (int(d),), help="3D volumes or a 2D axial slice.")
@config_field("--paired", is_flag=True, config=SIMULATE, help="Write each anatomy as a healthy and a dementia-like subject.")
@config_field("--seed", type=int, config=SIMULATE)
@config_field("--mtl-atrophy", type=float, config=SIMULATE, fields=("atrophy.disease_mtl_pct_per_year",),
              help="Extra hippocampus/amygdala %/yr for dementia-like (e.g. -2).")
@config_field("--snr", type=float, config=SIMULATE, fields=("scanner.snr",), help="White-matter SNR of the Rician noise.")
@config_field("--misalign", nargs=2, type=float, config=SIMULATE, fields=("scanner.rotation_deg", "scanner.translation_mm"), parse=tuple,
              help="Max rotation (deg) and shift (mm) of follow-ups.")
@config_field("--chunk-size", type=int, config=SIMULATE, shown="as many as the memory budget allows", help="Most subjects generated together.")
@memory_budget_option
@config_field("--no-fields", is_flag=True, config=SIMULATE, fields=("write_fields",), parse=lambda v: (not v,),
              help="Skip the |J| and displacement ground truth (smaller output).")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@config_option
@_input_errors_exit_2
def simulate(out: Path, memory_budget, overwrite, quiet, config_file, **settings) -> None:
    """Simulate a longitudinal cohort with ground truth and write it as BIDS to OUT."""
    from longbrain_jax.progress import LazyBar
    from longbrain_jax.simulate import SimulationConfig, simulate_cohort

    cfg = _configure(SimulationConfig, SimulationConfig())
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


@main.command()
@click.argument("bids_dir", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--preset", type=click.Choice(["paper", "published", "slices-30db"]), default=None,
              help="Start from a named configuration (fit.config.PRESETS; the options below still apply): the paper's settings (the defaults), "
                   "the authors' published network, or >= 30 dB on 1 mm 2D slices at CPU cost.")
@config_field("--width", type=int, config=FIT, fields=("inr.width",), help="Hidden width of the INR.")
@config_field("--stream-layers", type=int, config=FIT, fields=("inr.stream_layers",), help="Layers per stream (input layer included).")
@config_field("--combined-layers", type=int, config=FIT, fields=("inr.combined_layers",), help="Layers after the streams merge.")
@config_field("--activations", config=FIT, fields=("inr.spatial_activation", "inr.temporal_activation", "inr.combined_activation"),
              parse=_split("--activations", 3), help="Spatial,temporal,combined layer kinds (wire|sine|relu).")
@config_field("--output-activation", type=click.Choice(["linear", "wire"]), config=FIT, fields=("inr.output_activation",),
              help="Output layer (the authors' code: wire, with --combined-layers 2 --coordinates isotropic).")
@config_field("--coordinates", type=click.Choice(["axes", "isotropic"]), config=FIT, fields=("inr.coordinates",),
              help="Spatial input: every axis in [-1, 1], or (index - centre) / longest axis as the authors' code.")
@config_field("--w0", type=float, config=FIT, fields=("inr.w0",), help="Frequency of sine/WIRE layers.")
@config_field("--shared-steps", type=int, config=FIT, fields=("shared.steps",), help="Steps of the shared initialisation theta*.")
@config_field("--shared-lr", type=float, config=FIT, fields=("shared.learning_rate",))
@config_field("--shared-fraction", type=float, config=FIT, fields=("shared.sample_fraction",), help="Voxels per scan drawn per theta* step.")
@config_field("--steps", type=int, config=FIT, fields=("finetune.steps",), help="Per-subject fine-tuning steps.")
@config_field("--lr", type=float, config=FIT, fields=("finetune.learning_rate",), help="Per-subject learning rate (AdamW).")
@config_field("--fraction", type=float, config=FIT, fields=("finetune.sample_fraction",), help="Voxels per scan drawn per fine-tuning step.")
@config_field("--schedule", type=click.Choice(["constant", "cosine"]), config=FIT, fields=("finetune.schedule",))
@config_field("--holdout", type=click.Choice(["none", "extrapolation", "interpolation_extrapolation"]), config=FIT, help="Scans held out and scored.")
@config_field("--chunk-size", type=int, config=FIT, shown="as many as the memory budget allows", help="Most subjects trained together.")
@align_option
@memory_budget_option
@config_field("--seed", type=int, config=FIT)
@click.option("--reconstruct-ages", default="", help="Also write every subject's reconstruction at these ages (e.g. 80,85).")
@click.option("--common-grid", is_flag=True, help="Resample every subject onto the first subject's grid.")
@group_column_option
@click.option("--resume", is_flag=True, help="Continue a killed run in OUT from its last checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--distributed", is_flag=True, help="Call jax.distributed.initialize() first (multi-host runs).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@config_option
@_input_errors_exit_2
def fit(bids_dir, out, preset, memory_budget, align_transform, reconstruct_ages, common_grid, group_column, resume, overwrite, distributed, quiet, config_file,
        **settings) -> None:  # fmt: skip
    """Fit one spatiotemporal INR per subject of BIDS_DIR (all at once) and write them to OUT."""
    import jax
    import numpy as np

    from longbrain_jax.cohort import ROLES
    from longbrain_jax.config import with_overrides
    from longbrain_jax.fit import FitConfig, fit_cohort, load_fit, write_reconstructions
    from longbrain_jax.fit.config import PRESETS
    from longbrain_jax.io import LoadConfig, scan_bids

    if distributed:
        jax.distributed.initialize()
    ages = _floats(reconstruct_ages, "--reconstruct-ages")
    if preset and config_file:
        raise click.UsageError("--preset and --config both name a starting configuration; give one")
    cfg = _configure(FitConfig, PRESETS[preset or "paper"])
    dataset = _aligned(scan_bids(bids_dir, LoadConfig(common_grid=common_grid, labels=False, group_column=group_column)), align_transform)
    cfg = with_overrides(cfg, {"inr.ndim": dataset.ndim})  # the data's, also on a rerun of other data
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
@click.option("--features", "feature_tables", multiple=True, type=click.Path(path_type=Path), metavar="TSV",
              help="Also classify these per-subject features (participant_id + numeric columns, e.g. FreeSurfer volumes) "
                   "by logistic regression under the same splits; repeatable, each named by its file.")
@config_field("--token-widths", config=CLASSIFY, parse=_ints("--token-widths"), help="Per-token MLP widths of the encoder.")
@config_field("--head-width", type=int, config=CLASSIFY)
@config_field("--tokens", type=click.Choice(["raw", "standardised"]), config=CLASSIFY,
              help="Encoder input: raw weights (the paper) or each entry z-scored over the training subjects.")
@config_field("--epochs", type=int, config=CLASSIFY, fields=("encoder.epochs", "baseline.epochs", "sfcn.epochs"), help="Epochs of every classifier.")
@config_field("--lr", type=float, config=CLASSIFY, fields=("encoder.learning_rate",), help="Peak one-cycle learning rate of the encoder.")
@config_field("--sfcn-channels", config=CLASSIFY, parse=_ints("--sfcn-channels", 5))
@config_field("--streams", config=CLASSIFY, fields=("combinations",), parse=lambda t: (tuple(tuple(c.split("+")) for c in t.split(",")),),
              shown="the paper's six", help="Stream combinations, e.g. P_time,P_space+P_com.")
@config_field("--negative", config=CLASSIFY, fields=("groups.negative",), metavar="NAMES",
              help="Group names of the reference class, comma-separated (e.g. Nondemented,CN).")
@config_field("--positive", config=CLASSIFY, fields=("groups.positive",), metavar="NAMES",
              help="Group names of the other class (e.g. Demented,AD); subjects of other groups are left out.")
@group_column_option
@common_grid_option
@config_field("--folds", type=int, config=CLASSIFY, help="Repeated stratified k-fold by anatomy (0: off).")
@config_field("--repeats", type=int, config=CLASSIFY)
@config_field("--fit-width", type=int, config=FIT, fields=("inr.width",), help="INR width when SOURCE is a BIDS dataset (fitted first).")
@config_field("--fit-steps", type=int, config=FIT, fields=("finetune.steps",), help="Fine-tuning steps when SOURCE is a BIDS dataset.")
@config_field("--fit-fraction", type=float, config=FIT, fields=("finetune.sample_fraction",), help="Voxels per scan per step when SOURCE is a BIDS dataset.")
@memory_budget_option
@config_field("--seed", type=int, config=CLASSIFY)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--quiet", is_flag=True, help="No progress output.")
@config_option
@_input_errors_exit_2
def classify(source, out, bids_dir, no_sfcn, feature_tables, group_column, common_grid, memory_budget, overwrite, quiet, config_file, **settings) -> None:
    """Classify healthy vs dementia-like trajectories from INR weights (and SFCN on the scans).

    SOURCE is the folder of a finished `longbrain fit`, or a BIDS dataset, which is
    fitted first into OUT-fit with the paper's settings (--fit-* change the sizes).
    """
    import json

    from longbrain_jax.classification import (
        ClassifyConfig,
        read_features,
        results_table,
        run_classification,
        write_classification,
    )
    from longbrain_jax.config import with_overrides
    from longbrain_jax.files import check_writable
    from longbrain_jax.fit import FitConfig, fit_cohort, load_fit
    from longbrain_jax.io import LoadConfig, scan_bids

    check_writable(out, overwrite)
    load = LoadConfig(group_column=group_column, common_grid=common_grid)
    cfg = _configure(ClassifyConfig, ClassifyConfig())
    if not (source / "params").exists():
        dataset = scan_bids(source, load)
        fit_out = out.with_name(out.name + "-fit")
        fit_cfg = with_overrides(_configure(FitConfig, FitConfig(), rerun=False), {"inr.ndim": dataset.ndim, "seed": cfg.seed})
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
    in_classes = [s for s, y in zip(fitted.subject_ids, cfg.groups.labels(fitted.groups), strict=True) if y >= 0]
    features = {table.stem: read_features(table, fitted.subject_ids, required=in_classes) for table in feature_tables}
    progress = None if quiet else (lambda what: click.echo(f"training {what}", err=True))
    _show_memory_plans(not quiet)
    results = run_classification(fitted, images, cfg, progress=progress, use_images=not no_sfcn, budget=_budget(memory_budget), features=features)
    report = write_classification(out, results, cfg, f"Fitted cohort: `{source}` ({len(fitted.subject_ids)} subjects).", overwrite=overwrite)
    click.echo(f"wrote {report}")
    click.echo(results_table(results))


@main.command()
@click.argument("bids_dir", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--preset", type=click.Choice(["paper", "cpu-3mm"]), default=None,
              help="Start from a named configuration (registration.train.PRESETS; the options below still apply): the paper's settings "
                   "(the defaults, for an accelerator), or 3D scans at about 3 mm over decades on a few CPU cores.")
@config_field("--width", type=int, config=REGISTER, fields=("network.width",), help="First-layer width of the displacement INR.")
@config_field("--hidden-layers", type=int, config=REGISTER, fields=("network.hidden_layers",), help="SIREN layers after the first (each gets g(t)).")
@config_field("--time-features", type=int, config=REGISTER, fields=("network.time_features",))
@config_field("--w0", type=float, config=REGISTER, fields=("network.w0",), help="SIREN frequency.")
@config_field("--time-scale", type=float, config=REGISTER, fields=("network.time_scale",),
              help="Years per unit of the time input (about 10 for decades of follow-up).")
@config_field("--steps", type=int, config=REGISTER, help="AdamW steps per subject.")
@config_field("--lr", type=float, config=REGISTER, fields=("learning_rate",))
@config_field("--schedule", type=click.Choice(["constant", "cosine"]), config=REGISTER, fields=("cosine_decay",), parse=lambda v: (v == "cosine",),
              shown="cosine", help="Learning rate: constant (the paper) or cosine decay to 1% over the steps.")
@config_field("--patches", type=int, config=REGISTER, help="Patches per step.")
@config_field("--patch-size", type=int, config=REGISTER, help="Patch edge in voxels.")
@config_field("--losses", config=REGISTER, fields=("loss.identity", "loss.spatial", "loss.temporal", "loss.monotonic"),
              parse=lambda t: tuple(map(float, _split("--losses", 4)(t))), help="Weights: identity, spatial, temporal, monotonic.")
@config_field("--curvature", type=float, config=REGISTER, fields=("loss.curvature",),
              help="Weight of the temporal curvature term (ours; straight paths in t between and past the scans).")
@config_field("--extrapolate-years", type=float, config=REGISTER, fields=("loss.extrapolate_years",),
              help="How far past the last scan the regularisers reach.")
@click.option("--extra-ages", default="", help="Also write fields at these ages (e.g. 80,81,82).")
@config_field("--chunk-size", type=int, config=REGISTER, shown="as many as the memory budget allows", help="Most subjects registered together.")
@align_option
@memory_budget_option
@config_field("--seed", type=int, config=REGISTER)
@click.option("--resume", is_flag=True, help="Continue a killed run in OUT from its last checkpoint.")
@group_column_option
@common_grid_option
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@config_option
@_input_errors_exit_2
def register(bids_dir, out, preset, extra_ages, memory_budget, align_transform, group_column, common_grid, resume, overwrite, quiet, config_file,
             **settings) -> None:  # fmt: skip
    """Register each subject's scans into a continuous-time deformation (|J| maps, fields, labels)."""
    from longbrain_jax.config import with_overrides
    from longbrain_jax.io import LoadConfig, scan_bids
    from longbrain_jax.progress import progress_bar
    from longbrain_jax.registration import RegistrationConfig
    from longbrain_jax.registration.cohort import register_cohort
    from longbrain_jax.registration.train import PRESETS

    if preset and config_file:
        raise click.UsageError("--preset and --config both name a starting configuration; give one")
    cfg = _configure(RegistrationConfig, PRESETS[preset or "paper"])
    dataset = _aligned(scan_bids(bids_dir, LoadConfig(group_column=group_column, common_grid=common_grid)), align_transform)
    cfg = with_overrides(cfg, {"network.ndim": dataset.ndim})  # the data's, also on a rerun of other data
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
@config_field("--method", "methods", config=FORECAST, parse=lambda t: (_forecasters(t),), shown="all",
              help="Forecasters, comma-separated: last_observation, voxelwise_linear, mrextrap, noder, inr, diffusion, or all.")
@config_field("--holdout", type=click.Choice(["extrapolation", "interpolation_extrapolation"]), config=FORECAST)
@click.option("--labels", "label_pipeline", default="simulator", show_default=True,
              help="derivatives pipeline with the label maps (regional volumes and Dice); ignored if the dataset has none.")
@click.option("--autoencoder", "autoencoder_dir", type=click.Path(path_type=Path), default=None,
              help="A trained autoencoder (OUT/autoencoder of an earlier run) instead of training one.")
@config_field("--ae-channels", config=FORECAST, fields=("autoencoder.channels",), parse=_ints("--ae-channels"),
              help="Autoencoder channels per level (latent 2**(levels-1) coarser).")
@config_field("--ae-steps", type=int, config=FORECAST, fields=("autoencoder.steps",), help="Autoencoder training steps.")
@config_field("--adversarial-start", type=int, config=FORECAST, fields=("autoencoder.adversarial_start",),
              help="Step at which the adversarial loss is switched on.")
@config_field("--prior", type=click.Choice(["population", "group", "none"]), config=FORECAST, help="MRExtrap's slope prior.")
@config_field("--noder-iterations", type=int, config=FORECAST, fields=("noder.iterations",))
@config_field("--inr-width", type=int, config=FORECAST, fields=("inr.inr.width",), help="Width of the spatiotemporal INR (paper: 512).")
@config_field("--inr-steps", type=int, config=FORECAST, fields=("inr.finetune.steps",), help="Fine-tuning steps of the spatiotemporal INR.")
@config_field("--inr-time-curvature", type=float, config=FORECAST, fields=("inr.time_curvature",),
              help="Weight of the INR's temporal curvature penalty (straighter trajectories past the last scan).")
@config_field("--segmenter-steps", type=int, config=FORECAST, fields=("segmenter.steps",))
@config_field("--diffusion-model", config=FORECAST, shown="train one on the known scans",
              help="A model from `longbrain generate train` (e.g. trained on a larger cohort) for the diffusion forecaster.")
@config_field("--diffusion-steps", type=int, config=FORECAST, fields=("diffusion.steps",), help="Training steps of the diffusion model.")
@click.option("--segmenter-bids", type=click.Path(path_type=Path), default=None,
              help="A labelled dataset (e.g. `longbrain simulate` with another seed) to train the volume-measuring U-Net on, "
                   "instead of the known scans.")
@config_field("--segmenter-volumes", type=click.Choice(["soft", "hard"]), config=FORECAST, fields=("segmenter.volumes",),
              help="Regional volumes as sums of class probabilities (soft) or arg-max label counts (hard).")
@config_field("--no-curve", is_flag=True, config=FORECAST, fields=("curve",), parse=lambda v: (not v,), help="Skip error against the number of scans used.")
@config_field("--seed", type=int, config=FORECAST, fields=("seed", "autoencoder.seed", "noder.seed", "inr.seed", "segmenter.seed", "diffusion.seed"))
@group_column_option
@common_grid_option
@align_option
@memory_budget_option
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--quiet", is_flag=True, help="No progress messages.")
@config_option
@_input_errors_exit_2
def forecast(bids_dir, out, label_pipeline, autoencoder_dir, segmenter_bids, group_column, common_grid, memory_budget, align_transform, overwrite, quiet,
             config_file, **settings) -> None:  # fmt: skip
    """Forecast held-out scans with MRExtrap, NODER, the spatiotemporal INR, the diffusion model and two baselines; score them."""
    import tempfile

    from longbrain_jax.config import with_overrides
    from longbrain_jax.files import check_writable
    from longbrain_jax.forecast import (
        ForecastConfig,
        MRExtrapModel,
        results_markdown,
        run_forecasting,
        write_forecasting,
    )
    from longbrain_jax.io import LoadConfig, scan_bids

    check_writable(out, overwrite)
    cfg = _configure(ForecastConfig, ForecastConfig())
    holdout, prior = cfg.holdout, cfg.prior
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
    cfg = with_overrides(cfg, {"autoencoder.ndim": dataset.ndim, "inr.inr.ndim": dataset.ndim})  # the data's, also on a rerun of other data
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


@main.group()
def generate() -> None:
    """The 4D deformation diffusion model: train it on a cohort, then sample future anatomy."""


@generate.command("train")
@click.argument("bids_dir", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@config_field("--velocity-factor", type=int, config=GENERATE, fields=("svf.velocity_factor",),
              help="The velocity grid (what is generated) is this many times coarser than the scans.")
@config_field("--svf-steps", type=int, config=GENERATE, fields=("svf.steps",), help="Optimisation steps of each baseline-to-follow-up SVF.")
@config_field("--svf-similarity", type=click.Choice(["lncc", "ssd"]), config=GENERATE, fields=("svf.similarity",),
              help="Stage 1's dissimilarity: 1 - local NCC, or the paper's SSD (use --svf-smooth-weight 0.003 with it).")
@config_field("--svf-smooth-weight", type=float, config=GENERATE, fields=("svf.smooth_weight",), help="Stage 1's weight of mean ||grad v||^2.")
@config_field("--channels", config=GENERATE, fields=("denoiser.channels",), parse=_ints("--channels"), help="Denoiser channels per level.")
@config_field("--frames", type=click.Choice(["rate", "velocity"]), config=GENERATE,
              help="A frame is the SVF per year since baseline (rate) or the SVF itself (velocity, the paper's).")
@config_field("--prediction", type=click.Choice(["eps", "v"]), config=GENERATE)
@config_field("--trajectory", type=click.Choice(["monotone", "frames"]), config=GENERATE,
              help="Sampling: one direction walked at a non-decreasing pace (monotone) or each frame as drawn (frames, the paper's).")
@config_field("--unfold-sigmas", config=GENERATE, parse=lambda text: (_widths(text),),
              help="Sampling: a drawn sequence that folds is smoothed at the first of these widths (velocity-grid voxels, "
                   "comma-separated) that unfolds it; 'none' keeps every draw as drawn.")
@config_field("--steps", type=int, config=GENERATE, help="Training steps of the denoiser.")
@config_field("--batch-size", type=int, config=GENERATE, help="Most subjects per training step.")
@config_field("--lr", type=float, config=GENERATE, fields=("learning_rate",))
@config_field("--seed", type=int, config=GENERATE, fields=("seed", "svf.seed"))
@group_column_option
@common_grid_option
@align_option
@memory_budget_option
@click.option("--resume", is_flag=True, help="Continue a killed run in OUT from its last checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@config_option
@_input_errors_exit_2
def generate_train(bids_dir, out, group_column, common_grid, align_transform, memory_budget, resume, overwrite, quiet, config_file, **settings) -> None:
    """Register every follow-up to its baseline (stage 1) and train the diffusion model on the sequences (stage 2)."""
    from longbrain_jax.diffusion import DiffusionConfig
    from longbrain_jax.diffusion.generate import train_model
    from longbrain_jax.io import LoadConfig, scan_bids
    from longbrain_jax.progress import progress_bar

    cfg = _configure(DiffusionConfig, DiffusionConfig())
    dataset = _aligned(scan_bids(bids_dir, LoadConfig(group_column=group_column, common_grid=common_grid)), align_transform)
    bars: dict = {}

    def progress(event: dict) -> None:
        if event["stage"] == "svf":
            if "svf" not in bars:
                bars["svf"] = progress_bar(event["chunks"], "registering (SVF)", enabled=not quiet, unit="chunk")
            bars["svf"].set_postfix_str(f"chunk {event['chunk'] + 1}/{event['chunks']} {event['done']}/{event['total']} loss {event['loss']:.4g}")
            if event["done"] == event["total"]:
                bars["svf"].update(1)
        else:
            if "train" not in bars:
                bars["train"] = progress_bar(event["steps"], "training", enabled=not quiet, unit="step")
                bars["ema"] = event["loss"]
            bars["ema"] = 0.9 * bars["ema"] + 0.1 * event["loss"] if event["loss"] == event["loss"] else bars["ema"]
            bars["train"].update(event["step"] - bars["train"].n)
            bars["train"].set_postfix_str(f"loss {event['loss']:.4f} (EMA {bars['ema']:.4f})")

    _show_memory_plans(not quiet)
    train_model(dataset, out, cfg, resume=resume, overwrite=overwrite, progress=progress, budget=_budget(memory_budget),
                source_description=str(bids_dir))  # fmt: skip
    for name in ("svf", "train"):
        if name in bars:
            bars[name].close()
    click.echo(f"wrote {out} (the trained model; sample it with `longbrain generate sample {out} BIDS OUT --ages ...`)")


@generate.command("sample")
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.argument("bids_dir", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--ages", default="", help="Ages to generate every subject at, comma-separated (each after every subject's baseline).")
@click.option("--years", default="", help="Or: years after each subject's baseline, comma-separated (e.g. 2,5,10).")
@click.option("--samples", type=int, default=None, help="Sequences drawn per subject (default: the model's configuration).")
@click.option("--group", default=None, help="Generate every subject as this group (a counterfactual; default: each subject's own).")
@click.option("--trajectory", type=click.Choice(["monotone", "frames"]), default=None,
              help="One direction walked at a non-decreasing pace (monotone) or each frame as drawn (frames); default: the model's.")
@click.option("--unfold-sigmas", default=None, help="Widths (velocity-grid voxels) that smooth a drawn sequence that folds, "
                                                    "or 'none'; default: the model's.")
@group_column_option
@common_grid_option
@align_option
@memory_budget_option
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_input_errors_exit_2
def generate_sample(model_dir, bids_dir, out, ages, years, samples, group, trajectory, unfold_sigmas, group_column, common_grid, align_transform, memory_budget, overwrite,
                    quiet) -> None:  # fmt: skip
    """Draw future scans, carried labels, |J| maps and velocity fields for every subject of BIDS_DIR at --ages (or --years)."""
    from longbrain_jax.diffusion.generate import check_group, load_model, sample_model
    from longbrain_jax.files import check_writable
    from longbrain_jax.io import LoadConfig, scan_bids
    from longbrain_jax.progress import LazyBar

    if samples is not None and samples < 1:
        raise click.BadParameter("must be >= 1", param_hint="--samples")
    check_writable(out, overwrite)
    model = load_model(model_dir)
    if trajectory is not None:
        model = dataclasses.replace(model, cfg=dataclasses.replace(model.cfg, trajectory=trajectory))
    if unfold_sigmas is not None:
        try:
            model = dataclasses.replace(model, cfg=dataclasses.replace(model.cfg, unfold_sigmas=_widths(unfold_sigmas)))
        except (ValueError, click.BadParameter):
            raise InputError("--unfold-sigmas", f"needs increasing widths > 0 (velocity-grid voxels) or 'none', got {unfold_sigmas!r}") from None
    check_group(model, group)
    dataset = _aligned(scan_bids(bids_dir, LoadConfig(group_column=group_column, common_grid=common_grid)), align_transform)
    bar = LazyBar("sampling", enabled=not quiet, unit="subject")
    _show_memory_plans(not quiet)
    _show_log("longbrain_jax.diffusion.generate", "longbrain: ", not quiet)  # how many drawn sequences were unfolded
    sample_model(model, dataset, out, _floats(ages, "--ages"), samples, group, overwrite=overwrite, progress=bar, budget=_budget(memory_budget),
                 years=_floats(years, "--years"))  # fmt: skip
    bar.close()
    click.echo(f"wrote {out} (generated scans, labels, |J| and velocity fields per subject and age; generated.tsv)")


@main.command()
@click.argument("bids_dir", type=click.Path(path_type=Path))
@click.option("--common-grid", is_flag=True, help="Resample every subject onto the first subject's grid.")
@click.option("--no-normalise", is_flag=True, help="Keep raw intensities.")
@config_field("--workers", type=int, config=LOAD, help="Threads reading images.")
@group_column_option
@memory_budget_option
@_input_errors_exit_2
def inspect(bids_dir: Path, common_grid: bool, no_normalise: bool, group_column: str | None, memory_budget: str | None, **settings) -> None:
    """Validate and summarise a longitudinal BIDS dataset (every image is read once, in chunks of subjects)."""
    import numpy as np

    from longbrain_jax.io import LoadConfig, scan_bids
    from longbrain_jax.memory import plan_host
    from longbrain_jax.progress import progress_bar

    cfg = _configure(LoadConfig, LoadConfig(common_grid=common_grid, group_column=group_column))
    cfg = dataclasses.replace(cfg, normalise=None) if no_normalise else cfg
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
@config_field("--transform", type=click.Choice(["rigid", "affine"]), config=ALIGN,
              help="Follow-up to baseline: rigid (6 dof) or affine (12; rigid first).")
@config_field("--metric", type=click.Choice(["ncc", "mi"]), config=ALIGN,
              help="ncc for the same contrast, mi (mutual information) for different contrasts.")
@config_field("--to-template", is_flag=True, config=ALIGN,
              help="Also register baselines (affinely) to the MNI152 template; write every scan on its grid.")
@config_field("--template-resolution", type=float, config=ALIGN, fields=("template_resolution_mm",),
              help="Template grid voxel size in mm (with --to-template).")
@config_field("--iterations", config=ALIGN, parse=lambda t: (_iterations(t),), shown="8,6,4 for ncc, 200,120,80 for mi",
              help="Optimiser iterations per pyramid level, comma-separated, or one for every level.")
@config_field("--samples", type=int, config=ALIGN, help="Random points per pyramid level.")
@config_field("--chunk-size", type=int, config=ALIGN, help="Most pairs aligned together by one compiled program (memory).")
@config_field("--seed", type=int, config=ALIGN)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@memory_budget_option
@config_option
@_input_errors_exit_2
def align(bids_dir, out, memory_budget, overwrite, quiet, config_file, **settings) -> None:
    """Align every follow-up to its baseline (rigid / affine) and write the aligned dataset to OUT."""
    from longbrain_jax.align import AlignConfig, align_dataset
    from longbrain_jax.progress import progress_bar

    cfg = _configure(AlignConfig, AlignConfig())
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
