"""Per-subject rows larger than memory: written once to disk, read back a batch at a time.

A training loop over a cohort's scans (SFCN on stacked scans) or weights indexes its
inputs with `x[batch]`. `rows(build, n, row_shape, budget, folder)` gives an in-memory
array when the n rows fit the host budget, and otherwise a `RowStore`: a raw float32
file filled chunk by chunk, whose `x[indices]` reads only those rows with positional
reads (`os.pread`), so the process holds one batch, not the file (pages stay in the
kernel's reclaimable cache, outside the process's resident memory).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from longbrain_jax.memory import Budget, plan_host


class RowStore:
    """A float32 array (n, *row_shape) in a raw file, indexed by rows (an int, a slice or an index array)."""

    def __init__(self, path: str | os.PathLike, n: int, row_shape: tuple[int, ...]):
        self.path, self.shape = Path(path), (n, *row_shape)
        self.dtype = np.dtype(np.float32)
        self._row_bytes = math.prod(row_shape) * self.dtype.itemsize
        with open(self.path, "wb") as f:
            f.truncate(n * self._row_bytes)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self._row_bytes

    def write(self, start: int, rows: np.ndarray) -> None:
        """Rows `start ... start + len(rows) - 1`."""
        data = np.ascontiguousarray(rows, self.dtype)
        if data.shape[1:] != self.shape[1:] or start + len(data) > self.shape[0]:
            raise ValueError(f"rows {data.shape} do not fit at {start} of {self.shape}")
        fd = os.open(self.path, os.O_WRONLY)
        try:
            os.pwrite(fd, data.tobytes(), start * self._row_bytes)
        finally:
            os.close(fd)

    def __getitem__(self, index) -> np.ndarray:
        rows = np.arange(self.shape[0])[index]
        scalar = np.ndim(rows) == 0
        rows = np.atleast_1d(rows)
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for k, r in enumerate(rows):
                out[k] = np.frombuffer(os.pread(fd, self._row_bytes, int(r) * self._row_bytes), self.dtype).reshape(self.shape[1:])
        finally:
            os.close(fd)
        return out[0] if scalar else out


def rows(
    build: Callable[[np.ndarray], np.ndarray], n: int, row_shape: tuple[int, ...], budget: Budget, folder: str | os.PathLike, name: str,
    chunk: int | None = None,
) -> np.ndarray | RowStore:  # fmt: skip
    """n rows of `row_shape` made by `build(indices) -> (len(indices), *row_shape)`, in memory if
    they fit half the free host budget, else in a `RowStore` under `folder` (built `chunk` rows at a time)."""
    row_bytes = 4 * math.prod(row_shape)
    host = budget.host()
    free = host.bytes - host.in_use()
    if n * row_bytes <= free // 2:
        return np.concatenate([build(np.arange(s, min(s + (chunk or n), n))) for s in range(0, n, chunk or n)]).astype(np.float32)
    chunk = chunk or plan_host(f"{name}: building", "rows per chunk", host, n, 2 * row_bytes).sizes["rows per chunk"]
    store = RowStore(Path(folder) / f"{name}.f32", n, row_shape)
    for start in range(0, n, chunk):
        store.write(start, build(np.arange(start, min(start + chunk, n))))
    return store
