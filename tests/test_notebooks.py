"""Every notebook runs top to bottom from its reviewed Jupytext source (`notebooks/run.py`, the
same code that refreshes the stored outputs), at its test size: the small size's cohort and
networks with the fewest training steps that still run every cell (the stored outputs come from
the small size, whose training takes minutes per notebook)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _runner():
    spec = importlib.util.spec_from_file_location("notebooks_run", NOTEBOOKS / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # a kernel, a cohort and its training per notebook: up to minutes each
@pytest.mark.parametrize("source", _runner().sources(), ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(source, monkeypatch, request):
    monkeypatch.setenv("LONGBRAIN_NOTEBOOK_SIZE", "test")
    # the kernels share the run's compilation cache: the notebooks simulate and fit on the same grids
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(request.config.jax_cache_dir))
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
    notebook = _runner().execute(source)
    errors = [o for c in notebook.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors  # nbclient raises on an error; this also catches one it was told to allow
    stored = source.with_suffix(".ipynb")
    assert stored.exists(), f"{stored.name} is not stored: run `python notebooks/run.py {source.name[:2]}`"


def test_every_notebook_source_is_paired_and_opens_with_what_it_shows():
    import jupytext

    sources = _runner().sources()
    assert [p.name[:2] for p in sources] == [f"{i:02d}" for i in range(1, len(sources) + 1)] and len(sources) >= 7
    for source in sources:
        first = jupytext.read(source).cells[0]
        assert first.cell_type == "markdown" and "**Time:**" in first.source, source.name
        assert "SIZE" in jupytext.read(source).cells[1].source, f"{source.name}: no size cell"
