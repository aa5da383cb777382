"""The simplest longitudinal classifier: PCA of each subject's change image, then logistic regression.

Each subject's change image is its last observed scan minus its first (the follow-ups
aligned to the baseline, as `longbrain align` leaves them), block-averaged to at most
`max_voxels` voxels so that the features stay bounded however large the scans. Principal
components are fitted on the training subjects only (no test subject leaks into them) and
every subject is projected onto the first `components`; a logistic regression on those
scores (`weightspace.models.LinearClassifier`, trained by `classifier.train_classifier`)
classifies. A method that cannot beat this has not shown that it reads trajectories.
"""

from __future__ import annotations

import math

import numpy as np


def block_factor(shape: tuple[int, ...], max_voxels: int) -> int:
    """The smallest block edge f whose block means of a `shape` grid number at most `max_voxels`."""
    f = 1
    while math.prod(-(-n // f) for n in shape) > max_voxels:
        f += 1
    return f


def block_mean(images: np.ndarray, factor: int) -> np.ndarray:
    """(N, *shape) -> (N, *ceil(shape / factor)) means of factor^D blocks (edge blocks over their voxels)."""
    if factor == 1:
        return images.astype(np.float32)
    n, shape = images.shape[0], images.shape[1:]
    padded = [-(-s // factor) * factor for s in shape]
    x = np.zeros((n, *padded), np.float32)
    count = np.zeros(padded, np.float32)
    x[(slice(None), *(slice(0, s) for s in shape))] = images
    count[tuple(slice(0, s) for s in shape)] = 1.0
    split = [d for s in padded for d in (s // factor, factor)]
    axes = tuple(range(2, 2 * len(shape) + 1, 2))
    sums = x.reshape(n, *split).sum(axis=axes)
    counts = count.reshape(split).sum(axis=tuple(a - 1 for a in axes))
    return (sums / np.maximum(counts, 1.0)).astype(np.float32)


def change_images(volumes: np.ndarray, mask: np.ndarray, max_voxels: int = 32768) -> np.ndarray:
    """(N, T, *shape) scans and (N, T) observed -> (N, V) block-averaged last-minus-first images, V <= max_voxels.

    A subject with a single scan has no change: its row is zero."""
    volumes, mask = np.asarray(volumes), np.asarray(mask, bool)
    if not mask[:, 0].all():
        raise ValueError("every subject needs its baseline in slot 0")
    last = np.where(mask.any(1), mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1), 0)
    change = volumes[np.arange(len(volumes)), last] - volumes[:, 0]
    factor = block_factor(volumes.shape[2:], max_voxels)
    return block_mean(change, factor).reshape(len(volumes), -1)


def pca_scores(x: np.ndarray, train: np.ndarray, components: int) -> np.ndarray:
    """(N, V) rows -> (N, k) scores on the first k <= `components` principal components of the rows
    `train` (centred on their mean; k is at most the training rank), each score scaled to unit sd
    over the training rows."""
    x = np.asarray(x, np.float64)
    mean = x[train].mean(0)
    _, s, vt = np.linalg.svd(x[train] - mean, full_matrices=False)
    k = int(min(components, np.sum(s > s[0] * 1e-6) if s.size and s[0] > 0 else 0))
    if k == 0:
        return np.zeros((len(x), 1), np.float32)
    scores = (x - mean) @ vt[:k].T
    sd = scores[train].std(0)
    return (scores / np.where(sd > 0, sd, 1.0)).astype(np.float32)
