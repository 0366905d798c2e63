"""Verdicts that hold on other people's logs (issue 25): one test per class of wrong answer that real third-party logs
exposed, each on planted data -- coarse logging (20-30 points), quantised rewards, a pre-training evaluation, a 0-2
correctness reward -- and the matching noise checks that keep each detector silent where there is nothing."""

from __future__ import annotations

import numpy as np
import pytest
from test_analysis import frame_of, run

from rlscope.analysis.analyses.health import heldout_decline, plateau, reward_composition


# -- 1. a clear shrink-then-grow on a coarse log is found, or "not measurable" -- never "flat" -------------------------
def _coarse_v(seed: int, sd: float = 40.0):
    """Length logged every 10 steps (25 points): ~620 -> ~135 over the first 40 steps, then up to ~1050."""
    rng = np.random.default_rng(seed)
    s = np.arange(10, 251, 10)
    y = np.where(s <= 40, 620 - (620 - 135) * (s - 10) / 30, 135 + (1050 - 135) * (s - 40) / 210)
    return s, y + rng.normal(0, sd, s.size)


def test_a_coarse_shrink_then_grow_is_found():
    found = 0
    for seed in range(20):
        s, y = _coarse_v(seed)
        r = run("two_stage", frame_of({"response_length/mean": (s, y)}), seed=seed)
        assert r.values["pattern"] not in ("flat", "grow", "shrink"), r.verdict
        found += r.values["found"]
        if r.values["found"]:
            assert 30 <= r.values["break_step"] <= 70 and r.values["slope_before"] < 0 < r.values["slope_after"]
    assert found >= 18


def test_a_large_change_the_data_cannot_resolve_is_not_measurable_never_flat():
    # one early spike, then a noisy rise: 140 -> 530 with noise as large as the change; 25 points
    rng = np.random.default_rng(5)
    s = np.arange(10, 251, 10)
    y = 140 + 390 * (s - 10) / 240 + rng.normal(0, 250, s.size)
    y[0] = 620
    r = run("two_stage", frame_of({"response_length/mean": (s, np.abs(y))}))
    assert r.values["pattern"] != "flat"
    if r.status == "skipped":
        assert r.reason.startswith("not measurable: length moves") and "not flat" in r.reason
        assert r.values["fit_knots"] is not None  # the report still draws the series and the line


def test_flat_is_said_only_when_the_interval_bounds_the_change():
    rng = np.random.default_rng(6)
    s = np.arange(1, 301)
    r = run("two_stage", frame_of({"response_length/mean": (s, 300 + rng.normal(0, 5, s.size))}), seed=1)
    if r.values["pattern"] == "flat":
        assert "within" in r.verdict and "% of its level" in r.verdict


@pytest.mark.parametrize("kind", ["noise", "linear"])
def test_no_two_stages_claimed_on_a_coarse_log_of_noise_or_a_line(kind):
    claims = 0
    s = np.arange(10, 251, 10)
    for seed in range(100):
        e = np.random.default_rng(500 + seed).normal(0, 40, s.size)
        base = 400.0 if kind == "noise" else 600 - 1.2 * s
        claims += run("two_stage", frame_of({"response_length/mean": (s, base + e)}), seed=seed).values["found"]
    assert claims <= 5, f"{claims}/100 false two-stage claims on a coarse {kind}"


# -- 2. the entropy law: no pre-training evaluation, no ceiling outside the range, none carried by one point --------
def _verl_like(seed: int):
    """verl-style: entropy every step (falling 0.30 -> 0.09), held-out accuracy every 5 steps from step 0; step 0 is
    the model before any update (0.21), every later evaluation sits at 0.86-0.90."""
    rng = np.random.default_rng(seed)
    steps = np.arange(1, 106)
    h = 0.08 + 0.22 * np.exp(-steps / 25) + rng.normal(0, 0.005, steps.size)
    ev = np.arange(0, 106, 5)
    acc = np.where(ev == 0, 0.2115, 0.86 + 0.04 * (1 - np.exp(-ev / 20)) + rng.normal(0, 0.006, ev.size))
    return frame_of({"actor/entropy": (steps, h), "val-core/openai/gsm8k/reward/mean@1": (ev, acc)})


def test_a_pre_training_evaluation_is_not_paired_with_training_entropy():
    r = run("entropy_law", _verl_like(0))
    v = r.values
    assert v["left_out"] == [0] and v["n_pairs"] == 21 and min(p[0] for p in v["points"]) == 5
    assert all(p[2] > 0.8 for p in v["points"])  # the plot no longer hangs on the 0.21 point
    if v["ceiling"] is not None:
        assert 0 <= v["ceiling"] <= 1 and 0 <= v["ceiling_ci"][0] <= v["ceiling_ci"][1] <= 1


def test_an_accuracy_ceiling_outside_0_1_is_never_reported():
    rng = np.random.default_rng(7)
    x = np.arange(1, 301)
    h = 0.12 + 0.78 * np.exp(-x / 80) + rng.normal(0, 0.01, x.size)
    # a share (0.03 -> 0.96 as entropy falls) whose law R = 1.75 - 0.7 e^H tops out at 1.05 at zero entropy
    acc = np.clip(1.75 - 0.7 * np.exp(h) + rng.normal(0, 0.005, x.size), 0, 1)
    r = run("entropy_law", frame_of({"entropy": (x, h), "rewards/acc_correct/mean": (x, acc)}))
    v = r.values
    assert v["ceiling_fit"] > 1 and v["ceiling"] is None and v["ceiling_ci"] == [None, None]
    assert "outside a training accuracy's range [0, 1]" in v["ceiling_note"] and "no ceiling is reported" in r.verdict
    c = run("ceiling", frame_of({"entropy": (x, h), "rewards/acc_correct/mean": (x, acc)}))
    assert c.values["entropy_law_ceiling"] is None  # not carried over to the ceiling analysis either


def test_a_trade_off_that_rests_on_one_point_is_not_the_law():
    rng = np.random.default_rng(8)
    x = np.arange(1, 41)
    h = 0.3 + rng.normal(0, 0.02, x.size)
    acc = 0.88 + rng.normal(0, 0.01, x.size)  # no relation at all ...
    h[0], acc[0] = 0.9, 0.2  # ... but one early point far out
    r = run("entropy_law", frame_of({"entropy": (x, h), "rewards/t_correct/mean": (x, acc)}))
    assert r.values["leverage"]["step"] == 1 and not r.values["follows"] and r.values["ceiling"] is None
    assert "rests on the one point at step 1" in r.verdict


# -- 3. plateau on quantised rewards, and a held-out decline ----------------------------------------------------------
def _quantised(seed: int, means: np.ndarray, group: int = 8) -> np.ndarray:
    """Per-step means of ``group`` correctness sums in {0, 1, 2} (two binary checks): steps of 1/group."""
    rng = np.random.default_rng(seed)
    p = np.clip(means / 2, 0, 1)
    return (rng.binomial(1, p[:, None], (means.size, group)) + rng.binomial(1, p[:, None], (means.size, group))).mean(1)


def test_a_quantised_reward_rising_over_the_second_half_is_no_plateau():
    x = np.arange(1, 201)
    means = np.where(x <= 100, 1.2, 1.2 + 0.3 * (x - 100) / 100)
    warned = 0
    for seed in range(40):
        y = _quantised(seed, means)
        c = plateau(frame_of({"rewards/correctness_reward_func/mean": (x, y)}))
        warned += c["severity"] == "warn"
    assert warned <= 2, f"{warned}/40 plateau warnings on a rising quantised reward"


def test_a_quantised_reward_flat_after_a_rise_is_a_plateau_since_the_rise():
    x = np.arange(1, 301)
    means = np.minimum(0.6 + 1.0 * x / 60, 1.6)  # rises for 60 steps, then flat for 240
    c = plateau(frame_of({"rewards/correctness_reward_func/mean": (x, _quantised(1, means))}))
    assert c["severity"] == "warn" and c["metrics"]["state"] == "flat"
    assert 40 <= c["metrics"]["flat_since"] <= 120, c["evidence"]


def test_plateau_since_is_not_the_whole_run_when_the_run_rose():
    # a very noisy reward that rose -3.7 -> +2.8 early and is flat since (logged every 10 steps)
    rng = np.random.default_rng(9)
    s = np.arange(10, 501, 10)
    y = np.minimum(-3.7 + 6.5 * s / 150, 2.8) + rng.normal(0, 2.5, s.size)
    c = plateau(frame_of({"reward": (s, y)}))
    if c["metrics"]["flat_since"] is not None:
        assert c["metrics"]["flat_since"] > 10 and c["metrics"]["since_share"] < 1


def test_a_slowly_falling_heldout_accuracy_is_its_own_finding():
    rng = np.random.default_rng(10)
    ev = np.arange(0, 301, 15)
    acc = 0.62 - 0.1 * ev / 300 + rng.normal(0, 0.01, ev.size)
    x = np.arange(1, 301)
    f = frame_of({"eval_rewards/acc_correct/mean": (ev, acc), "reward": (x, 0.3 + 0.001 * x)})
    c = heldout_decline(f)
    assert c["severity"] == "warn" and "falling" in c["evidence"][0]
    assert run("health", f).values["checks"]["heldout_decline"]["severity"] == "warn"


def test_no_heldout_decline_in_noise():
    claims = 0
    ev = np.arange(0, 301, 15)
    for seed in range(100):
        e = np.random.default_rng(600 + seed).normal(0, 0.01, ev.size)
        claims += heldout_decline(frame_of({"eval_rewards/acc_correct/mean": (ev, 0.5 + e)}))["severity"] != "ok"
    assert claims <= 5, f"{claims}/100 held-out declines claimed in noise"


@pytest.mark.parametrize("kind", ["white", "quantised"])
def test_no_plateau_claimed_on_a_steadily_rising_run(kind):
    x = np.arange(1, 301)
    claims = 0
    for seed in range(100):
        if kind == "white":
            y = 0.2 + 0.5 * x / 300 + np.random.default_rng(700 + seed).normal(0, 0.05, x.size)
        else:
            y = _quantised(700 + seed, 0.6 + 0.6 * x / 300)
        claims += plateau(frame_of({"rewards/a_correct/mean": (x, y)}))["severity"] != "ok"
    assert claims <= 5, f"{claims}/100 plateau claims on a rising {kind} run"


# -- 4. a reward component that varies is not "constant" -------------------------------------------------------------
def test_a_component_that_varies_is_not_called_constant():
    rng = np.random.default_rng(11)
    x = np.arange(1, 201)
    json_r = np.where(rng.random(x.size) < 0.47, 1.75, 2.0)  # off its median on ~47% of steps: MAD 0, sd ~0.12
    game = rng.normal(0, 3, x.size)
    c = reward_composition(frame_of({"rewards/valid_json_reward/mean": (x, json_r),
                                     "rewards/gameplay_scores/mean": (x, game)}))
    assert "valid_json_reward" not in c["metrics"]["dead"]
    const = reward_composition(frame_of({"rewards/valid_json_reward/mean": (x, np.full(x.size, 2.0)),
                                         "rewards/gameplay_scores/mean": (x, game)}))
    assert const["metrics"]["dead"] == ["valid_json_reward"] and "constant components" in const["evidence"][1]


# -- 5. no claim without data, and every metric in its own terms ----------------------------------------------------
def test_aha_does_not_claim_about_reflection_or_length_it_has_no_data_for():
    rng = np.random.default_rng(3)
    x = np.arange(1, 301)
    acc = 0.2 + 0.3 * np.clip((x - 180) / 5, 0, 1) + rng.normal(0, 0.04, x.size)
    r = run("aha", frame_of({"rewards/task_correct/mean": (x, acc)}))
    assert r.values["found"]
    assert "reflection words not measured" in r.verdict and "no rise in reflection words" not in r.verdict
    assert "length regrowth not measured" in r.verdict and "no length regrowth" not in r.verdict


def test_a_0_2_correctness_reward_is_not_called_an_accuracy():
    x = np.arange(1, 201)
    y = _quantised(12, np.minimum(0.4 + 1.2 * x / 100, 1.6))
    f = frame_of({"rewards/correctness_reward_func/mean": (x, y)})
    for name in ("ceiling", "aha", "health"):
        r = run(name, f)
        assert "training accuracy" not in r.verdict and "train accuracy" not in r.verdict, (name, r.verdict)
    c = run("ceiling", f)
    assert c.verdict.startswith("correctness reward (rewards/correctness_reward_func/mean, observed 0")
    assert "not a share" in c.verdict


def test_a_sigmoid_asymptote_below_the_run_still_rising_is_no_ceiling():
    # a fast early gain, then a slow steady rise to the end: the best sigmoid flattens below where the run ends
    rng = np.random.default_rng(13)
    x = np.arange(1, 501)
    y = np.where(x < 200, -0.5 + 1.8 * x / 200, 4.7 + 2.8 * (x - 200) / 300) + rng.normal(0, 0.3, x.size)
    c = run("ceiling", frame_of({"reward": (x, y)}))
    v = c.values
    if v["asymptote_fit"] < v["end_level"]:
        assert v["asymptote"] is None and "no ceiling is reported" in c.verdict


def test_a_flat_noisy_reward_has_no_ceiling():
    # a binary reward on 8 completions per step that never rises (as a small-batch TRL GSM8K log): a sigmoid through
    # it puts A at the curve's level with a narrow interval -- never reported as a ceiling, over 20 seeds
    x = np.arange(1, 201)
    for seed in range(20):
        y = np.random.default_rng(seed).binomial(8, 0.4, x.size) / 8
        c = run("ceiling", frame_of({"reward": (x, y)}))
        assert c.values["asymptote"] is None, (seed, c.verdict)
        assert "no significant rise" in c.verdict or "no ceiling is reported" in c.verdict, c.verdict
    # the same noise on a real rise keeps its ceiling
    y = np.random.default_rng(0).binomial(8, 0.2 + 0.5 / (1 + (40.0 / x) ** 2), x.size) / 8
    c = run("ceiling", frame_of({"reward": (x, y)}))
    assert c.values["asymptote"] == pytest.approx(0.7, abs=0.1), c.verdict


def test_a_run_short_of_the_sigmoid_midpoint_reports_no_ceiling():
    rng = np.random.default_rng(14)
    x = np.arange(1, 201)
    y = 0.1 + 0.7 / (1 + (400.0 / x) ** 2) + rng.normal(0, 0.01, x.size)  # ends at 20% of its gain
    c = run("ceiling", frame_of({"rewards/t_correct/mean": (x, y)}))
    assert c.values["gain_made"] < 0.5 and c.values["asymptote"] is None
    assert "not past the curve's midpoint" in c.verdict


def test_two_ceilings_that_disagree_say_which_to_trust():
    from rlscope.analysis.analyses.ceiling import compare_ceilings

    sig = {"ci": [0.70, 0.74], "forecast_ok": False, "left": 0.4, "note": "the first half has not passed the "
                                                                          "curve's midpoint"}
    law = {"ci": [0.80, 0.86], "forecast_ok": True, "left": 0.2}
    out = compare_ceilings(sig, law)
    assert not out["agree"] and out["trust"] == "entropy law" and "midpoint" in out["why"]
    out = compare_ceilings({**sig, "forecast_ok": True, "left": 0.05}, law)
    assert out["trust"] == "sigmoid" and "95% of the sigmoid's gain" in out["why"]
    assert compare_ceilings({**sig, "ci": [0.79, 0.81]}, law)["agree"]
    assert compare_ceilings({**sig, "forecast_ok": False}, {**law, "forecast_ok": False})["trust"] is None


# -- every detector stays silent on a run of pure noise -------------------------------------------------------------
def _noise_run(seed: int, kind: str, n: int = 200):
    """Every metric the detectors read, as noise around a healthy level (white, or AR(1) with coefficient 0.7)."""
    rng = np.random.default_rng(seed)

    def e(sd):
        out = rng.normal(0, sd, n)
        if kind == "ar1":
            for i in range(1, n):
                out[i] += 0.7 * out[i - 1]
            out *= np.sqrt(1 - 0.49)
        return out

    x, ev = np.arange(1, n + 1), np.arange(10, n + 1, 10)
    return frame_of({"entropy": (x, 0.5 + e(0.02)), "reward": (x, 0.4 + e(0.05)),
                     "rewards/task_correct/mean": (x, rng.binomial(16, 0.4, n) / 16),
                     "rewards/format_reward/mean": (x, 0.9 + e(0.03)), "completions/mean_length": (x, 200 + e(5)),
                     "completions/clipped_ratio": (x, np.abs(0.01 + e(0.003))), "kl": (x, np.abs(0.05 + e(0.005))),
                     "clip_ratio/region_mean": (x, np.abs(0.02 + e(0.004))), "grad_norm": (x, 1 + e(0.05)),
                     "frac_reward_zero_std": (x, np.clip(0.2 + e(0.03), 0, 1)),
                     "eval_rewards/task_correct/mean": (ev, 0.45 + rng.normal(0, 0.01, ev.size))})


@pytest.mark.parametrize("kind", ["white", "ar1"])
def test_no_detector_alarms_on_pure_noise(kind):
    """At most 5% warn/crit per detector over 100 noise runs (issue 25: reward_vs_heldout warned on 54% of them, on a
    rank correlation below 0 by chance). ``plateau`` is left out: a run of pure noise has plateaued (its false
    alarms are tested on rising runs above)."""
    from rlscope.analysis.analyses.health import DETECTORS

    alarms = {name: 0 for name in DETECTORS if name != "plateau"}
    for seed in range(100):
        frame = _noise_run(10_000 + seed, kind)
        for name in alarms:
            found = DETECTORS[name](frame)
            alarms[name] += found is not None and found["severity"] in ("warn", "crit")
    assert all(v <= 5 for v in alarms.values()), alarms
