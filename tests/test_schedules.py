"""Schedules on scripted signal sequences; the mixed losses against hand-computed examples."""

from __future__ import annotations

import math

import pytest
import torch

from rlscope.trainers.schedules import Signals, get_schedule


def kinds(schedule, signals):
    return [schedule.decide(s).kind for s in signals]


def test_sft_then_rl_by_steps_and_by_accuracy():
    assert kinds(get_schedule("sft_then_rl", sft_steps=3), [Signals(step=i) for i in range(1, 7)]) == \
        ["sft"] * 3 + ["rl"] * 3
    s = get_schedule("sft_then_rl", sft_steps=100, until_accuracy=0.5, check_every=2)
    assert [s.wants_heldout(i) for i in range(1, 6)] == [False, False, True, False, True]
    seq = [Signals(step=1, heldout_accuracy=0.1), Signals(step=2, heldout_accuracy=0.6), Signals(step=3,
                                                                                               heldout_accuracy=0.2)]
    assert kinds(s, seq) == ["sft", "rl", "rl"]  # once switched, stays RL


def test_alternate():
    assert kinds(get_schedule("alternate", rl_steps=2), [Signals(step=i) for i in range(1, 8)]) == \
        ["rl", "rl", "sft", "rl", "rl", "sft", "rl"]


def test_heat_when_accuracy_dips_then_cooldown():
    s = get_schedule("heat_on_low_accuracy", threshold=0.3, cooldown=2, min_rl_steps=1)
    acc = [0.5, 0.2, 0.2, 0.2, 0.2, 0.5, 0.1]
    got = kinds(s, [Signals(step=i + 1, rolling_accuracy=a) for i, a in enumerate(acc)])
    #        ok   dip->heat  (cooldown: 2 RL)  dip->heat again  ok    dip: cooldown not over
    assert got == ["rl", "sft", "rl", "rl", "sft", "rl", "rl"]
    assert s.log_values()["heats"] == 2


def test_relift_buffer_fills_then_sft_on_buffer():
    s = get_schedule("relift", buffer_size=3)
    s.observe_groups([({"prompt": "a"}, 0.0), ({"prompt": "b"}, 0.5)])
    assert s.decide(Signals(step=1)).kind == "rl" and s.log_values()["buffer_size"] == 1
    s.observe_groups([({"prompt": "c"}, 0.0), (None, 0.0)])  # None: a hard prompt that lives on another rank
    d = s.decide(Signals(step=2))
    assert d.kind == "sft" and d.sft_source == "buffer"
    assert [r["prompt"] for r in s.take_batch(8)] == ["a", "c"]
    assert s.decide(Signals(step=3)).kind == "rl" and s.log_values()["buffer_size"] == 0


def test_hpt_switches_per_prompt():
    s = get_schedule("hpt_mix")
    assert s.decide(Signals(step=1)).per_prompt
    assert s.prompt_weights(0.0) == (1.0, 0.0) and s.prompt_weights(0.25) == (0.0, 1.0)
    assert get_schedule("hpt_mix", gamma=0.25).prompt_weights(0.25) == (1.0, 0.0)


def test_chord_weight_decays():
    s = get_schedule("chord_token_weight", mu_start=0.5, mu_end=0.1, decay_steps=10)
    mus = [s.decide(Signals(step=i)).sft_weight for i in (1, 6, 11, 50)]
    assert mus[0] == pytest.approx(0.5) and mus[1] == pytest.approx(0.3) and mus[2] == pytest.approx(0.1)
    assert mus[3] == pytest.approx(0.1)
    d = s.decide(Signals(step=1))
    assert d.kind == "mixed" and d.rl_weight == pytest.approx(0.5) and d.token_weighting == "p(1-p)"


def test_unknown_schedule_and_parameter_are_named():
    with pytest.raises(ValueError, match="Did you mean 'relift'"):
        get_schedule("relif")
    with pytest.raises(ValueError, match="unknown parameter 'bufer_size' of schedule 'relift'. Did you mean 'buffer_size'"):
        get_schedule("relift", bufer_size=3)


def test_mixed_losses_against_hand_computed_values():
    from rlscope.trainers.mixed_losses import chord_phi_nll, hpt_loss, sft_nll

    p = torch.tensor([[0.5, 0.25, 0.9], [0.8, 0.1, 0.3]])
    logp = p.log().requires_grad_(True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # NLL: -(ln .5 + ln .25 + ln .8) / 3
    assert float(sft_nll(logp, mask)) == pytest.approx(-(math.log(0.5) + math.log(0.25) + math.log(0.8)) / 3)
    # CHORD: phi = p(1-p): .25, .1875, .16 -> -(.25 ln .5 + .1875 ln .25 + .16 ln .8) / 3
    loss = chord_phi_nll(logp, mask)
    expected = -(0.25 * math.log(0.5) + 0.1875 * math.log(0.25) + 0.16 * math.log(0.8)) / 3
    assert float(loss) == pytest.approx(expected)
    loss.backward()  # phi is a constant weight: d loss / d logp = -phi / n on valid tokens
    assert logp.grad.flatten().tolist() == pytest.approx([-0.25 / 3, -0.1875 / 3, 0.0, -0.16 / 3, 0.0, 0.0])
    # HPT: 1 of 4 prompts switched to SFT -> RL + SFT / 4
    assert float(hpt_loss(torch.tensor(0.2), torch.tensor(2.0), 1, 4)) == pytest.approx(0.7)
    assert float(hpt_loss(torch.tensor(0.2), torch.tensor(2.0), 0, 4)) == pytest.approx(0.2)


# -- the recipes: each schedule runs a few steps on the tiny task, token probes still logged ----------------------
SCHEDULE_RECIPES = {
    "sft_then_rl": ['{"sft_steps": 2}', None],
    "alternate": ['{"rl_steps": 1, "sft_steps": 1}', None],
    "heat_on_low_accuracy": ['{"threshold": 1.0, "cooldown": 1, "min_rl_steps": 1}', None],
    "relift": ['{"buffer_size": 1}', None],
    "hpt_mix": ['{"gamma": 1.0}', None],  # every prompt counts as unsolved: the SFT branch always runs
    "chord_token_weight": ['{"mu_start": 0.5, "mu_end": 0.1, "decay_steps": 4}', None],
}


@pytest.mark.parametrize("name", sorted(SCHEDULE_RECIPES))
def test_schedule_recipe_runs_with_probes(tmp_path, tiny_sft_path, name):
    from helpers import run_recipe
    from rlscope.store import RunReader

    cfg, _ = SCHEDULE_RECIPES[name]
    summary = run_recipe(tmp_path, f"tiny_interleave_{name}.yaml", "--max_steps", "4", "--run_name", name,
                         "--schedule_config", cfg, "--eval_heldout", "false", "--interleave_sft_batch_size", "4")
    r = RunReader(summary["run_dir"])
    steps, kinds = r.series("rlscope/schedule/kind")
    assert steps == [1, 2, 3, 4]
    sft_steps = [s for s, k in zip(steps, kinds) if k == 1.0]
    rl_like = [s for s, k in zip(steps, kinds) if k != 1.0]
    expected = {"sft_then_rl": [1, 2], "alternate": [2, 4], "heat_on_low_accuracy": None, "relift": None,
                "hpt_mix": [], "chord_token_weight": []}[name]
    if expected is not None:
        assert sft_steps == expected, kinds
    else:  # data-driven: at least one SFT step (the thresholds above force it) and at least one RL step
        assert sft_steps and rl_like, kinds
    assert summary["schedule"]["sft_steps"] == sft_steps
    # token probes on every step that ran RL
    ent_steps = r.series("rlscope/entropy/mean")[0]
    assert ent_steps == rl_like
    if sft_steps:
        assert r.series("rlscope/schedule/sft_loss")[0] == sft_steps
    if name in ("hpt_mix", "chord_token_weight"):
        assert all(k == 2.0 for k in kinds)
        assert r.series("rlscope/schedule/sft_loss")[0] == [1, 2, 3, 4]
    if name == "chord_token_weight":
        w = r.series("rlscope/schedule/sft_weight")[1]
        assert w[0] == pytest.approx(0.5) and w[-1] < w[0]
    if name == "relift":
        assert "rlscope/schedule/buffer_size" in r.metric_names()


def test_sft_then_rl_until_accuracy_measures_heldout_in_the_trainer(tmp_path, tiny_sft_path):
    """The trainer evaluates held-out accuracy every check_every SFT steps; a reachable target switches to RL."""
    from helpers import run_recipe
    from rlscope.store import RunReader

    summary = run_recipe(tmp_path, "tiny_interleave_sft_then_rl.yaml", "--max_steps", "4", "--run_name", "until",
                         "--schedule_config", '{"sft_steps": 100, "until_accuracy": 0.0, "check_every": 2}',
                         "--eval_heldout", "false", "--interleave_sft_batch_size", "4")
    r = RunReader(summary["run_dir"])
    assert r.series("rlscope/schedule/kind")[1] == [1.0, 1.0, 0.0, 0.0]  # measured before step 3: 0.0 reached
    assert r.series("rlscope/schedule/heldout_accuracy")[0] == [3]
