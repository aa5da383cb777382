"""Per-scan intensity normalisation: percentile clip and linear scale."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class IntensityNorm:
    """Map the [lower, upper] percentiles of each scan onto [out_min, out_max].

    **Arguments:**

    - `lower_percentile`, `upper_percentile`: in [0, 100]; defaults 1 and 99 (as the
      spatiotemporal-INR paper scales its T1 scans).
    - `out_min`, `out_max`: target range; default [-1, 1].
    - `clip`: clip values outside the percentile range.
    - `nonzero_only`: take percentiles over non-zero voxels only (skull-stripped
      scans, where the zero background would otherwise set the lower percentile).
    """

    lower_percentile: float = 1.0
    upper_percentile: float = 99.0
    out_min: float = -1.0
    out_max: float = 1.0
    clip: bool = True
    nonzero_only: bool = False

    def __post_init__(self):
        if not 0.0 <= self.lower_percentile < self.upper_percentile <= 100.0:
            raise ValueError(
                f"need 0 <= lower < upper <= 100, got {self.lower_percentile}, {self.upper_percentile}"
            )
        if not self.out_min < self.out_max:
            raise ValueError(f"need out_min < out_max, got {self.out_min}, {self.out_max}")


def _order_statistic_pair(values: np.ndarray, k: int, sample: np.ndarray, stride: int) -> tuple[float, float]:
    """The k-th and (k+1)-th smallest of `values` (0-based, exact).

    The sorted strided `sample` brackets rank k; only values inside the bracket are
    partitioned. If the bracket misses (rare), the whole array is partitioned.
    """
    n, m = values.size, sample.size
    k1 = min(k + 1, n - 1)
    margin = 48
    i_lo, i_hi = k // stride - margin, k1 // stride + margin
    lower = sample[i_lo] if i_lo > 0 else -np.inf
    upper = sample[i_hi] if i_hi < m - 1 else np.inf
    below = int(np.count_nonzero(values < lower))
    window = values[(values >= lower) & (values <= upper)]
    if below <= k and k1 < below + window.size:
        picked = np.partition(window, [k - below, k1 - below])
        return float(picked[k - below]), float(picked[k1 - below])
    picked = np.partition(values, [k, k1])
    return float(picked[k]), float(picked[k1])


def percentiles(values: np.ndarray, qs: tuple[float, ...], stride: int = 37) -> np.ndarray:
    """Exactly `np.percentile(values, qs)` (linear method), several times faster on volumes.

    Full partitions of a 64^3 scan dominate loading time; here each percentile
    partitions only a narrow window of values located from a strided sample (a
    prime stride, so the sample does not alias with image rows).
    """
    flat = np.asarray(values).ravel()
    n = flat.size
    if n == 0:
        raise ValueError("percentiles of an empty array")
    if n < 64 * stride:
        return np.percentile(flat, qs)
    sample = np.sort(flat[::stride])
    out = []
    for q in qs:
        rank = q / 100.0 * (n - 1)
        k = int(np.floor(rank))
        a, b = _order_statistic_pair(flat, k, sample, stride)
        out.append(a + (rank - k) * (b - a))
    return np.asarray(out)


def normalise_intensity(volume: np.ndarray, cfg: IntensityNorm, out: np.ndarray | None = None) -> np.ndarray:
    """Percentile-scale one scan (any shape) to float32 per `cfg`.

    A constant scan (upper == lower percentile) maps to `out_min`. With `out` (a
    float32 array of the same shape, possibly `volume` itself) the result is
    written there without temporaries.
    """
    v = np.asarray(volume, np.float32)
    pool = v[v != 0] if cfg.nonzero_only else v
    if pool.size == 0:
        pool = v
    lo, hi = percentiles(pool, (cfg.lower_percentile, cfg.upper_percentile))
    scale = (cfg.out_max - cfg.out_min) / (hi - lo) if hi > lo else 0.0
    out = np.empty_like(v) if out is None else out
    np.subtract(v, np.float32(lo), out=out)
    out *= np.float32(scale)
    out += np.float32(cfg.out_min)
    if cfg.clip:
        np.clip(out, cfg.out_min, cfg.out_max, out=out)
    return out
