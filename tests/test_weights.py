"""Weight geometry against full SVD and scipy.linalg.subspace_angles; randomized SVD accuracy at 4096 x 4096."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from rlscope.probes.weights import (aggregate, kind_of, layer_of, matrix_geometry, principal_angles, select_matrices,
                                    top_svd)


def _pair(seed, m=40, n=30, eps=0.05):
    g = torch.Generator().manual_seed(seed)
    w0 = torch.randn(m, n, generator=g, dtype=torch.float64)
    return w0, w0 + eps * torch.randn(m, n, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("seed", range(4))
def test_geometry_equals_full_svd_and_scipy(seed):
    w0, wt = _pair(seed)
    k = 6
    stats, (u1, v1) = matrix_geometry(w0, wt, k=k)
    U0, S0, V0h = np.linalg.svd(w0.numpy())
    Ut, St, Vth = np.linalg.svd(wt.numpy())
    left = scipy.linalg.subspace_angles(U0[:, :k], Ut[:, :k])
    right = scipy.linalg.subspace_angles(V0h[:k].T, Vth[:k].T)
    assert stats["angle_left_mean"] == pytest.approx(left.mean(), abs=1e-5)
    assert stats["angle_left_max"] == pytest.approx(left.max(), abs=1e-5)
    assert stats["angle_right_mean"] == pytest.approx(right.mean(), abs=1e-5)
    assert stats["angle_right_max"] == pytest.approx(right.max(), abs=1e-5)
    rel = np.abs((St[:k] - S0[:k]) / S0[:k])
    assert stats["sv_rel_change_mean"] == pytest.approx(rel.mean(), abs=1e-5)
    assert stats["sv_rel_change_max"] == pytest.approx(rel.max(), abs=1e-5)
    dw = (wt - w0).numpy()
    Ud, Sd, Vdh = np.linalg.svd(dw)
    for i in range(4):
        assert stats[f"dw_sigma{i + 1}"] == pytest.approx(Sd[i], rel=1e-5)
    assert stats["dw_rank1_energy"] == pytest.approx(Sd[0] ** 2 / (Sd ** 2).sum(), rel=1e-5)
    assert stats["dw_stable_rank"] == pytest.approx((Sd ** 2).sum() / Sd[0] ** 2, rel=1e-5)
    assert stats["dw_rel_norm"] == pytest.approx(np.linalg.norm(dw) / np.linalg.norm(w0.numpy()), rel=1e-6)
    assert abs(float(u1.double() @ torch.from_numpy(Ud[:, 0]))) == pytest.approx(1, abs=1e-5)
    assert abs(float(v1.double() @ torch.from_numpy(Vdh[0]))) == pytest.approx(1, abs=1e-5)
    assert math.isnan(stats["dw_dir_cos_left"])  # no previous probe yet


def test_direction_cosine_is_sign_aligned_and_tracks_linear_updates():
    w0, _ = _pair(0)
    g = torch.Generator().manual_seed(1)
    u, v = torch.randn(40, 1, generator=g, dtype=torch.float64), torch.randn(1, 30, generator=g, dtype=torch.float64)
    noise = 1e-3 * torch.randn(40, 30, generator=g, dtype=torch.float64)
    _, d1 = matrix_geometry(w0, w0 + 0.1 * u @ v + noise, k=4)
    s2, d2 = matrix_geometry(w0, w0 + 0.3 * u @ v + noise, k=4, prev_dir=d1)
    assert s2["dw_dir_cos_left"] == pytest.approx(1, abs=1e-3) and s2["dw_dir_cos_right"] == pytest.approx(1, abs=1e-3)
    assert s2["dw_rank1_energy"] > 0.99
    s3, _ = matrix_geometry(w0, w0 - 0.3 * u @ v, k=4, prev_dir=d2)  # a flipped sign is the same direction
    assert s3["dw_dir_cos_left"] == pytest.approx(1, abs=1e-3)


def test_no_update_is_flagged_not_faked():
    w0, _ = _pair(2)
    stats, _ = matrix_geometry(w0, w0.clone(), k=4)
    assert stats["angle_left_max"] == pytest.approx(0, abs=1e-6) and stats["sv_rel_change_max"] == 0
    assert math.isnan(stats["dw_rank1_energy"]) and stats["dw_rel_norm"] == 0


def test_principal_angles_of_known_subspaces():
    e = torch.eye(4, dtype=torch.float64)
    t = 0.3
    b = torch.stack([e[0], math.cos(t) * e[1] + math.sin(t) * e[2]], dim=1)
    assert principal_angles(e[:, :2], b).tolist() == pytest.approx([0.0, t], abs=1e-7)


def test_randomized_top16_angles_on_4096_within_1e3_rad_of_exact():
    """A 4096 x 4096 matrix with a decaying spectrum (as trained weights have) plus a small update."""
    g = torch.Generator().manual_seed(0)
    n = 4096
    q1, _ = torch.linalg.qr(torch.randn(n, 64, generator=g))
    q2, _ = torch.linalg.qr(torch.randn(n, 64, generator=g))
    spectrum = 10.0 * torch.pow(torch.arange(1, 65, dtype=torch.float32), -1.0)
    w0 = (q1 * spectrum) @ q2.T + 0.01 * torch.randn(n, n, generator=g) / math.sqrt(n)
    wt = w0 + 0.02 * torch.randn(n, 1, generator=g) @ torch.randn(1, n, generator=g) / n + \
        0.002 * torch.randn(n, n, generator=g) / math.sqrt(n)
    approx, _ = matrix_geometry(w0, wt, k=16, exact_below=1024)
    exact, _ = matrix_geometry(w0, wt, k=16, exact_below=n)
    for key in ("angle_left_mean", "angle_left_max", "angle_right_mean", "angle_right_max"):
        assert abs(approx[key] - exact[key]) < 1e-3, (key, approx[key], exact[key])
    assert approx["sv_rel_change_max"] == pytest.approx(exact["sv_rel_change_max"], abs=1e-4)


def test_selection_and_aggregates():
    names = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj.bias",
             "model.layers.1.mlp.down_proj.weight", "model.layers.1.input_layernorm.weight", "lm_head.weight"]
    sel = select_matrices(names)
    assert sel == ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"]
    assert kind_of(sel[0]) == "q" and kind_of(sel[1]) == "down" and layer_of(sel[1]) == 1
    agg = aggregate({sel[0]: {"angle_left_mean": 0.1, "dw_rank1_energy": float("nan")},
                     sel[1]: {"angle_left_mean": 0.3, "dw_rank1_energy": 0.5}})
    assert agg["angle_left_mean"] == pytest.approx(0.2) and agg["dw_rank1_energy"] == 0.5
    assert agg["kind/q/angle_left_mean"] == 0.1 and agg["layer/1/angle_left_mean"] == 0.3
    assert top_svd(torch.randn(5, 3), k=10).S.numel() == 3
