"""Weight geometry against full SVD and scipy.linalg.subspace_angles; the angles' error bounds against exact float64 SVD
on realistic spectra; float64 norms; the split across two real processes equals one process."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from rlscope.probes import scalars_of
from rlscope.probes.weight_matrix import difference, kind_of, layer_of, matrix_geometry, select_matrices, sq_norm
from rlscope.probes.weights import aggregate
from rlscope.ritz import principal_angles
from rlscope.topsvd import top_svd


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


# -- accuracy on realistic spectra, against exact float64 SVD -----------------------------------------------------------


def _spectrum_matrix(kind: str, m: int, n: int, seed: int = 0) -> torch.Tensor:
    """Test matrices (float32) with the spectra weights have. ``mp_powerlaw``: a Marchenko-Pastur bulk (Gaussian noise)
    plus a heavy power-law tail of 200 spikes, sigma_i ~ i^-0.35 (Martin & Mahoney 2021); ``flat``: the bulk alone (the
    top singular values crowd at the bulk edge); ``decaying``: 64 singular values 10/i over a small bulk (the spectrum
    the randomized SVD used to be checked on)."""
    g = torch.Generator().manual_seed(seed)
    big = max(m, n)
    bulk = torch.randn(m, n, generator=g) / math.sqrt(big)
    if kind == "flat":
        return bulk
    r = min(200 if kind == "mp_powerlaw" else 64, min(m, n))
    u = torch.linalg.qr(torch.randn(m, r, generator=g)).Q
    v = torch.linalg.qr(torch.randn(n, r, generator=g)).Q
    i = torch.arange(1, r + 1, dtype=torch.float32)
    if kind == "mp_powerlaw":
        return bulk + (u * (6.0 * (1 + math.sqrt(min(m, n) / big)) * i ** -0.35)) @ v.T
    return 0.01 * bulk + (u * (10.0 / i)) @ v.T


def _update(w: torch.Tensor, step: int, size: float, seed: int = 7) -> torch.Tensor:
    """W_0 plus an RL-like update after ``step`` intervals: a rank-1 part growing linearly and a random walk of noise."""
    m, n = w.shape
    g = torch.Generator().manual_seed(seed)
    u, v = torch.randn(m, 1, generator=g), torch.randn(1, n, generator=g)
    walk = sum(torch.randn(m, n, generator=torch.Generator().manual_seed(seed + t)) for t in range(1, step + 1))
    return w + size * float(w.norm()) * (0.5 * step * u @ v + 0.5 * walk) / math.sqrt(m * n)


def _exact_angles(w0, wt, k):
    (U0, _, V0h), (Ut, _, Vth) = (torch.linalg.svd(w.double(), full_matrices=False) for w in (w0, wt))
    left, right = principal_angles(U0[:, :k], Ut[:, :k]), principal_angles(V0h[:k].T, Vth[:k].T)
    return {"angle_left_mean": float(left.mean()), "angle_left_max": float(left.max()),
            "angle_right_mean": float(right.mean()), "angle_right_max": float(right.max())}


@pytest.mark.parametrize("kind,shape", [("mp_powerlaw", (2048, 1536)), ("flat", (1536, 1536)),
                                        ("decaying", (1536, 2048))])
def test_angles_within_their_bound_of_exact_svd_on_realistic_spectra(kind, shape):
    """Two probes (the second warm-started from the first) of an RL-like update: every reported angle is within the
    reported bound of the exact float64 angle, and the bound meets its target -- or the matrix is flagged."""
    k = 16
    w0 = _spectrum_matrix(kind, *shape)
    cache: dict = {}
    for step in (1, 2):
        wt = _update(w0, step, 3e-3)
        stats, _ = matrix_geometry(w0, wt, k, cache=cache)
        exact = _exact_angles(w0, wt, k)
        if stats["angle_unresolved"]:  # no top-k subspace to measure: no number, a flag
            assert all(math.isnan(stats[key]) for key in exact) and math.isnan(stats["angle_error_bound"])
            continue
        bound = stats["angle_error_bound"]
        for key, value in exact.items():
            assert abs(stats[key] - value) <= bound, (kind, step, key, stats[key], value, bound)
        target = max(1e-5, 0.01 * min(stats["angle_left_mean"], stats["angle_right_mean"]))
        assert stats["angle_bound_unmet"] == float(bound > target)
        if kind != "flat":
            assert bound <= target and stats["passes"] > 0, (kind, step, bound, target)
    if kind != "flat":
        assert cache["svd0"].bound <= 1e-6 and cache["svd0"].certified  # W_0: once, to a tenth of the budget


def test_krylov_subspaces_within_their_bound_and_warm_start_saves_passes():
    """top_svd against exact SVD: the subspace error is within ``bound`` on both sides; a warm start from a nearby
    matrix's basis needs fewer passes than the cold start."""
    w0 = _spectrum_matrix("mp_powerlaw", 2048, 1536, seed=3)
    U, S, Vh = torch.linalg.svd(w0.double(), full_matrices=False)
    cold = top_svd(w0, 16, tol=1e-6)
    assert cold.certified and cold.bound <= 1e-6
    assert float(principal_angles(U[:, :16], cold.U).max()) <= cold.bound
    assert float(principal_angles(Vh[:16].T, cold.V).max()) <= cold.bound
    assert torch.allclose(cold.S, S[:16], rtol=1e-9)
    w1 = _update(w0, 1, 3e-3)
    warm = top_svd(w1, 16, start=cold.basis, tol=1e-6)
    assert warm.passes < cold.passes
    U1, _, V1h = torch.linalg.svd(w1.double(), full_matrices=False)
    assert float(principal_angles(V1h[:16].T, warm.V).max()) <= warm.bound <= 1e-6


@pytest.mark.parametrize("n", [60, 600])  # dense, Krylov
def test_degenerate_gap_is_flagged_unresolved(n):
    """sigma_16 = sigma_17: the top-16 subspace is not defined; the angles are NaN and flagged, not made up."""
    g = torch.Generator().manual_seed(0)
    U = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64)).Q
    V = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64)).Q
    s = torch.linspace(1.0, 0.1, n, dtype=torch.float64)
    s[:20] = torch.tensor([10.0 - 0.3 * i for i in range(16)] + [5.5, 5.5, 5.5, 5.5], dtype=torch.float64)
    s[15] = 5.5  # sigma_16 = sigma_17 = ...
    w0 = (U * s) @ V.T
    stats, _ = matrix_geometry(w0, w0 + 1e-4 * torch.randn(n, n, generator=g, dtype=torch.float64), k=16,
                               exact_below=100, max_passes=12)
    assert stats["angle_unresolved"] == 1 and math.isnan(stats["angle_left_mean"])
    assert math.isnan(stats["angle_error_bound"]) and stats["angle_bound_unmet"] == 0
    assert stats["sv_rel_change_max"] < 1e-3  # the singular values are still measured


def test_squared_norms_accumulate_in_float64():
    """At 8960 x 1536 a float32 accumulation of the squares is off by ~1e-3 relative; the probe's norms are exact to
    float64 rounding (against math.fsum of the float64 squares)."""
    g = torch.Generator().manual_seed(0)
    w = 0.02 * torch.randn(8960, 1536, generator=g) + 0.003
    exact = math.fsum((w.double() ** 2).reshape(-1).tolist())
    assert abs(float(torch.linalg.vector_norm(w)) ** 2 - exact) / exact > 1e-5  # what float32 accumulation gives
    assert sq_norm(w) == pytest.approx(exact, rel=1e-12)
    w0 = torch.zeros(300, 200)
    w0[0, 0] = 1.0
    wt = w0 + 1e-3 * torch.randn(300, 200, generator=g)
    stats, _ = matrix_geometry(w0, wt, k=4)
    d = (wt.double() - w0.double())
    fro2 = math.fsum((d ** 2).reshape(-1).tolist())
    assert stats["dw_rel_norm"] == pytest.approx(math.sqrt(fro2), rel=1e-12)
    s1 = float(torch.linalg.svdvals(d)[0])
    assert stats["dw_rank1_energy"] == pytest.approx(s1 ** 2 / fro2, rel=1e-9)


@pytest.mark.parametrize("shape", [(300, 200), (700, 1100)])  # one block, many blocks (and a partial last one)
def test_difference_of_bf16_weights_is_exact_with_its_float64_norm(shape):
    """dW of bf16 weights, written into a float32 buffer in blocks: every entry exactly wt - w0 (bf16 values are exact
    in float32 and so is their difference here), its squared norm to float64 rounding."""
    g = torch.Generator().manual_seed(1)
    w0 = (0.02 * torch.randn(*shape, generator=g)).to(torch.bfloat16)
    wt = (w0.float() + 1e-3 * torch.randn(*shape, generator=g)).to(torch.bfloat16)
    out = torch.full(shape, float("nan"))
    fro2 = difference(wt, w0, out)
    d = wt.double() - w0.double()
    assert torch.equal(out.double(), d)
    assert fro2 == pytest.approx(math.fsum((d ** 2).reshape(-1).tolist()), rel=1e-13)


def test_bf16_matrices_equal_their_float32_copies_whatever_the_buffers_held_before():
    """A bf16 matrix goes through reused float32 buffers (a wide one transposed): each matrix's numbers equal those
    of its float32 copy to the certified bound, and computing another shape in between changes nothing."""
    mats = {}
    for name, (m, n) in {"wide": (300, 900), "tall": (900, 300)}.items():
        w0 = _spectrum_matrix("mp_powerlaw", max(m, n), min(m, n), seed=5)
        w0 = (w0 if m >= n else w0.T).contiguous()
        mats[name] = (w0.to(torch.bfloat16), _update(w0, 1, 3e-3).to(torch.bfloat16))
    runs = [(name, *mats[name]) for name in ("wide", "tall", "wide")]
    got = [matrix_geometry(w0, wt, k=8)[0] for _, w0, wt in runs]
    assert got[0] == got[2]  # the tall matrix in between left nothing behind
    for (name, w0, wt), stats in zip(runs, got):
        ref, _ = matrix_geometry(w0.float(), wt.float(), k=8)
        for key in ("angle_left_mean", "angle_right_mean", "angle_left_max", "angle_right_max"):
            assert abs(stats[key] - ref[key]) <= stats["angle_error_bound"] + ref["angle_error_bound"], (name, key)
        assert stats["dw_rel_norm"] == pytest.approx(ref["dw_rel_norm"], rel=1e-12)
        assert stats["sv_rel_change_max"] == pytest.approx(ref["sv_rel_change_max"], rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("shape", [(300, 40), (40, 300)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
def test_one_sweep_pass_equals_the_products_in_float64(monkeypatch, shape, dtype):
    """A pass reads the matrix once, block by block (a last partial block too), converting blocks of another dtype:
    A X and A^T A X equal the float64 products of the same (rounded) matrix, tall or wide, with or without A X."""
    from rlscope.topsvd import _Gram

    monkeypatch.setattr(_Gram, "BLOCK_BYTES", 8 * 40 * 24)  # blocks of 24 rows (float64) / 48 (float32): 300 = 6.25
    g = torch.Generator().manual_seed(3)
    w = torch.randn(*shape, generator=g).to(dtype)
    a = w.double().T if shape[0] < shape[1] else w.double()  # A, tall
    x = torch.randn(40, 5, generator=g, dtype=torch.float64)
    op = _Gram(w)
    for double, tol in ((True, 1e-12), (False, 1e-5)):
        ax, hx = op.apply(x, double)
        assert ax.dtype == hx.dtype == torch.float64
        assert torch.allclose(ax, a @ x, rtol=0, atol=tol * float((a.abs() @ x.abs()).max()))
        assert torch.allclose(hx, a.T @ (a @ x), rtol=0, atol=tol * float((a.T.abs() @ (a.abs() @ x.abs())).max()))
        none, hx2 = op.apply(x, double, want_ax=False)
        assert none is None and torch.equal(hx2, hx)
    assert op.passes == 4


def test_probe_on_precomputed_results_equals_probe_computing_them():
    """The live path (per-matrix results computed by the ranks, handed to the probe) and the offline path (the probe
    computes them) give identical numbers, direction cosines included, over two probes."""
    from rlscope.probes.weight_matrix import matrix_results
    from rlscope.probes.weights import WeightView, weight_geometry

    names = ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight"]
    w0 = {names[0]: _spectrum_matrix("mp_powerlaw", 300, 300, 1), names[1]: _spectrum_matrix("decaying", 300, 700, 2)}
    options = dict(k=8, n_dw_sv=4, exact_below=64, abs_tol=1e-5, rel_tol=0.01, max_passes=40)
    offline, live, cache = {}, {}, {}
    for step in (1, 2):
        wt = {n: _update(w, step, 1e-2, seed=11) for n, w in w0.items()}
        a = weight_geometry(WeightView((n, w0[n], wt[n]) for n in names), offline, **options)
        results = list(matrix_results(((n, w0[n], wt[n]) for n in names), cache, **options))
        b = weight_geometry(WeightView(results=results, options=options), live, **options)
        assert scalars_of(a) == scalars_of(b)
        assert a["angle_bound_unmet"] == 0 and a["passes"] > 0
    assert not math.isnan(b["dw_dir_cos_left"])
    with pytest.raises(ValueError, match="computed with"):
        weight_geometry(WeightView(results=results, options={**options, "k": 4}), {}, **options)


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


# -- snapshot, callback, offline command, rank-1 ----------------------------------------------------------------
import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_snapshot_in_memory_spills_to_disk_and_reloads(tmp_path):
    from rlscope.weight_geometry import Snapshot

    mats = {f"m{i}": torch.randn(8, 5) for i in range(3)}
    mem = Snapshot.take(mats.items(), tmp_path / "a")
    assert not mem.on_disk and set(mem.mem) == set(mats)
    disk = Snapshot.take(mats.items(), tmp_path / "b", max_memory_bytes=100)  # over budget: read back from disk
    assert disk.on_disk and not disk.mem
    again = Snapshot.load(tmp_path / "b")
    for name, t in mats.items():
        assert torch.equal(disk[name], t) and torch.equal(again[name], t)
    with pytest.raises(MemoryError, match="no snapshot directory"):
        Snapshot.take(mats.items(), None, max_memory_bytes=100)


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "rlscope.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, OMP_NUM_THREADS="2"))


def test_live_probe_equals_offline_command_on_the_checkpoints(tmp_path, tiny_sft_path):
    from helpers import run_recipe
    from rlscope.store import RunReader

    summary = run_recipe(tmp_path, "tiny_dapo.yaml", "--max_steps", "4", "--run_name", "wg",
                         "--probe_every", '{"weights": 2}',
                         "--save_strategy", "steps", "--save_steps", "2", "--save_total_limit", "3",
                         "--eval_heldout", "false", "--learning_rate", "1e-4")
    run = Path(summary["run_dir"])
    r = RunReader(run)
    steps, angles = r.series("rlscope/weights/angle_left_mean")
    assert steps == [2, 4] and all(a > 0 for a in angles)
    assert r.series("rlscope/weights/kind/down/dw_rank1_energy")[0] == [2, 4]
    assert r.series("rlscope/weights/layer/3/angle_right_mean")[0] == [2, 4]
    per = r.records("weights")
    assert len(per) == 2 * 28 and {p["matrix"].split(".")[-2] for p in per} == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert (run / "weights" / "w0" / "index.json").exists()
    p = _cli("weights", str(tiny_sft_path), str(run / "checkpoints" / "checkpoint-2"),
             str(run / "checkpoints" / "checkpoint-4"), "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    offline = json.loads(p.stdout.strip().splitlines()[-1])
    for step, row in zip((2, 4), offline):
        for key in ("angle_left_mean", "angle_right_max", "sv_rel_change_mean", "dw_rank1_energy", "dw_stable_rank",
                    "dw_sigma1", "dw_rel_norm"):
            live = r.series(f"rlscope/weights/{key}")[1][steps.index(step)]
            assert row[key] == pytest.approx(live, rel=1e-6, abs=1e-9), (step, key)
    live_cos = r.series("rlscope/weights/dw_dir_cos_left")[1]
    assert math.isnan(offline[0]["dw_dir_cos_left"]) and offline[1]["dw_dir_cos_left"] == pytest.approx(live_cos[1])
    p = _cli("weights", str(tiny_sft_path), str(run / "checkpoints" / "checkpoint-4"))  # the text line: with its bound
    assert p.returncode == 0, p.stderr[-3000:]
    text = p.stdout.splitlines()[0]
    assert f"within {offline[1]['angle_error_bound']:.1e} rad of the exact one" in text, text

    # AlphaRL's rank-1 recovery, on the same run
    p = _cli("weights", "rank1", str(tiny_sft_path), str(run / "models" / "final"), "--task", "chainsum",
             "--samples", "2", "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert set(res) >= {"base", "final", "selected", "rank1", "share_greedy", "share_sampled"}
    assert res["matrices"] == 28 and 0 <= res["rank1"]["greedy"] <= 1


def test_plain_trainer_example_logs_weight_geometry(tmp_path, tiny_path):
    from rlscope.store import RunReader

    out = tmp_path / "plain"
    cmd = [sys.executable, str(ROOT / "callbacks" / "weights_plain_trainer.py"), "--output_dir", str(out),
           "--model", str(tiny_path), "--max_steps", "4", "--every", "2"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert RunReader(out).series("rlscope/weights/angle_left_mean")[0] == [2, 4]


def test_resumed_run_keeps_its_stored_w0(tmp_path, tiny_path):
    """A resumed run finds W_0 in its run directory and uses it instead of snapshotting the (already trained) model."""
    from transformers import AutoModelForCausalLM

    from rlscope.callbacks import Observatory
    from rlscope.probes.weight_matrix import select_matrices
    from rlscope.weight_geometry import Snapshot

    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    names = select_matrices([n for n, _ in model.named_parameters()])
    params = dict(model.named_parameters())
    stored = {n: torch.zeros_like(params[n]) + 0.5 for n in names}  # stands in for the pre-training weights
    Snapshot.take(stored.items(), tmp_path / "w0")
    obs = Observatory({"weights": {"every": 1, "snapshot_dir": tmp_path / "w0"}})
    last = obs.measure(model, step=7)  # sets the source up (finding the stored W_0), then probes the model
    assert torch.equal(obs.sources["weights"].snapshot[names[0]], stored[names[0]])
    assert last["rlscope/weights/dw_rel_norm"] > 0  # measured against the stored reference, not the model itself


def test_a_resumed_run_starts_warm_and_gives_the_numbers_of_an_uninterrupted_one(tmp_path):
    """W_0's triplets and the warm starts are kept in the run directory: a run resumed after its probe at step 2
    (a fresh observatory on the same run directory) computes step 3 from the same starts as the uninterrupted run --
    the same numbers, the same passes -- where one that lost them starts cold and takes more passes."""
    import shutil

    from rlscope.callbacks import Observatory

    model = _toy_model()
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}

    def run(run_dir, steps):
        obs = Observatory({"weights": {"every": 1, "k": 8, "exact_below": 100}}, run_dir=run_dir)
        for step in steps:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    p.copy_(w0[n] if step == 0 else _update(w0[n], step, 1e-2, seed=len(n)))
            obs.measure(model, step=step, when="start" if step == 0 else "step")
        return {r["matrix"]: r for r in obs.latest["weights"][1]["per_matrix"].rows}

    def comparable(rows):  # the direction cosines need the previous probe's directions (the probe's own state)
        return {m: {k: v for k, v in r.items() if not k.startswith("dw_dir_cos")} for m, r in rows.items()}

    whole = run(tmp_path / "a", [0, 1, 2, 3])
    run(tmp_path / "b", [0, 1, 2])
    assert sorted(p.name.split(".")[0] for p in (tmp_path / "b" / "weights" / "warm").glob("step*")) == [
        "step00000000", "step00000001", "step00000002"]
    resumed = run(tmp_path / "b", [3])
    assert comparable(resumed) == comparable(whole)
    run(tmp_path / "c", [0, 1, 2])
    shutil.rmtree(tmp_path / "c" / "weights" / "warm")
    cold = run(tmp_path / "c", [3])
    assert sum(r["passes"] for r in cold.values()) > sum(r["passes"] for r in whole.values())
    for m, r in cold.items():  # cold, and as accurate: within the bounds of the warm numbers
        assert abs(r["angle_left_mean"] - whole[m]["angle_left_mean"]) <= (
            r["angle_error_bound"] + whole[m]["angle_error_bound"])


# -- the matrices split across two real processes --------------------------------------------------------------------

_TOY = {"self_attn.q_proj": (320, 320), "self_attn.k_proj": (64, 320), "mlp.gate_proj": (640, 320),
        "mlp.down_proj": (320, 640)}


def _toy_model():
    """Two layers of q, k, gate, down with realistic spectra (k dense, the others Krylov at exact_below=100)."""
    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList()
    for layer in range(2):
        block = torch.nn.Module()
        block.self_attn, block.mlp = torch.nn.Module(), torch.nn.Module()
        for i, (path, (m, n)) in enumerate(_TOY.items()):
            parent, name = path.split(".")
            lin = torch.nn.Linear(n, m, bias=False)
            lin.weight.data = _spectrum_matrix("mp_powerlaw", m, n, seed=10 * layer + i)
            setattr(getattr(block, parent), name, lin)
        model.layers.append(block)
    return model


def _split_worker(rank: int, world: int, port: int, out: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)  # the same arithmetic in every process
    import torch.distributed as dist

    from rlscope.callbacks import Observatory

    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = _toy_model()
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    obs = Observatory({"weights": {"every": 1, "k": 8, "exact_below": 100}})
    obs.measure(model, step=0, when="start")  # takes W_0 (each rank its share), probes dW = 0
    for step in (1, 2):
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(_update(w0[n], step, 1e-2, seed=len(n)))
        obs.measure(model, step=step)
    source = obs.sources["weights"]
    share = {"rank": rank, "mine": source.mine, "cached": sorted(source.cache)}
    (Path(out) / f"share{world}_{rank}.json").write_text(json.dumps(share))
    if rank == 0:  # NaN as None (JSON), times left out
        rows = {str(step): {k: None if math.isnan(v) else v for k, v in scalars.items() if not k.endswith("seconds")}
                for step, _, scalars in obs.history}
        per = [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()}
               for r in obs.latest["weights"][1]["per_matrix"].rows]
        (Path(out) / f"world{world}.json").write_text(json.dumps({"history": rows, "per_matrix": per}))
    dist.barrier()
    dist.destroy_process_group()


def test_two_processes_split_the_matrices_and_give_the_numbers_of_one(tmp_path):
    """The weights source under 2 real processes (gloo): each rank computes (and keeps W_0 and the warm starts of)
    its share of the matrices only, and the gathered numbers equal those of 1 process, over three probes."""
    import torch.multiprocessing as mp

    from helpers import _free_port

    for world in (2, 1):
        mp.spawn(_split_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=True)
    one, two = (json.loads((tmp_path / f"world{w}.json").read_text()) for w in (1, 2))
    shares = [json.loads((tmp_path / f"share2_{r}.json").read_text()) for r in range(2)]
    names = set(shares[0]["mine"]) | set(shares[1]["mine"])
    assert len(names) == 8 and not set(shares[0]["mine"]) & set(shares[1]["mine"]) and all(s["mine"] for s in shares)
    assert all(set(s["cached"]) == set(s["mine"]) for s in shares)  # each rank keeps its own matrices' state
    assert one == two
    last = one["history"]["2"]
    assert last["rlscope/weights/n_matrices"] == 8 and last["rlscope/weights/angle_bound_unmet"] == 0
    assert last["rlscope/weights/angle_left_mean"] > 0 and last["rlscope/weights/passes"] > 0
    assert 0 < last["rlscope/weights/dw_dir_cos_left"] <= 1
