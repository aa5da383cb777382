import json
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from longbrain_jax.cli import main
from longbrain_jax.config import read_config
from longbrain_jax.demo import DemoConfig


def test_help_lists_the_commands():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("demo", "inspect", "simulate"):
        assert command in result.output


def test_inspect_summarises_a_dataset(dataset):  # noqa: F811
    root, _ = dataset
    result = CliRunner().invoke(main, ["inspect", str(root)])
    assert result.exit_code == 0, result.output
    assert "3 subjects, 6 scans" in result.output and "single-scan subjects: 1" in result.output


def test_bad_input_is_one_line_exit_2_no_traceback(dataset):  # noqa: F811
    root, _ = dataset
    (root / "sub-s0" / "sub-s0_sessions.tsv").write_text("session_id\tage\nses-0\tabc\n")
    # a real process, so what a user sees is what is tested
    proc = subprocess.run(
        [sys.executable, "-m", "longbrain_jax.cli", "inspect", str(root)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("longbrain")]
    assert len(lines) == 1 and "sub-s0_sessions.tsv:2: age 'abc' is not a number" in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.optimised  # runs compiled programs more than it compiles them
@pytest.mark.slow  # a whole command
def test_demo_runs_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "demo"
    args = ["demo", str(out), "--subjects", "2", "--resolution", "4", "--quick", "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = (out / "report.md").read_text()
    summary = report.split("## What this run found")[1].split("\n## ")[0]
    assert "ventricles grew" in summary and "recovered" in summary and "not measured here" in summary  # opens with its findings
    assert "| dementia | hippocampus |" in report and " ± " in report  # spreads, not bare numbers
    for figure in ("jacobians.png", "bids/derivatives/simulator/montage.png", "register/jacobians.png", "fit/figures/weights.png"):
        assert (out / figure).stat().st_size > 1000, figure
    assert "| extrapolation | 2 |" in report  # registration scored on both subjects' extrapolated scans
    cfg = read_config(DemoConfig, out / "config.json")
    assert cfg.simulation.resolution_mm == 4.0 and cfg.simulation.num_subjects == 2 and cfg.registration.steps == 50
    assert json.loads((out / "config.json").read_text())["command"] == "longbrain demo"
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 2 and "already exists" in again.output


@pytest.mark.parametrize("args", [["demo", "--subjects", "1"], ["inspect"]])
def test_usage_errors_exit_2(args, tmp_path):
    assert CliRunner().invoke(main, args).exit_code == 2


class _Rerun(Exception):
    """Raised by the `_configure` spy once a command has its configuration: nothing is computed."""

    def __init__(self, cfg):
        self.cfg = cfg


@pytest.mark.parametrize("command", ["simulate", "align", "register", "forecast", "classify", "generate train"])
def test_every_command_reruns_a_recorded_config_with_the_options_given(command, tmp_path, monkeypatch):
    """`--config RUN` (a folder, its config.json, or a dataset's derivatives/*/config.json) gives the recorded
    configuration with only the options on the command line replaced; another command's config is refused."""
    from click.testing import CliRunner

    from longbrain_jax import cli
    from longbrain_jax.align import AlignConfig
    from longbrain_jax.classification import ClassifyConfig
    from longbrain_jax.config import with_overrides, write_config
    from longbrain_jax.diffusion import DiffusionConfig
    from longbrain_jax.forecast import ForecastConfig
    from longbrain_jax.groups import GroupMap
    from longbrain_jax.registration import RegistrationConfig
    from longbrain_jax.simulate import SimulationConfig
    from tests.awkward import AwkwardConfig, make_awkward

    data = make_awkward(tmp_path / "bids", AwkwardConfig(followup_grids=False, oblique_deg=0.0, flip=False, permute=False)).root
    fitted = tmp_path / "fit"  # classify's SOURCE: only its params/ folder is looked for before the config
    (fitted / "params").mkdir(parents=True)
    # (recorded config, where it is written, arguments, option given, the fields that option sets)
    cases = {
        "simulate": (SimulationConfig(num_subjects=7, ndim=2, resolution_mm=3.0, seed=4), "derivatives/simulator/config.json",
                     [str(tmp_path / "out")], ["--snr", "12"], {"scanner.snr": 12.0}),
        "align": (AlignConfig(transform="affine", samples=4096, iterations=(3, 2, 1), seed=2), "derivatives/longbrain-align/config.json",
                  [str(data), str(tmp_path / "out")], ["--metric", "mi"], {"metric": "mi"}),
        "register": (RegistrationConfig(steps=321, learning_rate=1e-3, patches=5), "config.json",
                     [str(data), str(tmp_path / "out")], ["--losses", "1,2,3,4"],
                     {"loss.identity": 1.0, "loss.spatial": 2.0, "loss.temporal": 3.0, "loss.monotonic": 4.0}),
        "forecast": (ForecastConfig(methods=("mrextrap",), prior="none", curve=False), "config.json",
                     [str(data), str(tmp_path / "out")], ["--seed", "9"],
                     {"seed": 9, "autoencoder.seed": 9, "noder.seed": 9, "inr.seed": 9, "segmenter.seed": 9, "diffusion.seed": 9}),
        "classify": (ClassifyConfig(head_width=32, folds=3, groups=GroupMap(("Nondemented",), ("Demented",))), "config.json",
                     [str(fitted), str(tmp_path / "out")], ["--epochs", "7"], {"encoder.epochs": 7, "baseline.epochs": 7, "sfcn.epochs": 7}),
        "generate train": (DiffusionConfig(steps=77, frames="velocity"), "config.json", [str(data), str(tmp_path / "out")],
                           ["--channels", "8,16", "--svf-similarity", "ssd", "--svf-smooth-weight", "0.003", "--unfold-sigmas", "none"],
                           {"denoiser.channels": (8, 16), "svf.similarity": "ssd", "svf.smooth_weight": 0.003, "unfold_sigmas": ()}),
    }  # fmt: skip
    recorded, where, arguments, given, fields = cases[command]
    if command in ("register", "forecast"):  # the data's dimensionality, as a run on this dataset records it
        recorded = with_overrides(recorded, {"network.ndim": 2} if command == "register" else {"autoencoder.ndim": 2, "inr.inr.ndim": 2})
    run = tmp_path / "run"
    (run / where).parent.mkdir(parents=True)
    write_config(recorded, run / where)
    real = cli._configure

    def spy(cls, base, rerun=True):
        raise _Rerun(real(cls, base, rerun))

    monkeypatch.setattr(cli, "_configure", spy)
    command = command.split()
    result = CliRunner().invoke(cli.main, [*command, *arguments, "--quiet"])  # no options: the configuration's own defaults
    assert isinstance(result.exception, _Rerun), result.output
    assert result.exception.cfg == type(recorded)()
    for pointer in (run, run / where):  # the run's folder or its file
        result = CliRunner().invoke(cli.main, [*command, *arguments, "--config", str(pointer), *given, "--quiet"])
        assert isinstance(result.exception, _Rerun), result.output
        assert result.exception.cfg == with_overrides(recorded, fields)
    other = tmp_path / "other"
    other.mkdir()
    write_config(RegistrationConfig() if command != ["register"] else SimulationConfig(), other / "config.json")
    result = CliRunner().invoke(cli.main, [*command, *arguments, "--config", str(other), "--quiet"])
    assert result.exit_code == 2 and "not the" in result.output and "config.json" in result.output, result.output


def test_options_have_no_defaults_of_their_own_and_show_the_configurations():
    """Configs are the only place defaults live: every option that sets a config field defaults to None,
    and `--help` shows the configuration's default."""
    from longbrain_jax import cli
    from longbrain_jax.fit import FitConfig

    commands = [c for top in cli.main.commands.values() for c in (top.commands.values() if isinstance(top, click.Group) else [top])]
    options = [p for command in commands for p in command.params if isinstance(p, cli.ConfigOption)]
    assert any(c.name == "train" for c in commands) and len(options) > 50 and all(p.default is None for p in options)
    help_text = CliRunner().invoke(cli.main, ["fit", "--help"], terminal_width=200).output
    assert f"[default: {FitConfig().inr.width}]" in help_text and f"[default: {FitConfig().shared.learning_rate}]" in help_text
    assert "[default: wire,relu,wire]" in " ".join(help_text.split())


def test_fit_presets_are_named_configurations_and_exclude_config(dataset, tmp_path):  # noqa: F811
    from longbrain_jax import cli
    from longbrain_jax.fit.config import PRESETS
    from longbrain_jax.inr import INRConfig

    option = next(p for p in cli.fit.params if p.name == "preset")
    assert list(option.type.choices) == list(PRESETS)  # the CLI lists every preset, and only those
    assert PRESETS["paper"] == PRESETS["paper"].__class__()  # the paper's settings are the defaults
    assert PRESETS["published"].inr == INRConfig.published()
    assert PRESETS["slices-30db"].finetune.steps == 1000 and PRESETS["slices-30db"].inr.width == 64
    root, _ = dataset
    both = CliRunner().invoke(main, ["fit", str(root), str(tmp_path / "o"), "--preset", "paper", "--config", str(tmp_path)])
    assert both.exit_code == 2 and "--preset and --config" in both.output
    unknown = CliRunner().invoke(main, ["fit", str(root), str(tmp_path / "o"), "--preset", "fastest"])
    assert unknown.exit_code == 2 and "fastest" in unknown.output


def test_registration_presets_are_named_configurations_and_exclude_config(dataset, tmp_path):  # noqa: F811
    from longbrain_jax import cli
    from longbrain_jax.registration import RegistrationConfig
    from longbrain_jax.registration.train import PRESETS

    option = next(p for p in cli.register.params if p.name == "preset")
    assert list(option.type.choices) == list(PRESETS)
    assert PRESETS["paper"] == RegistrationConfig()
    assert PRESETS["cpu-3mm"].network.w0 == 10.0 and PRESETS["cpu-3mm"].steps == 3000
    root, _ = dataset
    both = CliRunner().invoke(main, ["register", str(root), str(tmp_path / "o"), "--preset", "paper", "--config", str(tmp_path)])
    assert both.exit_code == 2 and "--preset and --config" in both.output and not (tmp_path / "o").exists()
