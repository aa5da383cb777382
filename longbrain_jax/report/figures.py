"""Figures for reports (matplotlib, non-interactive backend)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from longbrain_jax.files import atomic_file  # noqa: E402


def middle_slice(volume: np.ndarray, axis: int = 2) -> np.ndarray:
    """A 2D view of a 2D or 3D array: the array itself, or its middle slice on `axis`."""
    volume = np.asarray(volume)
    if volume.ndim == 2:
        return volume
    return np.take(volume, volume.shape[axis] // 2, axis=axis)


def series_montage(
    rows: Sequence[Sequence[np.ndarray]],
    row_titles: Sequence[str],
    col_titles: Sequence[Sequence[str]],
    cmap: str = "gray",
    vmin: float | None = None,
    vmax: float | None = None,
) -> plt.Figure:
    """A grid of 2D images: one row per series (e.g. a subject's scans over time)."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.2 * n_cols, 2.3 * n_rows), squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i, j]
            ax.axis("off")
            if j < len(row):
                im = ax.imshow(np.rot90(middle_slice(row[j])), cmap=cmap, vmin=vmin, vmax=vmax)
                ax.set_title(col_titles[i][j], fontsize=8)
        axes[i, 0].text(-0.08, 0.5, row_titles[i], transform=axes[i, 0].transAxes, rotation=90, va="center", ha="right", fontsize=9)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.7)
    return fig


def save_figure(fig: plt.Figure, path: str | os.PathLike, overwrite: bool = True, dpi: int = 110) -> Path:
    """Save `fig` as PNG atomically and close it."""
    path = Path(path)
    with atomic_file(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    plt.close(fig)
    return path
