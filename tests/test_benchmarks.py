"""The prepared accelerator suite runs end to end at tiny sizes (so it cannot rot before a device runs it)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.mark.slow  # about a minute of compiling on 2 CPU cores
def test_gpu_suite_dry_run_measures_every_section(capsys):
    record = _load("gpu_suite").main(["--dry-run"])
    out = capsys.readouterr().out
    assert "Accelerator suite" in out and out.rstrip().splitlines()[-1].startswith("JSON ")
    for key in ("fit", "register", "classify", "diffusion"):
        assert record[key]["seconds"] > 0, key
    figures = [record["fit"]["projected_450_subjects_s"], record["register"]["s_per_subject_paper_steps"],
               record["classify"]["encoder"]["steps_per_s"], record["classify"]["sfcn"]["steps_per_s"], record["diffusion"]["steps_per_s"]]
    assert all(math.isfinite(f) and f > 0 for f in figures)
    with pytest.raises(SystemExit):
        _load("gpu_suite").main(["--dry-run", "--sections", "fit,nonsense"])


def test_registration_variants_change_the_settings_they_name_and_refuse_unknown_ones():
    from longbrain_jax.demo import DemoConfig

    variant = _load("_common").registration_variant
    base = DemoConfig().registration
    assert variant(base, "default") == base and variant(base, "") == base
    assert variant(base, "w0=6").network.w0 == 6.0 and variant(base, "w0=6").network.width == base.network.width
    assert variant(base, "steps=800").steps == 800 and variant(base, "curvature=1e8").loss.curvature == 1e8
    both = variant(base, "w0=10+width=64")
    assert (both.network.w0, both.network.width, both.loss) == (10.0, 64, base.loss)
    with pytest.raises(SystemExit, match="unknown variant 'depth=8'"):
        variant(base, "depth=8")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux's high-water mark")
def test_real_size_peak_survives_the_high_water_resets_of_memory_planning():
    """A child that peaks, then restarts its high-water mark as `memory._reset_peak` does, exits with a
    small `ru_maxrss`; `real_size.run_stage` still reports the peak it followed."""
    child = (
        "import time; from pathlib import Path; block = bytearray(400 * 2**20); block[::4096] = b'x' * len(block[::4096]); "
        "time.sleep(0.5); del block; Path('/proc/self/clear_refs').write_text('5'); time.sleep(0.3)"
    )
    seconds, peak_mib = _load("real_size").run_stage(["-c", child], every=0.02, program=[sys.executable])
    assert peak_mib > 400 and seconds > 0.5
