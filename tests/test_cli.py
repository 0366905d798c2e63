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
    # pass@k base vs after at k = 1, 2, 4 (n = 4), then the end-of-run analysis: every verdict and the report's path
    table = p.stdout.split("crossover k (base >= RL):", 1)[1].splitlines()[1:4]
    assert table[0].split() == ["k", "1", "2", "4"] and [r.split()[0] for r in table[1:]] == ["base", "after"]
    assert "what the analysis found" in p.stdout
    analysis = json.loads((tmp_path / "d" / "analysis" / "analysis.json").read_text())
    for name, result in analysis["analyses"].items():
        assert f"  {name + ':':<18} {result['verdict']}" in p.stdout
    assert f"report (open in a browser): {tmp_path}/d/analysis/report.html" in p.stdout
    assert (tmp_path / "d" / "analysis" / "report.html").stat().st_size > 10_000
    from rlscope.store import RunReader

    recs = RunReader(tmp_path / "d").records("passk")
    assert [(r["step"], r["kind"]) for r in recs] == [(20, "base"), (21, "current"), (22, "current")]


@pytest.mark.slow
def test_bench_step_prints_json_last(tiny_sft_path):
    p = rlscope("bench", "step", "--json", "--steps", "2", "--warmup", "1")
    assert p.returncode == 0, p.stderr[-4000:]
    result = json.loads(p.stdout.strip().splitlines()[-1])
    assert result["bench"] == "step" and result["steps_timed"] == 2 and result["steps_per_second"] > 0
    assert "{'loss'" not in p.stdout  # the trainer's metric dicts stay off the console


def test_bench_overhead_prints_json_last(tiny_sft_path):
    p = rlscope("bench", "overhead", "--json", "--steps", "1", "--warmup", "1", "--repeats", "1")
    assert p.returncode == 0, p.stderr[-3000:]
    result = json.loads(p.stdout.strip().splitlines()[-1])
    assert result["bench"] == "overhead" and len(result["bare_seconds_per_step"]) == 1
    pair = result["rlscope_seconds_per_step"][0] / result["bare_seconds_per_step"][0]
    assert result["ratio"] == result["ratio_of_medians"] == pytest.approx(pair, rel=1e-2)  # one repeat: one pair
    assert result["paired_ratios"] == [result["ratio"]]
    assert 0 < result["own_code_share"][0] < 1 and result["own_code_ratio"] > 1  # rlscope's callbacks took time


def test_bench_weights_prints_json_last():
    p = rlscope("bench", "weights", "--json", "--svd-n", "1536", "--layers", "1")
    assert p.returncode == 0, p.stderr[-3000:]
    result = json.loads(p.stdout.strip().splitlines()[-1])
    assert result["bench"] == "weights" and result["matrices"] == 7 and result["speed_ratio"] > 1
    assert result["probe_angle_error_rad"] < 1e-3


def test_bench_lora_prints_json_last():
    p = rlscope("bench", "lora", "--json", "--layers", "1", "--rank", "4")
    assert p.returncode == 0, p.stderr[-3000:]
    result = json.loads(p.stdout.strip().splitlines()[-1])
    assert result["bench"] == "lora" and result["matrices"] == 7 and result["bounds_hold"]
    assert result["dw_sigma_rel_error"] < 1e-10 and result["ratio"] > 0


def test_bench_passk_prints_json_last(tiny_sft_path):
    p = rlscope("bench", "passk", "--json", "--prompts", "4", "-n", "2", "--repeats", "1")
    assert p.returncode == 0, p.stderr[-3000:]
    result = json.loads(p.stdout.strip().splitlines()[-1])
    assert result["bench"] == "passk" and result["prompts"] == 4 and result["ratio"] > 0


# -- rlscope analyze --------------------------------------------------------------------------------------------------
REQUIRED = {"two_stage": ("found", "pattern", "break_step"), "aha": ("step",),
            "entropy_law": ("a", "b", "r2", "ceiling", "forecast_rmse"), "ceiling": ("asymptote",),
            "boundary": ("crossover_k",)}


def test_analyze_json_on_a_synthetic_run_finds_what_was_planted(tmp_path):
    from rlscope.analysis.synthetic import write_synthetic_run

    run = write_synthetic_run(tmp_path / "syn", steps=1500, metrics=30, rollout_every=10, completions=16,
                              probe_every=100)
    p = rlscope("analyze", str(run), "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    result = json.loads(p.stdout.strip().splitlines()[-1])
    assert result["format"] == "rlscope" and result["steps"] == 1501  # steps 1..1500 and the pass@k base at 0
    for name, keys in REQUIRED.items():
        for key in keys:
            assert key in result["analyses"][name], (name, key)
    a = result["analyses"]
    assert a["two_stage"]["found"] and abs(a["two_stage"]["break_step"] - 600) <= 30
    assert a["aha"]["found"] and abs(a["aha"]["step"] - 900) <= 30
    assert a["boundary"]["crossover_k"] is not None
    assert (run / "analysis" / "analysis.json").exists()


def test_analyze_a_foreign_log_writes_only_with_out_and_shows_a_table(tmp_path):
    rows = ["step,reward,completion_length,kl"] + [f"{s},{0.1 + 0.002 * s},{200 - 0.1 * s},{0.001 * s}"
                                                    for s in range(1, 101)]
    (tmp_path / "run.csv").write_text("\n".join(rows) + "\n")
    p = rlscope("analyze", str(tmp_path / "run.csv"))
    assert p.returncode == 0, p.stderr[-3000:]
    assert "two_stage" in p.stdout and "not written" in p.stdout
    assert not p.stdout.strip().splitlines()[-1].startswith("{")  # JSON only with --json
    q = rlscope("analyze", str(tmp_path / "run.csv"), "--out", str(tmp_path / "out"), "--json")
    result = json.loads(q.stdout.strip().splitlines()[-1])
    assert result["format"] == "csv" and (tmp_path / "out" / "analysis.json").exists()
    assert result["analyses"]["boundary"]["status"] == "skipped" and result["analyses"]["boundary"]["crossover_k"] is None
    bad = rlscope("analyze", str(tmp_path / "nothing.txt"))
    assert bad.returncode != 0 and "no run or log" in bad.stderr


def test_bench_analyze_prints_json_last():
    p = rlscope("bench", "analyze", "--json", "--steps", "800", "--metrics", "30")
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["bench"] == "analyze" and r["metric_records"] == 800 * 30 and r["seconds"] > 0
    assert abs(r["planted"]["two_stage_break"] - r["planted"]["expected_break"]) <= 40
    assert r["small_log_steps"] == 100 and len(r["small_log_runs"]) == 3 and r["small_log_seconds"] > 0


@pytest.mark.slow
def test_analyze_a_real_tiny_run(tmp_path):
    """A warm-start run with pass@k and weight probes: SFT steps stay out of the RL analyses, the boundary and weight
    analyses read the probes' records."""
    from helpers import run_recipe

    run_recipe(tmp_path, "tiny_sft_then_dapo.yaml", "--sft_steps", "3", "--sft_batch_size", "8", "--max_steps", "4",
               "--run_name", "a", "--report_to", "none", "--eval_heldout", "false", "--dynamic_sampling", "false",
               "--probe_every", '{"passk": 2, "weights": 2}', "--probe_options", '{"passk": {"n": 2, "max_prompts": 3}}')
    from rlscope.analysis.analyze import analyze
    from rlscope.analysis.readers import read_run

    frame = read_run(tmp_path / "a")
    assert frame.phases["sft"] == [1, 3] and frame.sft_steps == frozenset({1, 2})  # RL starts from step 3's model
    assert frame.rl_steps.tolist() == [3, 4, 5, 6, 7]
    assert frame.series("heldout_accuracy")[0].tolist() == [3, 5, 7]  # the base curve, then two evaluations
    result = analyze(tmp_path / "a")
    b = result["analyses"]["boundary"]
    assert b["status"] == "ok" and [s for s, _ in b["crossover_over_time"]] == [5, 7]
    w = result["analyses"]["weight_dynamics"]
    assert w["status"] == "ok" and w["probes"] == 2
    assert result["analyses"]["planning_tokens"]["status"] in ("ok", "skipped")  # 4 steps of text: maybe too few
    assert (tmp_path / "a" / "analysis" / "analysis.json").exists()


# -- the console during a run ----------------------------------------------------------------------------------------
TRAIN_SMALL = ["train", "--config", "recipes/tiny_dapo.yaml", "--max_steps", "2", "--per_device_train_batch_size", "8",
               "--num_generations", "4", "--max_completion_length", "32", "--overlong_buffer_len", "8",
               "--dynamic_sampling", "false", "--eval_heldout", "false", "--save_strategy", "no", "--report_to", "none"]


@pytest.mark.slow
def test_the_console_shows_a_compact_bar_and_dicts_only_when_asked(tmp_path):
    p = rlscope(*TRAIN_SMALL, "--runs_dir", str(tmp_path), "--run_name", "c")
    assert p.returncode == 0, p.stderr[-3000:]
    out = p.stdout + p.stderr
    assert "{'loss'" not in out and "'completions/mean_length'" not in out  # no dict of every metric
    bar = [line for line in out.replace("\r", "\n").splitlines() if line.startswith("RL:")]
    assert bar and any("entropy" in line and "reward" in line and "cov" in line for line in bar), bar[-3:]
    q = rlscope(*TRAIN_SMALL, "--runs_dir", str(tmp_path), "--run_name", "d", "--console", "dicts")
    assert q.returncode == 0 and "{'loss'" in q.stdout + q.stderr
    bad = rlscope(*TRAIN_SMALL, "--runs_dir", str(tmp_path), "--run_name", "e", "--console", "loud")
    assert bad.returncode != 0 and "console mode" in bad.stderr and "compact" in bad.stderr
