"""The real-model tasks' loading and reward code (GSM8K, MATH with math-verify), on local files and the tiny model."""

import pytest

from conftest import ROOT
from helpers import run_recipe
from rlscope.recipe import parse_recipe
from rlscope.tasks import get_task

DATA = ROOT / "tests" / "data"


def test_gsm8k_rows_and_math_verify_reward():
    task = get_task("gsm8k", dataset_path=str(DATA / "gsm8k_sample.jsonl"))
    rows = task.rows("train")
    assert len(rows) == 4 and rows[0]["prompt"][-1]["content"].startswith("Tom has")
    assert rows[2]["solution"] == "$300$"  # "1,200" style commas stripped from the gold answer
    assert task.score("So the answer is \\boxed{7}.", rows[0]) == 1.0
    assert task.score("So the answer is \\boxed{8}.", rows[0]) == 0.0
    f = task.reward_funcs()[0]
    out = f([[{"role": "assistant", "content": "\\boxed{60}"}], [{"role": "assistant", "content": "\\boxed{6}"}]],
            solution=[rows[1]["solution"], rows[1]["solution"]])
    assert out == [1.0, 0.0]


def test_math_rows_and_reward():
    task = get_task("math", dataset_path=str(DATA / "math_sample.jsonl"))
    rows = task.rows("train")
    assert task.score("The sum is \\boxed{\\frac{5}{6}}", rows[0]) == 1.0
    assert task.score("The sum is \\boxed{0.8333}", rows[0]) == 0.0
    assert task.score("x = \\boxed{4}", rows[1]) == 1.0


def test_missing_source_column_is_named(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "1+1?"}\n')
    with pytest.raises(ValueError, match="has no 'answer' column"):
        get_task("gsm8k", dataset_path=str(bad)).rows("train")


@pytest.mark.parametrize("name", ["qwen2.5_math_1.5b_gsm8k_dapo.yaml", "qwen2.5_math_1.5b_math_dapo.yaml"])
def test_real_recipes_parse(name):
    # bf16 is validated against the hardware: on this CPU-only machine parse with the CPU overrides
    run_args, cfg, model = parse_recipe(["--config", str(ROOT / "recipes" / name), "--bf16", "false",
                                         "--use_cpu", "true"])
    assert model.model_name_or_path.startswith("Qwen/") and run_args.task in ("gsm8k", "math")
    assert cfg.use_vllm and cfg.loss_type == "dapo" and cfg.dynamic_sampling
    assert run_args.num_processes == 8  # its launch line


@pytest.mark.slow
def test_gsm8k_recipe_code_path_runs_on_the_tiny_model(tmp_path):
    """The GSM8K recipe, pointed at local data and the tiny model (chat template, conversational prompts)."""
    s = run_recipe(tmp_path, "qwen2.5_math_1.5b_gsm8k_dapo.yaml", "--model_name_or_path", "tiny",
                   "--task_config", f'{{"dataset_path": "{DATA / "gsm8k_sample.jsonl"}", "n_heldout": 4, "max_completion_length": 16}}',
                   "--use_vllm", "false", "--use_cpu", "true", "--bf16", "false", "--gradient_checkpointing", "false",
                   "--dynamic_sampling", "false", "--max_steps", "1", "--run_name", "gsm", "--dtype", "float32",
                   "--max_completion_length", "16", "--overlong_buffer_len", "4", "--num_processes", "1")
    assert s["rl_steps"] == 1 and s["heldout_after"] == 0.0  # an untrained model; the path is what is tested
