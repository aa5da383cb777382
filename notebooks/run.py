"""Execute the notebooks from their sources and store them with their outputs.

Each `notebooks/NN_*.py` (Jupytext percent format, the reviewed source) is executed top
to bottom in a fresh kernel and written beside it as `NN_*.ipynb` with every output
and figure, so it reads on a code host without running.

    python notebooks/run.py                 # refresh every stored notebook (small sizes, CPU)
    python notebooks/run.py 01 03           # only these
    python notebooks/run.py --check         # execute, store nothing (the test suite does this)
    LONGBRAIN_NOTEBOOK_SIZE=accelerator python notebooks/run.py   # the size cells' large setting
    LONGBRAIN_NOTEBOOK_SIZE=test python notebooks/run.py --check  # fewest steps, every cell (the test suite's size)

Needs the `notebooks` extra: `pip install -e ".[notebooks]"`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def sources(selected: list[str] | None = None) -> list[Path]:
    """The notebook sources, in order; `selected` keeps those whose name starts with one of its prefixes."""
    found = sorted(p for p in HERE.glob("[0-9][0-9]_*.py"))
    return [p for p in found if not selected or any(p.name.startswith(s) for s in selected)]


def execute(source: Path, timeout: int = 1800):
    """Run one notebook source in a fresh kernel (working directory: the notebooks folder) and return it.

    The kernel's temporary folders (every notebook works in `tempfile.mkdtemp()`) go under one
    folder removed afterwards; the kernel runs on the CPU unless the size asks for an accelerator.
    """
    import jupytext
    from nbclient import NotebookClient

    notebook = jupytext.read(source)
    saved = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="longbrain-notebook-") as tmp:
        os.environ["TMPDIR"] = tmp  # the kernel inherits this environment
        if os.environ.get("LONGBRAIN_NOTEBOOK_SIZE", "small") != "accelerator":
            os.environ.setdefault("JAX_PLATFORMS", "cpu")
        try:
            NotebookClient(notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
        finally:
            os.environ.clear()
            os.environ.update(saved)
    return notebook


def execute_here(source: Path, tmp: Path) -> int:
    """Run one notebook source's code cells in order in this process, in one IPython shell
    namespace (working directory: the notebooks folder; temporary folders under `tmp`); raise
    the first cell's error; return the number of cells run.

    The test suite's way: the process already holds the imports, the template and the
    compiled programs that a fresh kernel would build again (about 10 s a notebook before its
    first cell of work). Outputs are not kept; `execute` makes the stored notebooks.
    """
    import jupytext
    import matplotlib
    from IPython.core.interactiveshell import InteractiveShell

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shell = InteractiveShell.instance()
    shell.reset(new_session=True)
    saved, cwd = tempfile.tempdir, Path.cwd()
    tempfile.tempdir = str(tmp)
    os.chdir(HERE)
    cells = 0
    try:
        for cell in jupytext.read(source).cells:
            if cell.cell_type == "code":
                result = shell.run_cell(cell.source, silent=True)
                result.raise_error()
                cells += 1
    finally:
        tempfile.tempdir = saved
        os.chdir(cwd)
        shell.reset(new_session=True)
        plt.close("all")
    return cells


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebooks", nargs="*", help="name prefixes (e.g. 01); default: all")
    ap.add_argument("--check", action="store_true", help="execute only; do not rewrite the stored notebooks")
    args = ap.parse_args(argv)
    import jupytext

    for source in sources(args.notebooks):
        start = time.perf_counter()
        notebook = execute(source)
        if not args.check:
            jupytext.write(notebook, source.with_suffix(".ipynb"))
        print(f"{source.name}: {time.perf_counter() - start:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
