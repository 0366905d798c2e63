"""On a GPU (skipped without CUDA; ``make gpu-check`` runs them): the tiny recipe in bf16 with every probe family,
the weights probe on the device against the CPU computation on real-shape matrices, pass@k counts on the device
independent of the batching."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.gpu

ROOT_RECIPE = "recipes/tiny_dapo.yaml"


def test_tiny_recipe_in_bf16_on_cuda_with_every_probe_family(tmp_path):
    from conftest import ROOT

    cmd = [sys.executable, "-m", "rlscope.train", "--config", str(ROOT / ROOT_RECIPE), "--model_name_or_path", "tiny",
           "--use_cpu", "false", "--bf16", "true", "--max_steps", "4", "--runs_dir", str(tmp_path),
           "--run_name", "gpu", "--save_strategy", "no", "--report_to", "none", "--analyze", "false",
           "--probe_every", '{"grad": 1, "weights": 2}', "--probe_options", '{"passk": {"n": 4, "max_prompts": 16}}',
           "--probes", "entropy", "cov", "behavior", "grad", "weights", "passk"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "gpu" / "metrics.jsonl").read_text().splitlines()]
    names = {r["name"] for r in rows}
    for family in ("entropy", "cov", "behavior", "grad", "weights", "passk"):
        assert any(n.startswith(f"rlscope/{family}/") for n in names), family
    bound = [r["value"] for r in rows if r["name"] == "rlscope/weights/angle_error_bound"]
    assert bound and all(math.isfinite(v) for v in bound)


@pytest.mark.parametrize("quant", ["lora", "qlora"])
def test_lora_recipe_in_bf16_on_cuda(tmp_path, quant):
    """The LoRA recipe on the GPU in bf16, and QLoRA (a 4-bit base; needs bitsandbytes): every probe family runs on
    the adapters."""
    from conftest import ROOT

    pytest.importorskip("peft")
    if quant == "qlora":
        pytest.importorskip("bitsandbytes")
    cmd = [sys.executable, "-m", "rlscope.train", "--config", str(ROOT / "recipes/tiny_dapo_lora.yaml"),
           "--model_name_or_path", "tiny", "--use_cpu", "false", "--bf16", "true", "--max_steps", "4",
           "--runs_dir", str(tmp_path), "--run_name", quant, "--save_strategy", "no", "--report_to", "none",
           "--analyze", "false", "--probe_every", '{"grad": 1, "weights": 2, "passk": "start+end"}',
           "--probe_options", '{"passk": {"n": 4, "max_prompts": 16}}', *(["--load_in_4bit", "true"]
                                                                            if quant == "qlora" else [])]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / quant / "metrics.jsonl").read_text().splitlines()]
    last = {r["name"]: r["value"] for r in rows}
    assert last["rlscope/weights/n_adapted"] == 12 and last["rlscope/grad/n_params"] == 24
    assert last["rlscope/weights/dw_sigma1"] > 0 and "rlscope/passk/pass@4" in last


@pytest.mark.parametrize("shape", [(8960, 1536), (1536, 8960), (256, 1536)])
def test_weights_probe_on_cuda_equals_the_cpu_computation_within_the_bound(shape):
    from rlscope.bench import _model_w0, _rl_update
    from rlscope.probes.weight_matrix import matrix_geometry

    w0 = _model_w0("model.layers.0.mlp.up_proj.weight", shape, seed=1)
    cpu_cache, gpu_cache = {}, {}
    for step in (1, 2):
        wt = _rl_update(w0, step, 4e-3, 9).to(torch.bfloat16)
        cpu, _ = matrix_geometry(w0, wt, 16, cache=cpu_cache)
        gpu, _ = matrix_geometry(w0.cuda(), wt.cuda(), 16, cache=gpu_cache)
        tol = cpu["angle_error_bound"] + gpu["angle_error_bound"]
        for key in ("angle_left_mean", "angle_left_max", "angle_right_mean", "angle_right_max"):
            assert abs(cpu[key] - gpu[key]) <= tol, (key, cpu[key], gpu[key], tol)
        for i in range(1, 5):  # dW: both within their bounds of the same exact value: the intervals overlap
            lo = max(cpu[f"dw_sigma{i}"], gpu[f"dw_sigma{i}"])
            hi = min(cpu[f"dw_sigma{i}"] * (1 + cpu["dw_sigma_bound"]), gpu[f"dw_sigma{i}"] * (1 + gpu["dw_sigma_bound"]))
            assert lo <= hi * (1 + 1e-9)
        assert gpu["angle_bound_unmet"] == 0 and gpu["dw_bound_unmet"] == 0
        assert gpu_cache["basis_t"].is_cuda  # warm starts live on the device


def test_resident_w0_streams_from_pinned_memory_with_the_same_numbers():
    from rlscope.bench import _model_w0, _rl_update
    from rlscope.probes.weight_matrix import matrix_results
    from rlscope.weight_geometry import ResidentW0, Snapshot

    names = [f"model.layers.{i}.mlp.up_proj.weight" for i in range(3)]
    snap = Snapshot.take((n, _model_w0(n, (1536, 512), seed=i)) for i, n in enumerate(names))
    wts = {n: _rl_update(snap[n], 1, 4e-3, 9).to(torch.bfloat16).cuda() for n in names}
    runs = []
    for budget in (0, 2 ** 30):  # all streamed from pinned memory / all resident
        res = ResidentW0(snap, names, "cuda", budget=budget)
        assert bool(res.resident) == (budget > 0) and all(res.host[n].is_pinned() for n in res.host)
        runs.append([r.stats for r in matrix_results(((n, w0, wts[n]) for n, w0 in res.stream(names)), {})])
    assert runs[0] == runs[1]


def test_passk_counts_on_cuda_are_equal_between_two_batchings(tiny_sft_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlscope.passk_eval import evaluate_passk
    from rlscope.tasks import get_task

    model = AutoModelForCausalLM.from_pretrained(str(tiny_sft_path)).cuda()
    tok = AutoTokenizer.from_pretrained(str(tiny_sft_path))
    task = get_task("chainsum", seed=0)
    a = evaluate_passk(model, tok, task, n=8, max_prompts=24, batch_prompts=24)
    b = evaluate_passk(model, tok, task, n=8, max_prompts=24, batch_prompts=5)
    assert a.counts == b.counts
