import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from longbrain_jax.cli import main
from longbrain_jax.config import read_config
from longbrain_jax.demo import DemoConfig
from tests.test_io import dataset  # noqa: F401  (fixture)


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


def test_demo_runs_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "demo"
    args = ["demo", str(out), "--subjects", "2", "--resolution", "4", "--quick", "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = (out / "report.md").read_text()
    assert "Regional volume change" in report and "| dementia | hippocampus |" in report
    assert (out / "jacobians.png").stat().st_size > 1000
    assert (out / "bids/derivatives/simulator/montage.png").stat().st_size > 1000
    assert "| extrapolation | 2 |" in report and (out / "register/jacobians.png").stat().st_size > 1000  # registration section
    cfg = read_config(DemoConfig, out / "config.json")
    assert cfg.simulation.resolution_mm == 4.0 and cfg.simulation.num_subjects == 2 and cfg.registration.steps == 50
    assert json.loads((out / "config.json").read_text())["command"] == "longbrain demo"
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 2 and "already exists" in again.output


@pytest.mark.parametrize("args", [["demo", "--subjects", "1"], ["inspect"]])
def test_usage_errors_exit_2(args, tmp_path):
    assert CliRunner().invoke(main, args).exit_code == 2
