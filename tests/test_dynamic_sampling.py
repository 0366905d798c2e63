"""DAPO dynamic sampling on a real tiny trainer: all-equal groups are dropped and replaced; the guard names its cause."""

import pytest
from datasets import Dataset

from rlscope.trainers import DAPOConfig, DAPOTrainer, RewardFunctionError

PROMPTS = [f"{a}+{b}=" for a in range(10) for b in range(10)]
CONSTANT = set(PROMPTS[::2])  # every other prompt: its group always gets the same reward


def prompt_dependent_reward(completions, prompts, **kw):
    """Constant reward for the prompts in CONSTANT; otherwise depends on the completion (groups vary)."""
    return [0.5 if p in CONSTANT else float(len(c) % 2) for p, c in zip(prompts, completions)]


def constant_reward(completions, **kw):
    return [1.0] * len(completions)


def broken_reward(completions, **kw):
    raise ValueError("cannot parse")


def _trainer(tmp_path, tiny_path, reward, **cfg):
    from transformers import AutoTokenizer

    base = dict(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=8, num_generations=4,
                steps_per_generation=2, max_completion_length=8, learning_rate=1e-5, use_cpu=True, bf16=False,
                report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0, loss_type="dapo",
                dynamic_sampling=True)
    args = DAPOConfig(**{**base, **cfg})
    tok = AutoTokenizer.from_pretrained(tiny_path)
    return DAPOTrainer(model=str(tiny_path), reward_funcs=[reward], args=args,
                       train_dataset=Dataset.from_list([{"prompt": p} for p in PROMPTS]), processing_class=tok)


class Capture:
    def __init__(self):
        self.rows = []

    def log_rollouts(self, rows):
        self.rows.extend(rows)


def test_all_equal_groups_are_dropped_and_replaced(tmp_path, tiny_path):
    trainer = _trainer(tmp_path, tiny_path, prompt_dependent_reward, max_generation_batches=20)
    trainer.run_store = Capture()
    trainer.train()
    rows = trainer.run_store.rows
    # every optimizer step trained on a full batch (16 per generation = 2 steps x 8), none from a constant group
    assert len(rows) == 16 * 2 and {r["step"] for r in rows} == {1, 3}
    assert not [r for r in rows if r["prompt"] in CONSTANT]
    # half the groups are constant: the first generation batch cannot fill the batch
    assert any(s["generation_batches"] > 1 for s in trainer.dynamic_sampling_stats)
    assert all(0 < s["kept_group_share"] < 1 for s in trainer.dynamic_sampling_stats)
    # the dataloader's own batch held constant groups (they were seen, then dropped)
    logged = [x for x in trainer.state.log_history if "rlscope/dynamic_sampling/generation_batches" in x]
    assert logged and all(x["rlscope/dynamic_sampling/generation_batches"] >= 1 for x in logged)


def test_guard_names_the_cause_and_the_setting(tmp_path, tiny_path):
    trainer = _trainer(tmp_path, tiny_path, constant_reward, max_generation_batches=3,
                       dynamic_sampling_exhausted="raise")
    with pytest.raises(RuntimeError, match=r"after 3 generation batches.*all equal.*max_generation_batches"):
        trainer.train()


def test_exhausted_dynamic_sampling_fills_the_batch_and_flags_the_step(tmp_path, tiny_path):
    """The default: a step whose generation batches are used up trains on a full batch topped up with dropped
    (zero-advantage) groups, and says how much of it is filler; training goes on."""
    trainer = _trainer(tmp_path, tiny_path, prompt_dependent_reward, max_generation_batches=1)
    trainer.run_store = Capture()
    trainer.train()
    assert trainer.state.global_step == 3
    rows = trainer.run_store.rows
    assert len(rows) == 16 * 2  # full batches
    filler = [r for r in rows if r["prompt"] in CONSTANT]
    assert filler and all(r["advantage"] == 0.0 for r in filler)
    shares = [s["filled_share"] for s in trainer.dynamic_sampling_stats]
    assert all(s["generation_batches"] == 1 for s in trainer.dynamic_sampling_stats)
    # the filled share is exactly the share of each step's rows with no advantage (groups with unequal 0/1 rewards
    # give every sample a nonzero one)
    per_step = [sum(r["advantage"] == 0.0 for r in rows if r["step"] == step) / 16 for step in (1, 3)]
    assert per_step == shares and max(shares) > 0
    logged = [x["rlscope/dynamic_sampling/filled_share"] for x in trainer.state.log_history
              if "rlscope/dynamic_sampling/filled_share" in x]
    assert logged and max(logged) > 0


def test_a_constant_reward_fills_every_row_and_is_flagged(tmp_path, tiny_path):
    trainer = _trainer(tmp_path, tiny_path, constant_reward, max_generation_batches=2, max_steps=1)
    trainer.train()
    assert [s["filled_share"] for s in trainer.dynamic_sampling_stats] == [1.0]
    assert [s["kept_group_share"] for s in trainer.dynamic_sampling_stats] == [0.0]


def flaky_reward(completions, prompts, **kw):
    """Raises on any batch that holds a prompt starting with 3 (as a parser that chokes on one sample would)."""
    if any(p.startswith("3") for p in prompts):
        raise ValueError("cannot parse " + next(p for p in prompts if p.startswith("3")))
    return [float(len(c) % 2) for c in completions]


def test_reward_errors_skip_scores_the_failing_samples_nan_and_trains_on(tmp_path, tiny_path, caplog):
    trainer = _trainer(tmp_path, tiny_path, flaky_reward, reward_errors="skip", dynamic_sampling=False,
                       max_steps=4)
    trainer.run_store = Capture()
    with caplog.at_level("WARNING", logger="rlscope"):
        trainer.train()
    assert trainer.state.global_step == 4
    rows = trainer.run_store.rows
    bad = [r for r in rows if r["prompt"].startswith("3")]
    good = [r for r in rows if not r["prompt"].startswith("3")]
    assert bad and good, "the sampled prompts should include some starting with 3"
    assert all(r["reward"] != r["reward"] and r["advantage"] == 0.0 for r in bad)  # NaN reward, no gradient
    assert all(r["reward"] == r["reward"] for r in good)
    errors = [x["rlscope/reward_errors/flaky_reward"] for x in trainer.state.log_history
              if "rlscope/reward_errors/flaky_reward" in x]
    assert errors and sum(errors) > 0
    said = [m for m in caplog.messages if "reward function 'flaky_reward' raised ValueError: cannot parse 3" in m]
    assert said and "scored NaN (reward_errors: skip)" in said[0]


def test_a_raising_reward_function_is_named(tmp_path, tiny_path):
    trainer = _trainer(tmp_path, tiny_path, broken_reward)
    with pytest.raises(RewardFunctionError, match="reward function 'broken_reward' raised ValueError: cannot parse"):
        trainer.train()
