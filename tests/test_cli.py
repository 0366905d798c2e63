"""The console script: parsing, the demo path with small overrides, the step benchmark's JSON line."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT


def rlscope(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "rlscope.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_unknown_flag_for_bench_is_rejected():
    p = rlscope("bench", "step", "--nope")
    assert p.returncode != 0 and "unrecognized arguments: --nope" in p.stderr


def test_unknown_recipe_override_is_named(tmp_path):
    p = rlscope("train", "--config", "recipes/tiny_dapo.yaml", "--learning_rat", "1e-5")
    assert p.returncode != 0 and "--learning_rat" in p.stderr


@pytest.mark.slow
def test_demo_command_end_to_end_small(tmp_path):
    p = rlscope("demo", "--runs-dir", str(tmp_path), "--run-name", "d", "--sft_steps", "20", "--sft_batch_size", "16",
                "--max_steps", "2", "--report_to", "none", "--per_device_train_batch_size", "16",
                "--max_completion_length", "32", "--overlong_buffer_len", "8", "--dynamic_sampling", "false",
                "--task_config", '{"seed": 0, "n_heldout": 24}', "--eval_samples", "2", "--probe_every",
                '{"passk": 1}', "--probe_options", '{"passk": {"n": 4, "max_prompts": 6}}')
    assert p.returncode == 0, p.stderr[-4000:]
    assert "held-out greedy pass@1, SFT checkpoint (before RL)" in p.stdout
    assert "pass@k on 6 held-out prompts x 4 samples" in p.stdout
    assert f"run directory: {tmp_path}/d" in p.stdout
    from rlscope.store import RunReader

    recs = RunReader(tmp_path / "d").records("passk")
    assert [(r["step"], r["kind"]) for r in recs] == [(20, "base"), (21, "current"), (22, "current")]


@pytest.mark.slow
def test_bench_step_prints_json_last(tiny_sft_path):
    p = rlscope("bench", "step", "--json", "--steps", "2", "--warmup", "1")
    assert p.returncode == 0, p.stderr[-4000:]
    result = json.loads(p.stdout.strip().splitlines()[-1])
    assert result["bench"] == "step" and result["steps_timed"] == 2 and result["steps_per_second"] > 0


def test_bench_overhead_prints_json_last(tiny_sft_path):
    p = rlscope("bench", "overhead", "--json", "--steps", "1", "--warmup", "1", "--repeats", "1")
    assert p.returncode == 0, p.stderr[-3000:]
    result = json.loads(p.stdout.strip().splitlines()[-1])
    assert result["bench"] == "overhead" and len(result["bare_seconds_per_step"]) == 1
    assert result["ratio"] == pytest.approx(result["median_rlscope"] / result["median_bare"], rel=1e-2)


def test_bench_weights_prints_json_last():
    p = rlscope("bench", "weights", "--json", "--svd-n", "1536", "--layers", "1")
    assert p.returncode == 0, p.stderr[-3000:]
    result = json.loads(p.stdout.strip().splitlines()[-1])
    assert result["bench"] == "weights" and result["matrices"] == 7 and result["speed_ratio"] > 1
    assert result["probe_angle_error_rad"] < 1e-3


def test_bench_passk_prints_json_last(tiny_sft_path):
    p = rlscope("bench", "passk", "--json", "--prompts", "4", "-n", "2", "--repeats", "1")
    assert p.returncode == 0, p.stderr[-3000:]
    result = json.loads(p.stdout.strip().splitlines()[-1])
    assert result["bench"] == "passk" and result["prompts"] == 4 and result["ratio"] > 0
