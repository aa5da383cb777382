"""Atomic output: files and folders appear whole or not at all.

A writer builds its output under a temporary name in the destination's own folder
(so the final rename never crosses file systems) and renames it into place only
when complete. An existing output is replaced only when `overwrite=True`.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from longbrain_jax.errors import InputError


def check_writable(path: Path, overwrite: bool) -> None:
    """Raise `InputError` if `path` exists and may not be replaced."""
    if path.exists() and not overwrite:
        raise InputError(path, "already exists; pass overwrite=True (--overwrite) to replace it")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` on success.

    On an exception the temporary file is removed and `path` is untouched. The
    temporary name keeps `path`'s suffixes so format-sniffing writers (nibabel) work.
    """
    path = Path(path)
    check_writable(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; move it onto `path` on success.

    With `overwrite=True` an existing folder is replaced only after the new one is
    complete; on an exception the partial folder is deleted and `path` is untouched.
    """
    path = Path(path)
    check_writable(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def age_tag(age: float) -> str:
    """An age in a file name, to 0.1 year without a dot: 72.5 -> `072p5`."""
    return f"{float(age):05.1f}".replace(".", "p")


def write_tsv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    """A tab-separated table (UTF-8), atomically: floats to 4 decimals; missing values (None) and
    non-finite floats as `n/a` (BIDS); text as it is."""
    with atomic_file(path, overwrite=True) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(header)
        for row in rows:
            w.writerow([_cell(v) for v in row])


def _cell(value: object) -> object:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else value
