"""The ``grad`` probe: against loops on planted per-parameter numbers, and on real tiny runs against a brute force that
reads full tensors (tests/grad_reference.py) -- one process, 2-process DDP, DeepSpeed ZeRO-2 and ZeRO-3 -- and against
the trainer's own gradient norm."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from conftest import RECIPES, ROOT
from rlscope.probes.grad import GradView, grad_stats

NAMES = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj.bias",
         "model.layers.0.mlp.down_proj.weight", "model.layers.1.self_attn.q_proj.weight",
         "model.layers.1.input_layernorm.weight", "model.norm.weight"]


def test_grad_stats_equal_loops_over_planted_numbers():
    g = torch.Generator().manual_seed(0)
    grad, upd, w = (torch.rand(len(NAMES), generator=g, dtype=torch.float64) * s for s in (4.0, 1e-4, 10.0))
    out = grad_stats(GradView(NAMES, grad, upd, w), {})
    groups = {"": NAMES, "kind/q/": NAMES[1:3] + NAMES[4:5], "kind/down/": NAMES[3:4],
              "kind/embed_tokens/": NAMES[:1], "kind/input_layernorm/": NAMES[5:6], "kind/norm/": NAMES[6:7],
              "layer/0/": NAMES[1:4], "layer/1/": NAMES[4:6]}
    for prefix, members in groups.items():
        idx = [NAMES.index(n) for n in members]
        assert out[f"{prefix}norm"] == pytest.approx(math.sqrt(sum(float(grad[i]) for i in idx)), rel=1e-12)
        ratio = math.sqrt(sum(float(upd[i]) for i in idx) / sum(float(w[i]) for i in idx))
        assert out[f"{prefix}update_ratio"] == pytest.approx(ratio, rel=1e-12)
    assert {k for k in out if k.startswith(("kind/", "layer/"))} == {f"{p}{s}" for p in groups if p
                                                                        for s in ("norm", "update_ratio")}
    assert out["update_ratio_max"] == pytest.approx(max(math.sqrt(u / v) for u, v in zip(upd, w)), rel=1e-12)
    assert out["n_params"] == len(NAMES) and out["nonfinite_share"] == 0


def test_a_nonfinite_gradient_is_flagged_not_hidden():
    grad = torch.ones(len(NAMES), dtype=torch.float64)
    grad[1] = float("nan")
    out = grad_stats(GradView(NAMES, grad, torch.ones(len(NAMES)), torch.ones(len(NAMES))), {})
    assert out["nonfinite_share"] == pytest.approx(1 / len(NAMES))
    assert math.isnan(out["norm"]) and math.isnan(out["kind/q/norm"]) and math.isnan(out["layer/0/norm"])
    assert out["layer/1/norm"] == pytest.approx(math.sqrt(2)) and out["update_ratio"] == 1.0
    zero = grad_stats(GradView(NAMES, torch.zeros(7), torch.zeros(7), torch.zeros(7)), {})
    assert zero["norm"] == 0 and math.isnan(zero["update_ratio"])  # no weights: no ratio, not a made-up number


def _compare(result: dict) -> None:
    engine, reference = result["engine"], result["reference"]
    assert [r["step"] for r in engine] == [r["step"] for r in reference] == [1, 2, 3]
    for e, r in zip(engine, reference):
        for key, want in r.items():
            if key != "step":
                assert e[key] == pytest.approx(want, rel=1e-9, abs=1e-15), (r["step"], key)
    # the trainer's own norm (torch's clip_grad_norm_, or DeepSpeed's) before clipping at 0.05: the probe reads the
    # gradient before the clip, not after it
    assert [e["norm"] for e in engine] == pytest.approx(result["grad_norm"], rel=1e-5)
    assert min(result["grad_norm"]) > 0.05


def test_one_process_equals_the_brute_force(tmp_path, tiny_path):
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "grad_reference.py"), str(tmp_path), str(tiny_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((tmp_path / "grad.json").read_text())
    assert result["world_size"] == 1
    _compare(result)


def test_lora_adapters_equal_the_brute_force(tmp_path, tiny_path):
    """A LoRA model: the probe measures the adapters' A and B (the trainable parameters), grouped by the layer and
    the kind of the matrix they adapt."""
    pytest.importorskip("peft")
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "grad_reference.py"), str(tmp_path), str(tiny_path),
                           "lora"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((tmp_path / "grad.json").read_text())
    assert len(result["trainable"]) == 24 and all(".lora_A." in n or ".lora_B." in n for n in result["trainable"])
    assert all(e["n_params"] == 24 for e in result["engine"])
    assert all("kind/q/norm" in e and "kind/k/norm" not in e for e in result["engine"])
    _compare(result)


@pytest.mark.slow
@pytest.mark.parametrize("config", ["ddp2", "zero2", "zero3"])
def test_two_processes_equal_the_brute_force(tmp_path, tiny_path, config):
    """DDP: replicated gradients, each rank squares every second parameter; ZeRO-2: each rank squares its fragment of
    the optimizer partition; ZeRO-3: each rank its shard. One all-reduce adds them up."""
    from helpers import _free_port

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(RECIPES / "accelerate" /
           f"{config}.yaml"), "--main_process_port", str(_free_port()), str(ROOT / "tests" / "grad_reference.py"),
           str(tmp_path), str(tiny_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-6000:]
    result = json.loads((tmp_path / "grad.json").read_text())
    assert result["world_size"] == 2 and result["deepspeed"] is config.startswith("zero")
    _compare(result)


def test_grpo_recipe_logs_the_trainers_gradient_norm(tmp_path, tiny_sft_path):
    """On rlscope's DAPO recipe (TRL's GRPOTrainer), with clipping active, the probe's norm is TRL's grad_norm."""
    from helpers import run_recipe
    from rlscope.store import RunReader

    s = run_recipe(tmp_path, "tiny_dapo.yaml", "--max_steps", "2", "--run_name", "g", "--eval_heldout", "false",
                   "--probe_every", '{"grad": 1}', "--max_grad_norm", "0.01")
    r = RunReader(s["run_dir"])
    steps, norms = r.series("rlscope/grad/norm")
    assert steps == [1, 2] and norms == pytest.approx(r.series("grad_norm")[1], rel=1e-5)
    assert all(n > 0.01 for n in norms)
    for name in ("rlscope/grad/update_ratio", "rlscope/grad/kind/q/norm", "rlscope/grad/layer/3/update_ratio"):
        assert r.series(name)[0] == [1, 2] and all(v > 0 for v in r.series(name)[1]), name


def test_the_nonfinite_guard_counts_exactly_what_its_fused_check_lets_through():
    """The guard's fast path (one fused global norm) must neither miss a NaN/inf nor flag finite gradients whose
    norm overflows float32; the count is per parameter; skip_step drops the gradients."""
    from types import SimpleNamespace

    from transformers import TrainerControl

    from rlscope.callbacks.guard import NonFiniteGuard

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    state = SimpleNamespace(global_step=0, is_world_process_zero=True)

    def check(mode, fill):
        guard = NonFiniteGuard(mode)
        for i, p in enumerate(model.parameters()):
            p.grad = fill(i, p)
        guard.on_pre_optimizer_step(None, state, TrainerControl(), model=model)
        return guard

    assert check("flag", lambda i, p: torch.ones_like(p)).total == 0
    huge = check("flag", lambda i, p: torch.full_like(p, 1e30))  # finite, but the squares overflow
    assert huge.total == 0 and huge.params == 0

    def two_bad(i, p):
        g = torch.ones_like(p)
        if i in (1, 3):
            g.view(-1)[0] = float("nan") if i == 1 else float("inf")
        return g

    flagged = check("flag", two_bad)
    assert flagged.total == 1 and flagged.params == 2
    assert all(p.grad is not None for p in model.parameters())
    check("skip_step", two_bad)
    assert all(p.grad is None for p in model.parameters())
