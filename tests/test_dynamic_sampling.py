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
    trainer = _trainer(tmp_path, tiny_path, constant_reward, max_generation_batches=3)
    with pytest.raises(RuntimeError, match=r"after 3 generation batches.*all equal.*max_generation_batches"):
        trainer.train()


def test_a_raising_reward_function_is_named(tmp_path, tiny_path):
    trainer = _trainer(tmp_path, tiny_path, broken_reward)
    with pytest.raises(RewardFunctionError, match="reward function 'broken_reward' raised ValueError: cannot parse"):
        trainer.train()
