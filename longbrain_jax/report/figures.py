"""Figures for reports. No backend is forced: matplotlib picks Agg where there is no
display, and a notebook's inline backend shows the figures that `save_figure` does not
close."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from longbrain_jax.files import atomic_file


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
    column_styles: Sequence[tuple[str, float, float]] | None = None,
) -> plt.Figure:
    """A grid of 2D images: one row per series (e.g. a subject's scans over time).

    `column_styles` gives (cmap, vmin, vmax) per column, overriding `cmap`, `vmin`
    and `vmax`; each distinct style gets a colour bar.
    """
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    styles = list(column_styles) if column_styles else [(cmap, vmin, vmax)] * n_cols
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.2 * n_cols + 1.0, 2.3 * n_rows), squeeze=False)
    shown: dict[tuple, object] = {}
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i, j]
            ax.axis("off")
            if j < len(row):
                c, lo, hi = styles[j]
                shown[styles[j]] = ax.imshow(np.rot90(middle_slice(row[j])), cmap=c, vmin=lo, vmax=hi)
                ax.set_title(col_titles[i][j], fontsize=8)
        axes[i, 0].text(-0.08, 0.5, row_titles[i], transform=axes[i, 0].transAxes, rotation=90, va="center", ha="right", fontsize=9)
    for style, im in shown.items():
        cols = [j for j in range(n_cols) if styles[j] == style]
        fig.colorbar(im, ax=axes[:, cols].ravel().tolist(), shrink=0.7)
    return fig


def jacobian_overlay(
    anatomy: Sequence[np.ndarray],
    jacobians: Sequence[Sequence[np.ndarray]],
    row_titles: Sequence[str],
    col_titles: Sequence[Sequence[str]],
    masks: Sequence[np.ndarray] | None = None,
    span: float = 0.5,
    unchanged: float = 0.01,
    axis: int = 2,
) -> plt.Figure:
    """|J| maps drawn over the anatomy they describe.

    Row i shows `anatomy[i]` (the baseline scan, 2D or 3D) alone, then each map of
    `jacobians[i]` (|J| on the baseline grid) over it in a diverging colour map centred at
    |J| = 1 (blue: tissue that shrank since baseline, red: grew; clipped to 1 +- `span`),
    transparent where |J| is within `unchanged` of 1 and outside `masks[i]` (e.g. the
    baseline's brain labels > 0) so the anatomy shows through. `col_titles[i]` names row
    i's columns after the first.
    """
    n_rows, n_cols = len(anatomy), 1 + max(len(r) for r in jacobians)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.2 * n_cols + 1.0, 2.3 * n_rows), squeeze=False)
    shown = None
    for i in range(n_rows):
        base = np.rot90(middle_slice(anatomy[i], axis))
        lo, hi = np.percentile(base, [1, 99])
        for j in range(n_cols):
            ax = axes[i, j]
            ax.axis("off")
            if j > len(jacobians[i]):
                continue
            ax.imshow(base, cmap="gray", vmin=lo, vmax=hi)
            if j == 0:
                ax.set_title("baseline", fontsize=8)
                continue
            jac = np.rot90(middle_slice(jacobians[i][j - 1], axis))
            hidden = np.abs(jac - 1.0) < unchanged
            if masks is not None:
                hidden |= ~np.rot90(middle_slice(np.asarray(masks[i], bool), axis))
            shown = ax.imshow(np.ma.masked_where(hidden, jac), cmap="RdBu_r", vmin=1.0 - span, vmax=1.0 + span)
            ax.set_title(col_titles[i][j - 1], fontsize=8)
        axes[i, 0].text(-0.08, 0.5, row_titles[i], transform=axes[i, 0].transAxes, rotation=90, va="center", ha="right", fontsize=9)
    if shown is not None:
        fig.colorbar(shown, ax=axes[:, 1:].ravel().tolist(), shrink=0.7, label="|J| since baseline")
    return fig


def weight_embedding(vectors: dict[str, np.ndarray], groups: Sequence[str]) -> plt.Figure:
    """First two principal components of each set of per-subject weights, coloured by group.

    `vectors` maps a name (e.g. "P_time") to its (N, P) flat weights; `groups` has N
    names. Weights that do not vary over subjects (left where the shared initialisation
    put them) are dropped and the rest standardised; the components come from the (N, N)
    Gram matrix, so memory stays at the weights' own size however many weights a subject has.
    """
    groups = np.asarray(groups)
    names = list(dict.fromkeys(groups.tolist()))  # in order of first appearance
    colours = dict(zip(names, plt.get_cmap("tab10").colors, strict=False))
    fig, axes = plt.subplots(1, len(vectors), figsize=(3.7 * len(vectors), 3.2), squeeze=False)
    for ax, (name, x) in zip(axes[0], vectors.items(), strict=True):
        x = np.asarray(x, np.float32)
        sd = x.std(0)
        varying = sd > 1e-6 * max(float(sd.max()), 1e-30)
        z = (x[:, varying] - x[:, varying].mean(0)) / sd[varying]
        eigenvalues, eigenvectors = np.linalg.eigh((z @ z.T).astype(np.float64))  # ascending
        pcs = eigenvectors[:, ::-1][:, :2] * np.sqrt(np.maximum(eigenvalues[::-1][:2], 0.0))
        for g in names:
            ax.scatter(*pcs[groups == g].T, color=colours[g], s=16, label=g)
        ax.set_title(f"{name}: {x.shape[1]} weights ({int(varying.sum())} vary)", fontsize=10)
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def save_figure(fig: plt.Figure, path: str | os.PathLike, overwrite: bool = True, dpi: int = 110) -> Path:
    """Save `fig` as PNG atomically and close it."""
    path = Path(path)
    with atomic_file(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def trajectory_figure(
    series: Sequence[tuple[str, Sequence[float], Sequence[np.ndarray]]],
    curves: dict[str, Sequence[tuple[Sequence[float], Sequence[float], str]]],
    axis: int = 2,
    colours: dict[str, str] | None = None,
) -> plt.Figure:
    """Subjects' scans across ages above, regional volume curves below.

    **Arguments:**

    - `series`: (title, ages, images) per subject shown as a row of slices.
    - `curves`: region name -> (ages, volumes in mm^3, group) per subject.
    - `axis`: slicing axis for 3D images (2: axial).
    - `colours`: group -> matplotlib colour.
    """
    colours = colours or {"healthy": "tab:blue", "dementia": "tab:red"}
    n_cols = max(max(len(imgs) for _, _, imgs in series), len(curves))
    fig = plt.figure(figsize=(2.3 * n_cols, 2.4 * len(series) + 3.0))
    grid = fig.add_gridspec(len(series) + 1, n_cols, height_ratios=[1.0] * len(series) + [1.25])
    vmax = float(np.percentile(np.concatenate([middle_slice(i, axis).ravel() for _, _, imgs in series for i in imgs]), 99.5))
    for r, (title, ages, images) in enumerate(series):
        for c, (age, img) in enumerate(zip(ages, images, strict=True)):
            ax = fig.add_subplot(grid[r, c])
            ax.imshow(np.rot90(middle_slice(img, axis)), cmap="gray", vmin=0.0, vmax=vmax)
            ax.set_title(f"age {age:.1f}", fontsize=8)
            ax.axis("off")
            if c == 0:
                ax.text(-0.06, 0.5, title, transform=ax.transAxes, rotation=90, va="center", ha="right", fontsize=9)
    span = max(n_cols // len(curves), 1)
    for k, (region, per_subject) in enumerate(curves.items()):
        ax = fig.add_subplot(grid[len(series), k * span : (k + 1) * span])
        for ages, volumes, group in per_subject:
            ax.plot(ages, np.asarray(volumes) / 1000.0, "o-", ms=3, lw=1, alpha=0.6, color=colours.get(group, "gray"))
        ax.set_xlabel("age (years)")
        ax.set_ylabel(f"{region} (cm$^3$)")
        ax.set_title(" / ".join(f"{g}: {c.replace('tab:', '')}" for g, c in colours.items()), fontsize=8)
    fig.tight_layout()
    return fig
