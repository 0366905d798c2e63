"""dW's spectrum with a bound (issue 26): the reported singular values of dW = W_t - W_0 and its rank-1 energy lie
within their reported bounds of a float64 SVD, on rank-1-plus-noise, flat and realistic spectra; the bounds
themselves (:func:`rlscope.ritz.value_bounds`) hold against brute force on random symmetric matrices."""

from __future__ import annotations

import math

import pytest
import torch

from rlscope.probes.weight_matrix import matrix_geometry
from rlscope.ritz import ValueGoal, value_bounds


def _exact(w0, wt):
    dw = wt.double() - w0.double()
    s = torch.linalg.svdvals(dw)
    return s, float(s[0] ** 2 / (s ** 2).sum())


def _check(stats, s, energy, n=4, tol=1e-9):
    for i in range(1, n + 1):
        reported, exact = stats[f"dw_sigma{i}"], float(s[i - 1])
        # the Ritz value is the lower end; the exact value is within the relative bound above it
        assert reported <= exact * (1 + tol)
        assert exact <= reported * (1 + stats["dw_sigma_bound"]) * (1 + tol)
    assert stats["dw_rank1_energy"] <= energy + tol
    assert energy <= stats["dw_rank1_energy"] + stats["dw_rank1_energy_bound"] + tol


def _pair(kind: str, m: int, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    w0 = 0.02 * torch.randn(m, n, generator=g)
    noise = torch.randn(m, n, generator=g) / math.sqrt(max(m, n))
    if kind == "rank1+noise":  # AlphaRL's nearly rank-1 update
        u, v = torch.randn(m, 1, generator=g), torch.randn(1, n, generator=g)
        return w0, w0 + 1e-4 * (30 * (u @ v) / math.sqrt(m * n) + noise)
    return w0, w0 + 1e-4 * noise  # flat: no dominant direction (sigma_1 / sigma_2 ~ 1.01)


@pytest.mark.parametrize("kind", ["rank1+noise", "flat"])
@pytest.mark.parametrize("shape", [(512, 512), (1200, 700)])
def test_dw_sigmas_and_rank1_energy_within_their_bound_of_float64_svd(kind, shape):
    w0, wt = _pair(kind, *shape, seed=shape[0])
    stats, _ = matrix_geometry(w0, wt, k=16)
    s, energy = _exact(w0, wt)
    _check(stats, s, energy)
    assert stats["dw_bound_unmet"] == 0
    assert stats["dw_sigma_bound"] <= 0.01 and stats["dw_rank1_energy_bound"] <= 1e-3
    # what the issue measured before: sigma_2..4 5-8% low, the energy of a flat dW 2-3% low
    for i in range(2, 5):
        assert stats[f"dw_sigma{i}"] >= 0.99 * float(s[i - 1])
    assert stats["dw_rank1_energy"] >= energy - 1e-3


def test_realistic_bf16_update_within_bound_and_warm_probe_too():
    from rlscope.bench import _rl_update, _spiked_matrix

    w0 = _spiked_matrix(1536, 768, seed=3).to(torch.bfloat16)
    cache: dict = {}
    for step in (1, 2):  # the second probe warm-starts dW from the first's basis
        wt = _rl_update(w0, step, 4e-3, 9).to(torch.bfloat16)
        stats, _ = matrix_geometry(w0, wt, k=16, cache=cache)
        _check(stats, *_exact(w0, wt))
        assert stats["dw_bound_unmet"] == 0


def test_a_loose_pass_budget_flags_the_bound_unmet_rather_than_reporting_it_met():
    w0, wt = _pair("flat", 900, 900, seed=1)
    stats, _ = matrix_geometry(w0, wt, k=16, max_passes=3)
    s, energy = _exact(w0, wt)
    _check(stats, s, energy)  # still a true bound, only wider than its target
    assert stats["dw_bound_unmet"] == 1 and stats["dw_sigma_bound"] > 0.01


def test_exactly_low_rank_dw_has_zero_width_bounds_where_defined():
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(600, 400, generator=g, dtype=torch.float64)
    u, v = torch.randn(600, 2, generator=g, dtype=torch.float64), torch.randn(2, 400, generator=g, dtype=torch.float64)
    stats, _ = matrix_geometry(w0, w0 + 1e-3 * (u @ v), k=8)
    s, energy = _exact(w0, w0 + 1e-3 * (u @ v))
    assert stats["dw_sigma1"] == pytest.approx(float(s[0]), rel=1e-9)
    assert stats["dw_sigma3"] < 1e-6 * stats["dw_sigma1"]  # numerically zero, left out of the relative bound
    assert stats["dw_bound_unmet"] == 0 and math.isfinite(stats["dw_sigma_bound"])


@pytest.mark.parametrize("seed", range(6))
def test_value_bounds_hold_against_brute_force(seed):
    """Random PSD H with a clustered top (the hard case), Rayleigh-Ritz from a perturbed subspace: every exact
    eigenvalue lies in [theta_i, up_i] and the bound shrinks as the subspace improves."""
    g = torch.Generator().manual_seed(seed)
    n, d = 200, 10
    lam = torch.cat([torch.tensor([10.0, 3.0, 2.99, 2.98, 2.97]), torch.rand(n - 5, generator=g, dtype=torch.float64) * 2.5])
    lam = lam.double().sort(descending=True).values
    X = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64)).Q
    H = (X * lam) @ X.T
    widths = []
    for noise in (0.3, 0.03, 0.003):
        Q = torch.linalg.qr(X[:, :d] + noise * torch.randn(n, d, generator=g, dtype=torch.float64) / math.sqrt(n)).Q
        theta, W = torch.linalg.eigh(Q.T @ H @ Q)
        theta, W = theta.flip(0), W.flip(1)
        V = Q @ W
        R = H @ V - V * theta
        up = value_bounds(theta, R, 5)
        for i in range(5):
            assert float(theta[i]) <= float(lam[i]) + 1e-12
            assert float(lam[i]) <= up[i] + 1e-12
        widths.append(max(u - float(t) for u, t in zip(up, theta[:5])))
    assert widths[0] > widths[1] > widths[2]


def test_value_goal_excess_is_met_at_one():
    goal = ValueGoal(2, rel_tol=0.01, energy_tol=1e-3, fro2=1.0)
    assert goal.value_excess([1.0, 0.5], [1.0, 0.505]) == pytest.approx(1.0)
    assert goal.value_excess([1.0, 0.5], [1.0, 0.5]) == 0.0
    # sigma_1: (sqrt(0.012) - 0.1) / (0.01 x 0.1) = 9.54; energy: (0.012 - 0.01) / 1 / 1e-3 = 2: the larger
    assert goal.value_excess([0.1, 0.05], [math.sqrt(0.012), 0.05]) == pytest.approx((math.sqrt(0.012) - 0.1) / 1e-3)
    assert ValueGoal(1, 1.0, 1e-3, 1.0).value_excess([0.1], [math.sqrt(0.012)]) == pytest.approx(2.0)
