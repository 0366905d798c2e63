"""pass@k estimator: exact against math.comb for every n <= 64, c, k; errors; crossover."""

from __future__ import annotations

from fractions import Fraction
from math import comb

import numpy as np
import pytest

from rlscope.probes.passk import crossover_k, pass_at_k, pass_at_k_curve


def test_estimator_equals_exact_combinatorial_value_for_all_n_up_to_64():
    worst = 0.0
    for n in range(1, 65):
        counts = np.arange(0, n + 1)
        got = pass_at_k(n, counts)  # (n+1, n): every c, every k
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - Fraction(comb(n - c, k), comb(n, k))
                worst = max(worst, abs(got[c, k - 1] - float(exact)))
    assert worst < 1e-12


def test_curve_is_mean_over_prompts_and_monotone():
    counts = [0, 3, 16, 1]
    curve, per = pass_at_k_curve(16, counts)
    assert per.shape == (4, 16)
    assert curve == pytest.approx(per.mean(axis=0))
    assert curve[0] == pytest.approx(np.mean(counts) / 16)  # pass@1 = mean accuracy
    assert curve[-1] == pytest.approx(3 / 4)  # pass@n = share of prompts with any correct sample
    assert np.all(np.diff(curve) >= -1e-15)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="k=17 must be between 1 and n=16"):
        pass_at_k(16, [3], ks=[17])
    with pytest.raises(ValueError, match="c=9 is outside 0..n"):
        pass_at_k(8, [9])
    with pytest.raises(ValueError, match="n .* must be >= 1"):
        pass_at_k(0, [0])


def test_crossover():
    assert crossover_k([0.1, 0.3, 0.6, 0.9], [0.2, 0.4, 0.6, 0.7]) == 3
    assert crossover_k([0.1, 0.2], [0.3, 0.4]) is None
    assert crossover_k([0.5, 0.6], [0.4, 0.7]) == 1


# -- the evaluation, the callback, the command --------------------------------------------------------------------
import json
import os
import subprocess
import sys

from conftest import ROOT


def _passk_cli(*args, launcher=(), timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run([*launcher, "-m", "rlscope.cli", "passk", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_two_processes_give_the_same_curve_as_one(tiny_sft_path):
    from helpers import _free_port

    args = ("--model", str(tiny_sft_path), "--task", "chainsum", "-n", "6", "--max-prompts", "10", "--json")
    one = _passk_cli(*args, launcher=(sys.executable,))
    assert one.returncode == 0, one.stderr[-3000:]
    two = _passk_cli(*args, launcher=(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                      "--master_port", str(_free_port())))
    assert two.returncode == 0, two.stderr[-3000:]
    r1 = json.loads(one.stdout.strip().splitlines()[-1])
    r2 = json.loads(two.stdout.strip().splitlines()[-1])
    assert r1["world_size"] == 1 and r2["world_size"] == 2
    assert r1["counts"] == r2["counts"] and r1["curve"] == r2["curve"]
    assert 0 <= r1["pass@1"] <= r1["pass@6"] <= 1


def test_evaluation_leaves_the_callers_rng_alone(tiny_sft_path):
    import torch

    from rlscope.passk_eval import evaluate_passk
    from rlscope.tasks import get_task
    from rlscope.tinymodel import load_policy

    model, tok = load_policy(str(tiny_sft_path))
    task = get_task("chainsum", seed=0)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = evaluate_passk(model, tok, task, n=3, max_prompts=4)
    assert torch.equal(torch.rand(3), expected)
    b = evaluate_passk(model, tok, task, n=3, max_prompts=4)
    assert a.counts == b.counts  # seeded per prompt


def test_resumed_run_keeps_its_stored_base_curve(tmp_path):
    from rlscope.callbacks import Observatory
    from rlscope.probes.passk import restore_base
    from rlscope.store import RunReader, RunWriter

    w = RunWriter(tmp_path)
    w.log_records("passk", 0, [{"kind": "base", "n": 4, "curve": [0.1, 0.2, 0.3, 0.4], "counts": [1, 0],
                                "seconds": 1.0}])
    w.log_records("passk", 10, [{"kind": "current", "n": 4, "curve": [0.5, 0.5, 0.5, 0.5], "counts": [2, 2],
                                 "seconds": 1.0}])
    w.close()
    state: dict = {}
    restore_base(RunReader(tmp_path), state)
    base = state["bases"][4]
    assert base["curve"] == [0.1, 0.2, 0.3, 0.4] and base["counts"] == [1, 0]
    assert 8 not in state["bases"]  # another n: measure again
    with pytest.raises(ValueError, match="k=32 must be between 1 and n=16"):
        Observatory({"passk": {"task": "chainsum", "n": 16, "ks": [1, 32]}})


def test_sft_example_gets_base_and_curves(tmp_path, tiny_path):
    from rlscope.store import RunReader

    out = tmp_path / "sft"
    proc = subprocess.run([sys.executable, str(ROOT / "callbacks" / "passk_sft.py"), "--output_dir", str(out),
                           "--model", str(tiny_path), "--max_steps", "4", "--every", "2", "-n", "4", "--prompts", "6"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    recs = RunReader(out).records("passk")
    assert [(r["step"], r["kind"]) for r in recs] == [(0, "base"), (2, "current"), (4, "current")]
    assert all(len(r["curve"]) == 4 and len(r["counts"]) == 6 for r in recs)
    names = {(r["name"], r["step"]) for r in RunReader(out).records("metrics")}
    assert ("rlscope/passk/pass@1", 4) in names and ("rlscope/passk/crossover_found", 4) in names
    assert ("rlscope/passk/base_pass@4", 0) in names
