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
    from rlscope.probes.weights import select_matrices
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
