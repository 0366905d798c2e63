"""Statistics the analyses share, each defined once. Training curves are noisy and autocorrelated, so intervals come
from a moving-block bootstrap (Kunsch 1989) and information criteria use an effective sample size
n_eff = n (1 - rho) / (1 + rho), rho the lag-1 autocorrelation of the residuals (the AR(1) variance inflation); robust
trends are Theil-Sen slopes with Kendall's tau test; level shifts come from optimal partitioning.

Maintenance note: Kendall's tau-b and its p-value, the Theil-Sen slope with Sen's interval, Spearman's rho, the F
distribution's tail, the rolling median and the l2 optimal partition are written here in numpy, following
``scipy.stats.kendalltau`` / ``theilslopes`` / ``spearmanr`` / ``f.sf``, ``scipy.ndimage.median_filter`` and
``ruptures.Pelt(model="l2")`` (scipy 1.17, ruptures 1.1.9), because importing scipy.stats, ruptures and lmfit takes
0.4-1.3 s each and ``rlscope analyze`` of a small log must answer in well under a second. tests/test_stats.py checks
each against the library it follows.
"""

from __future__ import annotations

import math

import numpy as np

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


def block_indices(n: int, rng: np.random.Generator, block: int | None = None, count: int | None = None) -> np.ndarray:
    """One moving-block bootstrap resample: indices of n points, in blocks of consecutive ones; ``count``: that many
    resamples at once, (count, n)."""
    block = block or block_length(n)
    k = math.ceil(n / block)
    starts = rng.integers(0, max(n - block + 1, 1), size=(count or 1, k))
    idx = (starts[:, :, None] + np.arange(block)[None, None, :]).reshape(count or 1, -1)[:, :n]
    return idx if count else idx[0]


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
    points is first binned to 500 means (Theil-Sen compares all pairs). The test allows for autocorrelated noise:
    the variance of Kendall's statistic is inflated by (1 + rho) / (1 - rho), rho the lag-1 autocorrelation of the
    residuals around the Theil-Sen line (the AR(1) form of Hamed and Rao's 1998 correction; training curves wander,
    and the plain test finds trends in a random walk). On values with many ties (quantised rewards) the median slope
    can be exactly 0 while the values rise: read the direction from ``tau``, not from the slope."""
    if len(x) < 4:
        return {"slope": None, "slope_ci": [None, None], "tau": None, "p": None}
    x, y = binned(x, y, TREND_POINTS)
    slope, lo, hi = theil_sen(x, y)
    resid = y - slope * x if math.isfinite(slope) else y
    rho = lag1(resid)
    tau, p = kendall(x, y, inflation=(1 + rho) / (1 - rho))
    return {"slope": slope, "slope_ci": [lo, hi], "tau": tau, "p": p}


def direction(tr: dict, alpha: float = 0.05) -> int:
    """+1 rising, -1 falling, 0 no significant trend, from a :func:`trend`: Kendall's p < ``alpha``, the sign of tau."""
    if tr.get("p") is None or not math.isfinite(tr["p"]) or tr["p"] >= alpha:
        return 0
    return 1 if tr["tau"] > 0 else -1 if tr["tau"] < 0 else 0


def ols_trend(x, y) -> dict:
    """Least-squares slope with its standard error inflated for AR(1) residuals (s^2 (1 + rho) / (1 - rho) / Sxx), the
    change it makes over the series (``change``, ``change_se``: slope x span) and the two-sided p-value of t on the
    effective number of points less 2 degrees of freedom. Unlike a median of pairwise slopes it is not stuck at 0 on
    quantised values (rewards in steps of 1/G, 0/1/2 sums)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n = x.size
    if n < 3 or np.ptp(x) == 0:
        return {"slope": math.nan, "se": math.nan, "change": math.nan, "change_se": math.nan, "t": math.nan,
                "p": math.nan}
    xc = x - x.mean()
    sxx = float(xc @ xc)
    slope = float(xc @ (y - y.mean())) / sxx
    resid = y - y.mean() - slope * xc
    rho = lag1(resid)
    se = math.sqrt(float(resid @ resid) / (n - 2) * (1 + rho) / (1 - rho) / sxx)
    df = max(effective_n(resid) - 2, 1.0)
    t = slope / se if se > 0 else (math.copysign(math.inf, slope) if slope else math.nan)
    p = f_sf(t * t, 1, df) if math.isfinite(t) else (0.0 if slope else math.nan)
    span = float(x[-1] - x[0])
    return {"slope": slope, "se": se, "change": slope * span, "change_se": se * span, "t": t, "p": p}


def _normal_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2))


def _tie_counts(values: np.ndarray) -> np.ndarray:
    """Sizes of the groups of equal values (only groups of two or more)."""
    _, counts = np.unique(values, return_counts=True)
    return counts[counts > 1].astype(np.float64)


def _kendall_p_exact(n: int, c: int) -> float:
    """Two-sided exact p-value of Kendall's statistic without ties: ``c`` the smaller of the concordant and discordant
    pair counts (Kendall 1970; the recursion of scipy's ``_kendall_p_exact``)."""
    if n <= 2:
        return 1.0
    if c == 0:
        return min(1.0, 2.0 / math.factorial(n)) if n < 171 else 0.0
    if c == 1:
        return min(1.0, 2.0 / math.factorial(n - 1)) if n < 172 else 0.0
    if 4 * c == n * (n - 1):
        return 1.0
    new = np.zeros(c + 1)
    new[0:2] = 1.0
    for j in range(3, n + 1):
        new = np.cumsum(new)
        if j <= c:
            new[j:] -= new[:c + 1 - j]
    return float(min(1.0, 2.0 * np.sum(new) / math.factorial(n)))


def kendall(x, y, inflation: float = 1.0) -> tuple[float, float]:
    """Kendall's tau-b and its two-sided p-value: exact without ties for n <= 33, else the normal approximation with
    the tie-corrected variance (Kendall 1970), as ``scipy.stats.kendalltau`` (method "auto"). NaN when either side is
    constant. ``inflation`` > 1 multiplies the statistic's variance (autocorrelated series; then always the normal
    approximation)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n = x.size
    if n < 2:
        return math.nan, math.nan
    sx = np.sign(x[None, :] - x[:, None])
    sy = np.sign(y[None, :] - y[:, None])
    iu = np.triu_indices(n, 1)
    prod = (sx * sy)[iu]
    s = float(prod.sum())  # concordant minus discordant
    tot = n * (n - 1) / 2
    tx, ty = _tie_counts(x), _tie_counts(y)
    xtie, ytie = float((tx * (tx - 1) / 2).sum()), float((ty * (ty - 1) / 2).sum())
    if xtie == tot or ytie == tot:
        return math.nan, math.nan
    tau = max(-1.0, min(1.0, s / math.sqrt(tot - xtie) / math.sqrt(tot - ytie)))
    if xtie == 0 and ytie == 0 and inflation <= 1.0:
        dis = int((prod < 0).sum())
        if n <= 33 or min(dis, tot - dis) <= 1:
            return tau, _kendall_p_exact(n, int(min(dis, tot - dis)))
    m = n * (n - 1.0)
    x0, y0 = float((tx * (tx - 1) * (tx - 2)).sum()), float((ty * (ty - 1) * (ty - 2)).sum())
    x1, y1 = float((tx * (tx - 1) * (2 * tx + 5)).sum()), float((ty * (ty - 1) * (2 * ty + 5)).sum())
    var = (m * (2 * n + 5) - x1 - y1) / 18 + 2 * xtie * ytie / m + x0 * y0 / (9 * m * (n - 2))
    return tau, min(1.0, 2 * _normal_sf(abs(s) / math.sqrt(var * max(inflation, 1.0))))


def theil_sen(x, y) -> tuple[float, float, float]:
    """Theil-Sen slope (the median of the pairwise slopes) and Sen's (1968) 95% interval, as
    ``scipy.stats.theilslopes``."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    dx = x[:, None] - x
    keep = dx > 0
    slopes = np.sort((y[:, None] - y)[keep] / dx[keep])
    if not slopes.size:
        return math.nan, math.nan, math.nan
    n, nt = y.size, slopes.size
    tx, ty = _tie_counts(x), _tie_counts(y)
    sigma = math.sqrt((n * (n - 1) * (2 * n + 5) - (tx * (tx - 1) * (2 * tx + 5)).sum()
                       - (ty * (ty - 1) * (2 * ty + 5)).sum()) / 18.0)
    hi = min(int(np.round((nt + Z95 * sigma) / 2.0)), nt - 1)
    lo = max(int(np.round((nt - Z95 * sigma) / 2.0)) - 1, 0)
    return float(np.median(slopes)), float(slopes[lo]), float(slopes[hi])


def ranks(a) -> np.ndarray:
    """Ranks 1..n, ties given their mean rank (``scipy.stats.rankdata``)."""
    a = np.asarray(a, dtype=np.float64)
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    starts = np.r_[True, sorted_a[1:] != sorted_a[:-1]]
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    last = np.r_[first[1:], a.size] - 1
    out = np.empty(a.size)
    out[order] = (first[group] + last[group]) / 2.0 + 1
    return out


def spearman(x, y) -> float:
    """Spearman's rank correlation (NaN when either side is constant)."""
    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float(rx @ rx) * float(ry @ ry))
    return float(rx @ ry) / denom if denom > 0 else math.nan


def spearman_p(rho: float, n: int) -> float:
    """Two-sided p-value of Spearman's rho on n pairs (the t approximation scipy uses: t^2 = rho^2 (n - 2) / (1 -
    rho^2) on n - 2 degrees of freedom)."""
    if n < 3 or not math.isfinite(rho):
        return math.nan
    if abs(rho) >= 1:
        return 0.0
    return f_sf(rho * rho * (n - 2) / (1 - rho * rho), 1, n - 2)


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz; Press et al., Numerical Recipes 6.4)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1 - x) / b


def f_sf(f: float, d1: float, d2: float) -> float:
    """P(F > f) for the F distribution with (d1, d2) degrees of freedom: I_{d2 / (d2 + d1 f)}(d2 / 2, d1 / 2)."""
    if f <= 0:
        return 1.0
    return betainc(d2 / 2.0, d1 / 2.0, d2 / (d2 + d1 * f))


def t_quantile(df: float, level: float = 0.95) -> float:
    """The half-width multiplier of a two-sided ``level`` interval under Student's t with ``df`` > 0 (fractional allowed)
    degrees of freedom, ``scipy.stats.t.ppf((1 + level) / 2, df)``: the t with P(|T| > t) = f_sf(t^2, 1, df) =
    1 - level, found by bisection."""
    alpha, lo, hi = 1.0 - level, 0.0, 1.0
    while f_sf(hi * hi, 1, df) > alpha:
        hi *= 2.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f_sf(mid * mid, 1, df) > alpha else (lo, mid)
    return (lo + hi) / 2


def rolling_median(y, size: int) -> np.ndarray:
    """Centred rolling median over ``size`` points (odd), the ends padded with the end values
    (``scipy.ndimage.median_filter(y, size, mode="nearest")``)."""
    y = np.asarray(y, dtype=np.float64)
    half = size // 2
    padded = np.concatenate([np.full(half, y[0]), y, np.full(size - 1 - half, y[-1])])
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, size), axis=1)


def partition_l2(y, pen: float, min_size: int = 1) -> list[int]:
    """The optimal partition of ``y`` into segments of at least ``min_size`` points under the l2 cost (the sum of
    squared deviations from each segment's mean) plus ``pen`` per segment: the ends of the segments, the last being
    len(y). Optimal partitioning (Jackson et al. 2005) finds the exact minimum, the same partition
    ``ruptures.Pelt(model="l2", min_size=min_size, jump=1).fit(y).predict(pen=pen)`` returns (PELT prunes the same
    recursion; ties go to the earliest break, as there)."""
    y = np.asarray(y, dtype=np.float64)
    n = y.size
    s1, s2 = np.r_[0.0, np.cumsum(y)], np.r_[0.0, np.cumsum(y * y)]
    best = np.full(n + 1, np.inf)
    best[0] = 0.0
    last = np.zeros(n + 1, dtype=np.int64)
    ends = [k for k in range(min_size, n) ] + [n]
    for b in ends:
        starts = np.r_[0, np.arange(min_size, b - min_size + 1)]
        starts = starts[np.isfinite(best[starts])]
        if not starts.size:
            continue
        length = b - starts
        cost = (s2[b] - s2[starts]) - (s1[b] - s1[starts]) ** 2 / length
        total = best[starts] + np.maximum(cost, 0.0) + pen
        i = int(np.argmin(total))
        best[b], last[b] = total[i], starts[i]
    out, b = [], n
    while b > 0:
        out.append(int(b))
        b = int(last[b])
    return out[::-1]


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
    y = np.asarray(y, dtype=np.float64)
    if len(y) < 5:
        return float(np.var(y))
    resid = y - rolling_median(y, max(5, len(y) // 10) | 1)
    rho = lag1(resid)
    return float(np.var(resid)) * (1 + rho) / (1 - rho)


def window_median(y: np.ndarray, share: float, end: bool) -> float:
    """Median of the first (``end`` False) or last ``share`` of a series (at least 3 points)."""
    k = max(3, int(round(len(y) * share)))
    part = y[-k:] if end else y[:k]
    return float(np.median(part)) if len(part) else math.nan
