"""Image, deformation and classification metrics.

Image and deformation metrics are jnp functions (jit- and vmap-safe) over one image
or field; vmap them over subjects and time points. Where a `mask` is accepted, only
voxels where it is True count, so padding never leaks into a score. Region-wise
statistics and classification metrics run on the host (numpy).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, Num

from longbrain_jax.grid import separable_filter


def _masked_mean(x: Array, mask: Array | None) -> Array:
    if mask is None:
        return jnp.mean(x)
    mask = jnp.broadcast_to(mask, x.shape)
    return jnp.sum(jnp.where(mask, x, 0.0)) / jnp.maximum(jnp.sum(mask, dtype=x.dtype), 1)


# -- intensity agreement ------------------------------------------------------------
def mse(x: Float[Array, "*s"], y: Float[Array, "*s"], mask: Bool[Array, "*s"] | None = None) -> Float[Array, ""]:
    """Mean squared error."""
    return _masked_mean((x - y) ** 2, mask)


def mae(x: Float[Array, "*s"], y: Float[Array, "*s"], mask: Bool[Array, "*s"] | None = None) -> Float[Array, ""]:
    """Mean absolute error."""
    return _masked_mean(jnp.abs(x - y), mask)


def psnr(
    x: Float[Array, "*s"], y: Float[Array, "*s"], data_range: float, mask: Bool[Array, "*s"] | None = None
) -> Float[Array, ""]:
    """Peak signal-to-noise ratio in dB: 10 log10(data_range^2 / MSE)."""
    return 10.0 * jnp.log10(data_range**2 / mse(x, y, mask))


@functools.partial(jax.jit, static_argnames="win_size")
def ssim(
    x: Float[Array, "*s"],
    y: Float[Array, "*s"],
    data_range: float,
    win_size: int = 7,
    k1: float = 0.01,
    k2: float = 0.03,
) -> Float[Array, ""]:
    """Mean structural similarity (2D or 3D), as scikit-image computes it.

    Uniform `win_size` window with reflecting edges, sample covariance, and the mean
    taken over the image with a border of (win_size - 1) // 2 cropped; agrees with
    `skimage.metrics.structural_similarity(x, y, data_range=...)`.
    """
    if any(n < win_size for n in x.shape):
        raise ValueError(f"every axis must be at least win_size={win_size}, got shape {x.shape}")
    box = [jnp.full((win_size,), 1.0 / win_size, jnp.float32)] * x.ndim
    filt = lambda a: separable_filter(a, box, pad_mode="symmetric")  # noqa: E731
    n_points = win_size**x.ndim
    cov_norm = n_points / (n_points - 1)
    ux, uy = filt(x), filt(y)
    vx = cov_norm * (filt(x * x) - ux * ux)
    vy = cov_norm * (filt(y * y) - uy * uy)
    vxy = cov_norm * (filt(x * y) - ux * uy)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    pad = (win_size - 1) // 2
    return jnp.mean(s[tuple(slice(pad, n - pad) for n in s.shape)])


def ncc(x: Float[Array, "*s"], y: Float[Array, "*s"], mask: Bool[Array, "*s"] | None = None, eps: float = 1e-8):
    """Global normalised cross-correlation in [-1, 1]."""
    mx, my = _masked_mean(x, mask), _masked_mean(y, mask)
    dx, dy = x - mx, y - my
    cov = _masked_mean(dx * dy, mask)
    return cov / jnp.sqrt(_masked_mean(dx * dx, mask) * _masked_mean(dy * dy, mask) + eps)


def local_ncc(
    x: Float[Array, "*s"], y: Float[Array, "*s"], window: int = 9, mask: Bool[Array, "*s"] | None = None, eps: float = 1e-5
) -> Float[Array, ""]:
    """Mean local NCC over cubic windows of `window` voxels (reflecting edges).

    Per voxel: cov / sqrt(var_x var_y + eps) of the window around it; the mean over
    (masked) voxels. Used as a registration similarity (1 - local NCC is the loss).
    """
    box = [jnp.ones((window,), jnp.float32)] * x.ndim
    total = lambda a: separable_filter(a, box, pad_mode="symmetric")  # noqa: E731
    n = float(window**x.ndim)
    sx, sy = total(x), total(y)
    cross = total(x * y) - sx * sy / n
    var_x = total(x * x) - sx * sx / n
    var_y = total(y * y) - sy * sy / n
    return _masked_mean(cross / jnp.sqrt(jnp.maximum(var_x * var_y, 0.0) + eps), mask)


# -- segmentation -------------------------------------------------------------------
def overlap_counts(a: Int[Array, "*s"], b: Int[Array, "*s"], structures: Sequence[int | Sequence[int]]) -> Int[Array, "L 2"]:
    """Per structure, |A & B| and |A| + |B| in voxels: the sums Dice is made of, to pool over scans or chunks.

    A structure is one label id, or a sequence of ids taken together as one region
    (e.g. the left and right hippocampus)."""
    groups = [jnp.atleast_1d(jnp.asarray(s)) for s in structures]
    in_a = jnp.stack([jnp.isin(a, g) for g in groups], axis=-1)
    in_b = jnp.stack([jnp.isin(b, g) for g in groups], axis=-1)
    axes = tuple(range(jnp.ndim(a)))
    return jnp.stack([jnp.sum(in_a & in_b, axis=axes), jnp.sum(in_a, axis=axes) + jnp.sum(in_b, axis=axes)], axis=-1)


def dice_from_counts(counts: Num[Array, "L 2"]) -> Float[Array, " L"]:
    """Dice per structure from `overlap_counts` (summed over any scans); NaN where absent from both."""
    counts = jnp.asarray(counts, jnp.float32)
    inter, total = counts[..., 0], counts[..., 1]
    return jnp.where(total > 0, 2.0 * inter / jnp.maximum(total, 1), jnp.nan)


def dice(a: Int[Array, "*s"], b: Int[Array, "*s"], structures: Sequence[int | Sequence[int]]) -> Float[Array, " L"]:
    """Dice overlap per structure (a label id, or a sequence of ids as one region); NaN where absent from both."""
    return dice_from_counts(overlap_counts(a, b, structures))


def voxel_volume(affine: Float[Array, "4 4"]) -> Float[Array, ""]:
    """Volume of one voxel in mm^3 (|det| of the affine's linear part).

    For a 2D slice stored with a 4x4 affine this is the volume of one pixel of the
    slab, i.e. its area times the slice thickness.
    """
    return jnp.abs(jnp.linalg.det(jnp.asarray(affine, jnp.float32)[:3, :3]))


def regional_volumes(
    labels: Int[Array, "*s"], affine: Float[Array, "4 4"], label_ids: Sequence[int]
) -> Float[Array, " L"]:
    """Volume in mm^3 of each label in `label_ids`."""
    counts = jnp.sum(labels[..., None] == jnp.asarray(label_ids), axis=tuple(range(labels.ndim)))
    return counts.astype(jnp.float32) * voxel_volume(affine)


# -- deformations -------------------------------------------------------------------
def folding_fraction(jac_det: Float[Array, "*s"], mask: Bool[Array, "*s"] | None = None) -> Float[Array, ""]:
    """Share of (masked) voxels with |J| <= 0, i.e. where the map folds."""
    return _masked_mean((jac_det <= 0).astype(jnp.float32), mask)


#: The tolerance of the monotone share the benchmarks report (|J| per year): a rate within it
#: counts as either sign, so a voxel whose volume does not change is not a sign flip of float noise.
MONOTONE_TOL = 1e-4


def monotone_fraction(
    jac_series: Float[Array, "T *s"],
    times: Float[Array, " T"],
    mask: Bool[Array, "*s"] | None = None,
    tol: float = 0.0,
) -> Float[Array, ""]:
    """Share of voxels whose volume-change rate d|J|/dt keeps one sign over time.

    Rates are finite differences between consecutive maps of `jac_series` (T, *s)
    taken at `times` (T,), increasing. A voxel is monotone when all its rates are
    >= -tol or all are <= tol (`MONOTONE_TOL` in the benchmarks, times in years).
    With T <= 2 every voxel is monotone.
    """
    dt = jnp.diff(times).reshape((-1,) + (1,) * (jac_series.ndim - 1))
    rates = jnp.diff(jac_series, axis=0) / dt
    monotone = jnp.all(rates >= -tol, axis=0) | jnp.all(rates <= tol, axis=0)
    return _masked_mean(monotone.astype(jnp.float32), mask)


def region_stats(values: np.ndarray, labels: np.ndarray, label_ids: Sequence[int]) -> dict[str, np.ndarray]:
    """Per-region statistics of a voxel map (e.g. |J|): host-side numpy.

    **Returns:** dict of (L,) arrays `mean`, `std`, `median`, `min`, `max`, `count`;
    NaN (count 0) for labels absent from `labels`.
    """
    values, labels = np.asarray(values), np.asarray(labels)
    out = {k: np.full(len(label_ids), np.nan) for k in ("mean", "std", "median", "min", "max")}
    out["count"] = np.zeros(len(label_ids), int)
    for i, lab in enumerate(label_ids):
        v = values[labels == lab]
        out["count"][i] = v.size
        if v.size:
            out["mean"][i], out["std"][i], out["median"][i] = v.mean(), v.std(), np.median(v)
            out["min"][i], out["max"][i] = v.min(), v.max()
    return out


# -- classification (host-side) -----------------------------------------------------
def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """(C, C) counts; row = true class, column = predicted class."""
    y_true, y_pred = np.asarray(y_true, int), np.asarray(y_pred, int)
    c = num_classes or int(max(y_true.max(initial=0), y_pred.max(initial=0)) + 1)
    cm = np.zeros((c, c), int)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Share of correct predictions."""
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean per-class recall over the classes present in `y_true`."""
    cm = confusion_matrix(y_true, y_pred)
    support = cm.sum(1)
    present = support > 0
    return float(np.mean(np.diag(cm)[present] / support[present]))


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve for binary labels (1 = positive), ties counted half.

    Computed as the Mann-Whitney U statistic from average ranks.
    """
    y_true = np.asarray(y_true).astype(bool)
    score = np.asarray(score, np.float64)
    n_pos, n_neg = int(y_true.sum()), int((~y_true).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC AUC needs both classes in y_true")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty_like(score)
    sorted_scores = score[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y_true].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
