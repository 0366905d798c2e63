"""Statistics the analyses share, each defined once. Training curves are noisy and autocorrelated, so intervals come
from a moving-block bootstrap (Kunsch 1989) and information criteria use an effective sample size
n_eff = n (1 - rho) / (1 + rho), rho the lag-1 autocorrelation of the residuals (the AR(1) variance inflation); robust
trends are Theil-Sen slopes with Kendall's tau test (scipy)."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

Z95 = 1.959963984540054


def binned(x: np.ndarray, y: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Means of consecutive runs of points so that at most ``max_points`` remain (x: mean x of each bin)."""
    n = len(x)
    if n <= max_points:
        return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    edges = np.linspace(0, n, max_points + 1).astype(int)
    xs = np.add.reduceat(np.asarray(x, dtype=np.float64), edges[:-1]) / np.diff(edges)
    ys = np.add.reduceat(np.asarray(y, dtype=np.float64), edges[:-1]) / np.diff(edges)
    return xs, ys


def lag1(residuals: np.ndarray) -> float:
    """Lag-1 autocorrelation of residuals, clipped to [0, 0.95] (negative autocorrelation is not credited)."""
    r = np.asarray(residuals, dtype=np.float64) - np.mean(residuals)
    denom = float(r @ r)
    if len(r) < 3 or denom == 0:
        return 0.0
    return float(np.clip((r[1:] @ r[:-1]) / denom, 0.0, 0.95))


def effective_n(residuals: np.ndarray) -> float:
    """n (1 - rho) / (1 + rho): the number of independent points an AR(1) series of n points is worth."""
    rho = lag1(residuals)
    return max(len(residuals) * (1 - rho) / (1 + rho), 2.0)


def bic(rss: float, n: int, n_eff: float, k: int) -> float:
    """Bayesian information criterion of a least-squares fit with k parameters, on n_eff independent points."""
    return n_eff * math.log(max(rss, 1e-300) / n) + k * math.log(n_eff)


def block_length(n: int) -> int:
    """Moving-block bootstrap block length ~ n^(1/3) (Hall, Horowitz and Jing 1995), at least 2."""
    return max(2, int(round(n ** (1 / 3))))


def block_indices(n: int, rng: np.random.Generator, block: int | None = None) -> np.ndarray:
    """One moving-block bootstrap resample: indices of n points, in blocks of consecutive ones."""
    block = block or block_length(n)
    starts = rng.integers(0, max(n - block + 1, 1), size=math.ceil(n / block))
    return (starts[:, None] + np.arange(block)[None, :]).reshape(-1)[:n]


def percentile_ci(samples, level: float = 0.95) -> list[float | None]:
    """The central ``level`` interval of bootstrap samples (NaNs left out); [None, None] when there are none."""
    s = np.asarray([v for v in samples if v is not None and np.isfinite(v)], dtype=np.float64)
    if s.size < 10:
        return [None, None]
    lo, hi = np.quantile(s, [(1 - level) / 2, (1 + level) / 2])
    return [float(lo), float(hi)]


TREND_POINTS = 500


def trend(x: np.ndarray, y: np.ndarray) -> dict:
    """Theil-Sen slope with its 95% interval, and Kendall's tau with its two-sided p-value; a series longer than 500
    points is first binned to 500 means (Theil-Sen compares all pairs)."""
    if len(x) < 4:
        return {"slope": None, "slope_ci": [None, None], "tau": None, "p": None}
    x, y = binned(x, y, TREND_POINTS)
    slope, _, lo, hi = stats.theilslopes(y, x, alpha=0.95)
    tau, p = stats.kendalltau(x, y)
    return {"slope": float(slope), "slope_ci": [float(lo), float(hi)], "tau": float(tau), "p": float(p)}


def mad_sigma(y) -> float:
    """Noise level from the median absolute deviation: 1.4826 MAD (the standard deviation for Gaussian noise)."""
    y = np.asarray(y, dtype=np.float64)
    return 1.4826 * float(np.median(np.abs(y - np.median(y)))) if y.size else 0.0


def even_indices(n: int, most: int) -> np.ndarray:
    """At most ``most`` indices into ``range(n)`` spread evenly from the first to the last (all of them if n <= most)."""
    if n <= most:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, most).round().astype(int))


def robust_sigma(y: np.ndarray) -> float:
    """Noise level from first differences: MAD(diff) / (0.6745 sqrt 2), insensitive to trends and level shifts."""
    d = np.diff(np.asarray(y, dtype=np.float64))
    if d.size < 2:
        return 0.0
    return float(np.median(np.abs(d - np.median(d))) / 0.6745 / math.sqrt(2))


def cliff(steps: np.ndarray, y: np.ndarray, z_min: float = 8.0, share_min: float = 0.25) -> dict | None:
    """The largest single-step drop far outside the step-to-step noise: robust z of the first difference <= -z_min
    (MAD of the differences) and at least ``share_min`` of the level before it. A smooth decline has none."""
    d = np.diff(np.asarray(y, dtype=np.float64))
    if d.size < 8:
        return None
    med = float(np.median(d))
    mad = mad_sigma(d)
    if mad == 0:
        return None
    z = (d - med) / mad
    i = int(np.argmin(z))
    if z[i] > -z_min or -d[i] < share_min * abs(y[i]):
        return None
    return {"step": int(steps[i + 1]), "before": float(y[i]), "after": float(y[i + 1]), "z": float(z[i])}


def long_run_variance(y: np.ndarray) -> float:
    """Variance of the noise around a series' level, inflated for autocorrelation: s^2 (1 + rho) / (1 - rho) of the
    residuals around a centred rolling median (a rolling median follows level shifts and trends, so they are not
    counted as noise)."""
    from scipy.ndimage import median_filter

    y = np.asarray(y, dtype=np.float64)
    if len(y) < 5:
        return float(np.var(y))
    resid = y - median_filter(y, size=max(5, len(y) // 10) | 1, mode="nearest")
    rho = lag1(resid)
    return float(np.var(resid)) * (1 + rho) / (1 - rho)


def window_median(y: np.ndarray, share: float, end: bool) -> float:
    """Median of the first (``end`` False) or last ``share`` of a series (at least 3 points)."""
    k = max(3, int(round(len(y) * share)))
    part = y[-k:] if end else y[:k]
    return float(np.median(part)) if len(part) else math.nan
