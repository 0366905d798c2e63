import math

import pytest
import torch

from rlscope.common import pad_and_concat
from rlscope.trainers.dapo import group_keep_mask
from rlscope.trainers.reward_guard import GuardedReward, RewardFunctionError


def test_group_keep_mask_drops_all_equal_groups():
    r = torch.tensor([1., 1., 1., 1., 0., 1., 0., 0., 0.5, 0.5, 0.5, 0.5])
    assert group_keep_mask(r, 4).tolist() == [False] * 4 + [True] * 4 + [False] * 4


def test_group_keep_mask_ignores_nan_and_needs_two_scored():
    nan = math.nan
    r = torch.tensor([nan, 1., 0., nan, nan, nan, nan, 1., nan, 2., 2., nan])
    assert group_keep_mask(r, 4).tolist() == [True] * 4 + [False] * 4 + [False] * 4


def test_group_keep_mask_matches_a_loop_on_random_inputs():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        n = 6
        r = torch.randint(0, 3, (8 * n,), generator=g).float()
        expect = []
        for i in range(8):
            grp = r[i * n:(i + 1) * n].tolist()
            expect += [len(set(grp)) > 1] * n
        assert group_keep_mask(r, n).tolist() == expect


def test_pad_cat_pads_each_side():
    a = torch.tensor([[1, 2]])
    b = torch.tensor([[3, 4, 5]])
    assert pad_and_concat([a, b], "left", 0).tolist() == [[0, 1, 2], [3, 4, 5]]
    assert pad_and_concat([a, b], "right", 9).tolist() == [[1, 2, 9], [3, 4, 5]]


def test_reward_function_errors_name_the_function():
    def my_reward(completions, **kw):
        raise ZeroDivisionError("boom")

    wrapped = GuardedReward(my_reward)
    assert wrapped.__name__ == "my_reward"
    with pytest.raises(RewardFunctionError, match="reward function 'my_reward' raised ZeroDivisionError: boom"):
        wrapped(["x"])


def test_guarded_reward_skip_scores_only_the_raising_samples_none():
    def picky(completions, prompts, **kw):
        if any(c == "bad" for c in completions):
            raise ValueError("cannot parse bad")
        return [float(len(c)) for c in completions]

    wrapped = GuardedReward(picky, policy="skip")
    out = wrapped(completions=["ab", "bad", "abcd", "bad"], prompts=["p0", "p1", "p2", "p3"], trainer_state=None)
    assert out == [2.0, None, 4.0, None] and wrapped.skipped == [1, 3]
