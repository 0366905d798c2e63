"""End-to-end runs of the tiny recipes in one process (real model, real TRL trainer, real store)."""

import json

import pytest

from helpers import run_recipe
from rlscope.store import RunReader


@pytest.mark.slow
def test_tiny_dapo_run_fills_the_store(tmp_path, tiny_sft_path):
    s = run_recipe(tmp_path, "tiny_dapo.yaml", "--max_steps", "4", "--run_name", "r", "--save_strategy", "steps",
                   "--save_steps", "2")
    r = RunReader(tmp_path / "r")
    assert r.meta()["world_size"] == 1 and r.meta()["status"] == "finished"
    import trl

    assert r.meta()["versions"]["trl"] == trl.__version__  # the installed one (CI also runs this on the oldest)
    assert r.config()["training"]["loss_type"] == "dapo" and r.config()["run"]["task"] == "chainsum"
    names = r.metric_names()
    for name in ("reward", "entropy", "clip_ratio/high_mean", "rlscope/dynamic_sampling/generation_batches",
                 "rewards/soft_overlong_punishment_reward/mean"):
        assert name in names, name
    assert r.series("loss")[0] == [1, 2, 3, 4]
    roll = r.rollouts().to_pylist()
    # generated at steps 1 and 3 (steps_per_generation 2), 16 completions each (2 steps x 8)
    assert sorted(x["step"] for x in roll) == [1] * 16 + [3] * 16
    assert all(set(x) >= {"prompt", "completion", "reward", "advantage", "length"} for x in roll)
    assert (tmp_path / "r" / "checkpoints" / "checkpoint-4").is_dir()
    assert (tmp_path / "r" / "models" / "final" / "config.json").exists()
    assert {e["phase"] for e in r.evals()} == {"before_rl", "after_rl"}
    assert 0.0 <= s["heldout_after"] <= 1.0


@pytest.mark.slow
def test_resume_appends_without_duplicating_steps(tmp_path, tiny_sft_path):
    extra = ("--probe_every", '{"passk": 2, "weights": 2}', "--probe_options", '{"passk": {"n": 2, "max_prompts": 3}}')
    run_recipe(tmp_path, "tiny_dapo.yaml", "--max_steps", "4", "--run_name", "r", "--save_strategy", "steps",
               "--save_steps", "2", "--eval_heldout", "false", *extra)
    w0 = (tmp_path / "r" / "weights" / "w0" / "model.layers.0.mlp.up_proj.weight.safetensors").read_bytes()
    lines = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    # the run "crashed" after step 4 was logged; resume from the step-2 checkpoint and run to 4 again
    run_recipe(tmp_path, "tiny_dapo.yaml", "--max_steps", "4", "--run_name", "r", "--save_strategy", "steps",
               "--save_steps", "2", "--eval_heldout", "false", *extra,
               "--resume_from_checkpoint", str(tmp_path / "r" / "checkpoints" / "checkpoint-2"))
    records = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    keys = [(x["step"], x["name"]) for x in records]
    assert len(keys) == len(set(keys)), "a step was stored twice"
    assert sorted({k[0] for k in keys}) == [0, 1, 2, 3, 4]  # step 0: the pass@k base, before the first update
    assert len(lines) == len(records)
    rollout_steps = [x["step"] for x in RunReader(tmp_path / "r").records("rollouts")]
    assert rollout_steps == sorted(rollout_steps)
    # pass@k: the base curve is measured once (before the first update) and kept; weight geometry keeps its W_0
    passk = [(x["step"], x["kind"]) for x in RunReader(tmp_path / "r").records("passk")]
    assert passk == [(0, "base"), (2, "current"), (4, "current")]
    weights = [x["step"] for x in RunReader(tmp_path / "r").records("weights")]
    assert weights == [2] * 28 + [4] * 28
    assert (tmp_path / "r" / "weights" / "w0" / "model.layers.0.mlp.up_proj.weight.safetensors").read_bytes() == w0


@pytest.mark.slow
def test_wandb_offline_directory_sits_inside_the_run(tmp_path, tiny_sft_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run_recipe(tmp_path, "tiny_dapo.yaml", "--max_steps", "2", "--run_name", "w", "--report_to", "wandb",
               "--eval_heldout", "false", "--probe_every", '{"weights": 1}', "--probe_options",
               '{"passk": {"n": 2, "max_prompts": 2}, "tokens": {"table_every": 1}}')
    runs = list((tmp_path / "w" / "wandb").glob("offline-run-*"))
    assert runs, "no offline W&B run inside the run directory"
    assert any(p.suffix == ".wandb" for p in runs[0].iterdir())
    # the observatory's rollouts Table reached W&B (media files are written next to the offline run)
    tables = [str(p.relative_to(runs[0])) for p in runs[0].rglob("*.table.json")]
    assert any("rollouts" in t for t in tables), f"no rollouts table under {runs[0]}: {tables}"
    assert any("passk" in t and "curve_table" in t for t in tables), f"no pass@k curve under {runs[0]}: {tables}"
    assert any("passk" in t and "/table_" in t for t in tables), f"no pass@k Table under {runs[0]}: {tables}"
    import wandb

    if wandb.run is not None:
        wandb.finish()


@pytest.mark.slow
def test_grpo_recipe_runs(tmp_path, tiny_sft_path):
    run_recipe(tmp_path, "tiny_grpo.yaml", "--max_steps", "2", "--run_name", "g", "--eval_heldout", "false")
    r = RunReader(tmp_path / "g")
    assert r.series("loss")[0] == [1, 2]
    assert "rlscope/dynamic_sampling/generation_batches" not in r.metric_names()


@pytest.mark.slow
def test_sft_then_rl_puts_both_phases_on_one_step_axis(tmp_path):
    s = run_recipe(tmp_path, "tiny_sft_then_dapo.yaml", "--sft_steps", "3", "--sft_batch_size", "8",
                   "--max_steps", "2", "--run_name", "d", "--dynamic_sampling", "false", "--eval_heldout", "false",
                   "--probe_options", '{"passk": {"n": 4, "max_prompts": 4}}')
    r = RunReader(tmp_path / "d")
    assert s["phases"] == {"sft": [1, 3], "rl": [4, 5]}
    assert r.series("loss")[0] == [4, 5]
    assert (tmp_path / "d" / "models" / "sft" / "config.json").exists()
