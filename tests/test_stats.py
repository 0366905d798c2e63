"""The analyses' statistics written in numpy (rlscope.analysis.stats) against the libraries they follow: scipy.stats,
scipy.ndimage and ruptures, on random, tied, quantised and short inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import ruptures
from scipy import ndimage
from scipy import stats as sps

from rlscope.analysis import stats


def _cases():
    rng = np.random.default_rng(0)
    for n in (3, 5, 8, 20, 33, 34, 60, 200):
        x = np.arange(n, dtype=float)
        yield x, rng.normal(size=n)  # no ties: exact p up to 33 points
        yield x, 0.02 * x + rng.normal(size=n)
        yield x, np.round(rng.normal(size=n) * 2) / 8  # quantised: many ties
        yield x, rng.integers(0, 3, n) / 1.0 + 0.01 * (x > n / 2)  # 0/1/2 sums
        yield np.repeat(np.arange(math.ceil(n / 2)), 2)[:n].astype(float), rng.normal(size=n)  # ties in x


def test_kendall_theil_sen_and_spearman_equal_scipy():
    for x, y in _cases():
        tau, p = stats.kendall(x, y)
        ref = sps.kendalltau(x, y)
        if np.isnan(ref.statistic):
            assert np.isnan(tau)
            continue
        assert tau == pytest.approx(ref.statistic, abs=1e-12) and p == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-15)
        slope, lo, hi = stats.theil_sen(x, y)
        r = sps.theilslopes(y, x, alpha=0.95)
        assert (slope, lo, hi) == pytest.approx((r.slope, r.low_slope, r.high_slope), abs=1e-12)
        ref_s = sps.spearmanr(x, y)
        assert stats.spearman(x, y) == pytest.approx(ref_s.statistic, abs=1e-12)
        assert stats.spearman_p(stats.spearman(x, y), x.size) == pytest.approx(ref_s.pvalue, rel=1e-6, abs=1e-12)
        assert np.array_equal(stats.ranks(y), sps.rankdata(y))


def test_kendall_on_long_perfectly_monotone_series_equals_scipy():
    for n in (34, 171, 200, 400):  # exact p with <= 1 discordant pair, whatever n (factorials beyond float range)
        x = np.arange(n, dtype=float)
        for y in (x, -x, np.r_[x[1::-1], x[2:]]):
            tau, p = stats.kendall(x, y)
            ref = sps.kendalltau(x, y)
            assert tau == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue, abs=1e-300)


def test_constant_series_have_no_kendall_tau():
    assert all(math.isnan(v) for v in stats.kendall(np.arange(6.0), np.ones(6)))


def test_f_tail_equals_scipy():
    for f, d1, d2 in [(0.3, 2, 10), (1.0, 1, 1), (2.5, 8, 200), (10.0, 3, 40), (0.01, 30, 5), (50.0, 12, 300)]:
        assert stats.f_sf(f, d1, d2) == pytest.approx(sps.f.sf(f, d1, d2), rel=1e-9, abs=1e-300)
    assert stats.f_sf(0.0, 3, 4) == 1.0


@pytest.mark.parametrize("df", [0.5, 1, 2.5, 7, 30, 200])
@pytest.mark.parametrize("level", [0.9, 0.95, 0.99])
def test_t_quantile_equals_scipy(df, level):
    from scipy.stats import t

    assert stats.t_quantile(df, level) == pytest.approx(t.ppf((1 + level) / 2, df), rel=1e-8)


def test_rolling_median_equals_median_filter():
    rng = np.random.default_rng(1)
    for n, size in [(5, 5), (12, 5), (40, 5), (300, 31), (7, 7)]:
        y = rng.normal(size=n)
        assert np.array_equal(stats.rolling_median(y, size), ndimage.median_filter(y, size=size, mode="nearest"))


def _partition_cost(y, ends, pen):
    starts = [0, *ends[:-1]]
    return sum(float(y[a:b].var() * (b - a)) + pen for a, b in zip(starts, ends))


def test_partition_is_the_exact_optimum_by_brute_force():
    from itertools import combinations

    rng = np.random.default_rng(4)
    for seed in range(40):
        n = int(rng.integers(2, 13))
        y = np.round(rng.normal(0, 1, n) + np.repeat(rng.normal(0, 2, 3), math.ceil(n / 3))[:n], 1)
        min_size, pen = int(rng.integers(1, min(4, n) + 1)), float(rng.choice([0.3, 1.0, 4.0]))
        best = min(_partition_cost(y, [*cuts, n], pen) for k in range(n) for cuts in combinations(range(1, n), k)
                   if all(b - a >= min_size for a, b in zip([0, *cuts], [*cuts, n])))
        got = stats.partition_l2(y, pen, min_size)
        assert _partition_cost(y, got, pen) == pytest.approx(best, abs=1e-9)


def test_partition_equals_ruptures_pelt():
    """The same partition as ruptures' PELT, except where PELT's pruning (with a minimum segment length) loses the
    optimum: there the exact partition costs less."""
    rng = np.random.default_rng(2)
    same = breaks = 0
    for seed in range(60):
        n = int(rng.integers(8, 121))
        y = rng.normal(0, 1, n) + np.repeat(rng.normal(0, 3, 4), math.ceil(n / 4))[:n]
        if seed % 3 == 0:
            y = np.round(y)  # ties
        min_size = int(rng.integers(1, max(2, n // 10) + 1))
        pen = float(rng.choice([0.5, 3.0, 3 * math.log(n), 20.0]))
        ref = ruptures.Pelt(model="l2", min_size=min_size, jump=1).fit(y).predict(pen=pen)
        got = stats.partition_l2(y, pen, min_size)
        assert _partition_cost(y, got, pen) <= _partition_cost(y, ref, pen) + 1e-9, (seed, got, ref)
        same += got == ref
        breaks += len(ref) > 1
    assert same >= 57 and breaks >= 20  # most cases have real breaks, not one segment


def test_trends_in_autocorrelated_noise_are_not_significant_more_than_5_percent():
    """Kendall's plain test finds a trend in AR(1) noise (rho 0.7) far more often than 5%; the corrected one does not,
    and a real trend under the same noise is still found."""
    plain = corrected = found = 0
    x = np.arange(200.0)
    for seed in range(200):
        rng = np.random.default_rng(seed)
        e = rng.normal(0, 1, x.size)
        for i in range(1, x.size):
            e[i] += 0.7 * e[i - 1]
        plain += sps.kendalltau(x, e).pvalue < 0.05
        corrected += stats.trend(x, e)["p"] < 0.05
        found += stats.direction(stats.trend(x, e + 0.03 * x)) == 1
    assert plain > 40 and corrected <= 14 and found >= 190, (plain, corrected, found)


def test_direction_reads_the_sign_of_tau_not_a_tied_median_slope():
    # group means of 8 samples, rising: many pairs tie, the median pairwise slope is 0, tau is clearly positive
    rng = np.random.default_rng(3)
    x = np.arange(200.0)
    y = rng.binomial(8, np.linspace(0.3, 0.5, 200)) / 8
    tr = stats.trend(x, y)
    assert tr["p"] < 0.05 and tr["tau"] > 0 and stats.direction(tr) == 1
    flat = stats.trend(x, rng.binomial(8, 0.4, 200) / 8.0)
    assert stats.direction({**flat, "p": 0.5}) == 0


def test_sigmoid_fit_equals_lmfit():
    """The ceiling's variable-projection fit against lmfit (Levenberg-Marquardt) on the same model and bounds: the
    same optimum, and the same standard error of A (both from the Jacobian at the optimum)."""
    import lmfit

    from rlscope.analysis.analyses.ceiling import fit_sigmoid, sigmoid

    rng = np.random.default_rng(5)
    c = np.arange(1, 301, dtype=float)
    for r0, a, b, mid, sd in [(0.1, 0.8, 1.5, 100.0, 0.02), (0.2, 0.6, 3.0, 60.0, 0.01), (-1.0, 7.0, 1.2, 150.0, 0.3)]:
        r = sigmoid(c, r0, a, b, mid) + rng.normal(0, sd, c.size)
        rate = bool(r.min() >= 0 and r.max() <= 1)
        start = float(np.median(r[:15]))
        ours = fit_sigmoid(c, r, start, rate)
        span = float(np.ptp(r))
        model = lmfit.Model(sigmoid, independent_vars=["c"])
        params = model.make_params(r0=ours["r0"], a=ours["a"], b=ours["b"], c_mid=ours["c_mid"])
        low = max(float(r.min()) - span, 0.0) if rate else float(r.min()) - span
        params["r0"].set(min=low, max=start + 0.5 * span)
        params["a"].set(min=low, max=1.0 if rate else float(r.max()) + 10 * span)
        params["b"].set(min=0.2, max=10.0)
        params["c_mid"].set(min=0.5, max=6000.0)
        ref = model.fit(r, params, c=c)
        assert ours["a"] == pytest.approx(ref.params["a"].value, rel=1e-3)
        assert ((r - ours["fitted"]) ** 2).sum() <= ((r - ref.best_fit) ** 2).sum() * (1 + 1e-6)
        inflate = math.sqrt(c.size / stats.effective_n(r - ref.best_fit))
        assert ours["a_ci"][1] - ours["a"] == pytest.approx(stats.Z95 * ref.params["a"].stderr * inflate, rel=0.05)
