"""The offline analyses on synthetic runs with known answers: planted effects are found (with intervals covering the
truth) and pure noise or monotone trends do not produce claims (false-positive rate <= 5% over 100 seeds)."""

from __future__ import annotations

import numpy as np
import pytest

from rlscope.analysis.analyses import ANALYSES, run_analysis
from rlscope.analysis.frame import RunFrame


def frame_of(series: dict[str, tuple], **kw) -> RunFrame:
    steps, names, values = [], [], []
    for name, (s, v) in series.items():
        steps.append(np.asarray(s))
        values.append(np.asarray(v, dtype=float))
        names += [name] * len(s)
    return RunFrame.from_long("synthetic", "test", np.concatenate(steps), names, np.concatenate(values), **kw)


def run(name, frame, **options):
    return run_analysis(ANALYSES.get(name), frame, **options)


X = np.arange(1, 301)


def noise(seed: int, sd: float, kind: str) -> np.ndarray:
    """White noise, or AR(1) noise with coefficient 0.7 for ``kind == "ar1"`` (autocorrelated training curves)."""
    e = np.random.default_rng(seed).normal(0, sd, X.size)
    if kind == "ar1":
        for i in range(1, X.size):
            e[i] += 0.7 * e[i - 1]
    return e


# -- two_stage ----------------------------------------------------------------------------------------------------
def test_planted_two_stages_are_found_with_an_interval_covering_the_break():
    hits = 0
    for seed in range(10):
        rng = np.random.default_rng(seed)
        y = 120 - 0.3 * np.minimum(X, 110) + 0.25 * np.maximum(0, X - 110) + rng.normal(0, 3, X.size)
        r = run("two_stage", frame_of({"completions/mean_length": (X, y)}), seed=seed)
        assert r.values["found"] and r.values["pattern"] == "shrink then grow", r.verdict
        assert abs(r.values["break_step"] - 110) <= 15
        lo, hi = r.values["break_step_ci"]
        hits += lo <= 110 <= hi
        assert r.values["slope_before"] == pytest.approx(-0.3, abs=0.08)
        assert r.values["slope_after"] == pytest.approx(0.25, abs=0.08)
    assert hits >= 8  # a 95% interval covers the truth in (nearly) every seed


@pytest.mark.parametrize("kind", ["noise", "ar1", "linear", "decay", "growth"])
def test_no_two_stages_in_noise_or_monotone_trends(kind):
    claims = 0
    for seed in range(100):
        e = noise(1000 + seed, 4, kind)
        base = {"noise": 150.0, "ar1": 150.0, "linear": 150 - 0.1 * X, "decay": 120 + 60 * np.exp(-X / 60),
                "growth": 100 + 15 * np.log1p(X)}[kind]
        r = run("two_stage", frame_of({"response_length/mean": (X, base + e)}), seed=seed)
        claims += r.values["found"]
    assert claims <= 5, f"{claims}/100 false two-stage claims on {kind}"


def test_sft_steps_are_not_mixed_into_rl_trends():
    """An SFT phase where length rises, then RL where it only shrinks: no 'shrink then grow' from the SFT part."""
    rng = np.random.default_rng(0)
    s = np.arange(1, 401)
    y = np.where(s <= 100, 50 + s, 250 - 0.2 * (s - 100)) + rng.normal(0, 2, s.size)
    f = frame_of({"response_length/mean": (s, y)}, sft_steps=frozenset(range(1, 101)))
    r = run("two_stage", f)
    assert r.values["pattern"] == "shrink" and r.values["n_points"] == 300


# -- aha ----------------------------------------------------------------------------------------------------------
def test_two_stage_cautions_when_the_length_sits_at_the_cap():
    rng = np.random.default_rng(5)
    length = 128 - 0.01 * X + rng.normal(0, 0.5, X.size)
    capped = run("two_stage", frame_of({"completions/mean_length": (X, length),
                                        "completions/clipped_ratio": (X, 0.8 + rng.normal(0, 0.02, X.size))}))
    assert capped.values["truncation"] == pytest.approx(0.8, abs=0.03) and "Caution: 80%" in capped.verdict
    free = run("two_stage", frame_of({"completions/mean_length": (X, length),
                                      "completions/clipped_ratio": (X, np.full(X.size, 0.01))}))
    assert free.values["truncation"] == pytest.approx(0.01) and "Caution" not in free.verdict
    assert free.values["pattern"] == capped.values["pattern"]  # the fit itself is the same; only the caution differs


def test_planted_aha_is_found_near_its_step_with_reflection_and_regrowth():
    rng = np.random.default_rng(3)
    acc = 0.2 + 0.3 * np.clip((X - 180) / 5, 0, 1) + rng.normal(0, 0.04, X.size)
    refl = 0.1 + 0.8 * (X > 175) + rng.normal(0, 0.05, X.size)
    length = 100 - 0.2 * np.minimum(X, 170) + 0.3 * np.maximum(0, X - 170) + rng.normal(0, 2, X.size)
    f = frame_of({"rewards/task_correct/mean": (X, acc), "rlscope/behavior/reflection_rate": (X, refl),
                  "rlscope/behavior/length_mean": (X, length)})
    r = run("aha", f)
    assert r.values["found"] and abs(r.values["step"] - 182) <= 6, r.verdict
    assert r.values["target"] == "train_accuracy" and r.values["jump"] == pytest.approx(0.3, abs=0.05)
    assert abs(r.values["reflection_step"] - 176) <= 6 and r.values["reflection_near"]
    assert abs(r.values["length_regrowth_step"] - 170) <= 15 and r.values["length_near"]
    assert r.values["early"] is False and "caution" not in r.verdict  # mid-run: no format caution


def test_aha_on_sparse_evaluations_names_the_largest_part_of_a_joined_rise():
    # held-out accuracy every 10 steps rising over three evaluations (small, large, small), as in verl's GSM8K logs
    steps = np.arange(9, 440, 10)
    acc = np.where(steps < 19, 0.01, np.where(steps < 29, 0.18, np.where(steps < 59, 0.46, 0.51)))
    acc = acc + np.random.default_rng(0).normal(0, 0.004, steps.size)
    r = run("aha", frame_of({"val/test_score/openai/gsm8k": (steps, acc)}))
    assert r.values["found"] and r.values["target"] == "heldout_accuracy", r.verdict
    assert r.values["step"] == 29 and r.values["step_window"][0] == 9, r.values
    assert r.values["jump"] == pytest.approx(0.5, abs=0.04)
    # the whole rise in the first 5% of the run from near zero: what a format-strict reward does while the format is
    # learnt, so the verdict cautions (as on verl's GSM8K logs, whose scorer needs "#### <number>")
    assert r.values["early"] is True and "caution: it comes in the first 5% of the run" in r.verdict
    late = np.where(steps < 199, 0.01, np.where(steps < 209, 0.18, np.where(steps < 239, 0.46, 0.51)))
    r = run("aha", frame_of({"val/test_score/openai/gsm8k": (steps, late + np.random.default_rng(0).normal(
        0, 0.004, steps.size))}))
    assert r.values["found"] and r.values["early"] is False and "caution" not in r.verdict, r.verdict


@pytest.mark.parametrize("kind", ["noise", "ar1", "linear", "weak_linear"])
def test_no_aha_in_noise_or_a_gradual_rise(kind):
    claims = 0
    for seed in range(100):
        e = noise(2000 + seed, 0.05, kind)
        # weak_linear: a rise of ~1.4 noise sd over the run, which level-shift search cuts into a single step
        base = 0.2 + {"linear": 0.5 * X / 300, "weak_linear": 0.07 * X / 300}.get(kind, 0.0)
        claims += run("aha", frame_of({"reward": (X, base + e)})).values["found"]
    assert claims <= 5, f"{claims}/100 false aha claims on {kind}"


# -- entropy law and ceiling ----------------------------------------------------------------------------------------
def test_planted_entropy_law_is_recovered_and_forecast():
    rng = np.random.default_rng(4)
    h = 1.2 * np.exp(-X / 80) + 0.1 + rng.normal(0, 0.01, X.size)
    a, b = 0.3, 1.1
    acc = b - a * np.exp(h) + rng.normal(0, 0.01, X.size)
    r = run("entropy_law", frame_of({"entropy": (X, h), "rewards/x_correct/mean": (X, acc)}))
    v = r.values
    assert v["a"] == pytest.approx(a, rel=0.05) and v["b"] == pytest.approx(b, rel=0.05)
    assert v["a_ci"][0] <= a <= v["a_ci"][1] and v["b_ci"][0] <= b <= v["b_ci"][1]
    assert v["ceiling"] == pytest.approx(b - a, rel=0.05) and v["r2"] > 0.9
    assert v["forecast_rmse"] < 0.03 and v["forecast_prefix_steps"] == 60  # the first 20% predict the rest


def _binomial_run(seed: int, acc_of_h, n: int = 64, steps: np.ndarray = X):
    """Entropy decaying over the run and per-step training accuracy measured on ``n`` samples (binomial noise)."""
    rng = np.random.default_rng(seed)
    h = 0.6 * np.exp(-steps / 150) + 0.25 + rng.normal(0, 0.01, steps.size)
    return h, rng.binomial(n, np.clip(acc_of_h(h), 0, 1)) / n


def test_entropy_law_under_sampling_noise_is_judged_by_lack_of_fit_not_by_r2():
    # the law exactly, measured on 64 samples a step: R^2 is capped well below 0.5 by the noise alone
    h, acc = _binomial_run(30, lambda h: 0.9 - 0.2 * np.exp(h))
    v = run("entropy_law", frame_of({"entropy": (X, h), "rewards/x_correct/mean": (X, acc)})).values
    assert v["r2"] < 0.5 and v["r2_bins"] < 0.55 and v["lof_p"] > 0.05 and v["follows"]
    assert v["a_ci"][0] <= 0.2 <= v["a_ci"][1]


def test_entropy_law_with_the_wrong_shape_is_not_claimed():
    # accuracy jumps once entropy falls below 0.45: it does rise as entropy falls (a > 0), but as a step, which no
    # law R = -a e^H + b follows; and a hump (accuracy falling again as entropy collapses)
    h, acc = _binomial_run(31, lambda h: 0.3 + 0.4 * (h < 0.45), n=256)
    r = run("entropy_law", frame_of({"entropy": (X, h), "rewards/x_correct/mean": (X, acc)}))
    assert r.values["a_ci"][0] > 0 and r.values["lof_p"] < 0.01 and not r.values["follows"]
    assert "not in the law's shape" in r.verdict
    h, acc = _binomial_run(32, lambda h: 0.9 - 8 * (h - 0.55) ** 2, n=256)
    r = run("entropy_law", frame_of({"entropy": (X, h), "rewards/x_correct/mean": (X, acc)}))
    assert not r.values["follows"] and r.values["lof_p"] < 0.01


def test_no_entropy_law_claimed_in_pure_noise():
    claims = 0
    for seed in range(100):
        h, acc = _binomial_run(3000 + seed, lambda h: np.full_like(h, 0.4))
        claims += run("entropy_law", frame_of({"entropy": (X, h), "rewards/x_correct/mean": (X, acc)})).values["follows"]
    assert claims <= 5, f"{claims}/100 false entropy-law claims in pure noise"


def test_entropy_law_on_sparse_heldout_uses_the_entropy_between_evaluations():
    rng = np.random.default_rng(5)
    h = 1.0 * np.exp(-X / 100) + 0.05 + rng.normal(0, 0.005, X.size)
    ev = np.arange(0, 301, 10)
    h_at = np.array([h[(X > e - 10) & (X <= e)].mean() if e else h[0] for e in ev])
    acc = 0.9 - 0.25 * np.exp(h_at) + rng.normal(0, 0.005, ev.size)
    r = run("entropy_law", frame_of({"entropy": (X, h), "val-core/gsm8k/acc/mean@1": (ev, acc)}))
    # the evaluation at step 0 comes before any training step: no training entropy to pair it with, left out
    assert r.values["target"] == "heldout_accuracy" and r.values["n_pairs"] == ev.size - 1
    assert r.values["left_out"] == [0] and "at step 0, before any training step, left out" in r.verdict
    assert r.values["a"] == pytest.approx(0.25, rel=0.05) and r.values["b"] == pytest.approx(0.9, rel=0.05)


def test_planted_sigmoid_asymptote_is_recovered():
    rng = np.random.default_rng(6)
    r0, big_a, b, c_mid = 0.1, 0.8, 1.5, 100.0  # the run ends short of the asymptote (at 86% of the gain)
    y = r0 + (big_a - r0) / (1 + (c_mid / X) ** b) + rng.normal(0, 0.02, X.size)
    r = run("ceiling", frame_of({"reward": (X, y)}))
    lo, hi = r.values["asymptote_ci"]
    assert r.values["asymptote"] == pytest.approx(big_a, abs=0.05) and lo <= big_a <= hi
    assert r.values["efficiency"] == pytest.approx(b, rel=0.3) and r.values["r2"] > 0.9
    assert abs(r.values["forecast_error"]) < 0.1 and r.values["forecast_reliable"]


def test_ceiling_forecast_before_the_midpoint_is_marked_unusable():
    rng = np.random.default_rng(16)
    y = 0.1 + 0.6 / (1 + (220.0 / X) ** 4) + rng.normal(0, 0.01, X.size)  # the first half is all early, flat curve
    r = run("ceiling", frame_of({"reward": (X, y)}))
    assert r.values["forecast_reliable"] is False and "no usable forecast" in r.verdict


# -- boundary --------------------------------------------------------------------------------------------------------
def test_boundary_crossover_and_coverage_are_exact():
    from math import comb

    base = {"step": 0, "kind": "base", "n": 4, "counts": [0, 1, 4], "curve": []}
    cur1 = {"step": 50, "kind": "current", "n": 4, "counts": [3, 3, 0], "curve": []}
    cur2 = {"step": 100, "kind": "current", "n": 4, "counts": [4, 4, 1], "curve": []}
    r = run("boundary", RunFrame("x", "test", raw={"reward": (np.array([1, 2]), np.array([0.1, 0.2]))},
                                 passk=[base, cur1, cur2]))

    def curve(counts):
        return [np.mean([1 - comb(4 - c, k) / comb(4, k) for c in counts]) for k in range(1, 5)]

    b1, c1 = curve([0, 1, 4]), curve([3, 3, 0])
    expected = next(k for k in range(1, 5) if b1[k - 1] >= c1[k - 1] - 1e-12)
    assert r.values["crossover_over_time"] == [[50, expected], [100, None]] and expected == 4
    assert r.values["crossover_k"] is None and not r.values["crossover_found"]
    assert (r.values["gained"], r.values["lost"]) == (1, 0)  # prompt 0 newly solved; none lost
    assert r.values["pass1_base"] == pytest.approx(b1[0]) and r.values["pass1_final"] == pytest.approx(9 / 12)


def _passk_frame(base_counts, final_counts, n):
    recs = [{"step": 0, "kind": "base", "n": n, "counts": list(map(int, base_counts)), "curve": []},
            {"step": 100, "kind": "current", "n": n, "counts": list(map(int, final_counts)), "curve": []}]
    return RunFrame("x", "test", raw={"reward": (np.array([1, 2]), np.array([0.1, 0.2]))}, passk=recs)


def test_boundary_claims_follow_the_paired_bootstrap():
    rng = np.random.default_rng(40)
    n, prompts = 64, 128
    p_base = rng.beta(0.5, 1.5, prompts)  # the base: many prompts rarely solved
    # RL sharpens and narrows (Yue et al.): three times as likely on the prompts the base solves at least 1 in 10,
    # never on the rest
    p_narrow = np.where(p_base < 0.1, 0.0, np.minimum(1, 3 * p_base))
    r = run("boundary", _passk_frame(rng.binomial(n, p_base), rng.binomial(n, p_narrow), n))
    v = r.values
    assert v["pattern"] == "narrows" and v["passn_diff_ci"][1] < 0 and v["pass1_diff_ci"][0] > 0
    assert v["crossover_k_ci"][0] <= v["crossover_k"] <= v["crossover_k_ci"][1] and "the base overtakes" in r.verdict
    # RL lifts every prompt: ahead at every k, beyond noise at k = n
    p_up = np.minimum(1, p_base + 0.3)
    v = run("boundary", _passk_frame(rng.binomial(n, p_base), rng.binomial(n, p_up), n)).values
    assert v["pattern"] == "expands" and v["crossover_k"] is None and v["passn_diff_ci"][0] > 0


def test_no_boundary_claim_when_rl_and_base_are_the_same_model():
    # the intervals hold at 95% for the pair (pass@1, pass@n): ~5% false claims; 400 draws so that the bound can be
    # tight (6%) without depending on the luck of a few seeds
    claims = 0
    for seed in range(400):
        rng = np.random.default_rng(4000 + seed)
        p = rng.beta(0.5, 1.5, 64)
        claims += run("boundary", _passk_frame(rng.binomial(16, p), rng.binomial(16, p), 16)).values["pattern"] != "unchanged"
    assert claims <= 24, f"{claims}/400 boundary claims between two samplings of the same model"


# -- entropy dynamics ------------------------------------------------------------------------------------------------
def test_entropy_decay_projects_its_floor_and_a_cliff_is_found():
    rng = np.random.default_rng(7)
    h = 0.8 * np.exp(-X / 150) * np.exp(rng.normal(0, 0.01, X.size))
    r = run("entropy_dynamics", frame_of({"actor/entropy": (X, h)}))
    true_floor = -150 * np.log(0.1 * np.median(h[:30]) / 0.8)  # where the decay reaches 10% of the start
    assert r.values["model"] == "exponential" and abs(r.values["projected_floor_step"] - true_floor) < 40
    assert r.values["collapse_warning"] and r.values["cliff_step"] is None  # smooth: no abrupt drop
    h2 = np.where(X < 120, 0.6, 0.15) + rng.normal(0, 0.005, X.size)
    r2 = run("entropy_dynamics", frame_of({"actor/entropy": (X, h2)}))
    assert r2.values["cliff_step"] == 120 and r2.values["cliff_from"] == pytest.approx(0.6, abs=0.02)
    r3 = run("entropy_dynamics", frame_of({"entropy": (X, 0.2 + 0.001 * X + rng.normal(0, 0.005, X.size))}))
    assert r3.values["rising"] and not r3.values["collapse_warning"]


# -- health --------------------------------------------------------------------------------------------------------
def _checks(series, **kw):
    return run("health", frame_of(series, **kw)).values["checks"]


def test_health_detectors_fire_on_planted_problems_and_stay_quiet_otherwise():
    rng = np.random.default_rng(8)
    noise = lambda sd: rng.normal(0, sd, X.size)  # noqa: E731
    c = _checks({"frac_reward_zero_std": (X, 0.8 + noise(0.02)), "rewards/t_correct/mean": (X, 0.9 + noise(0.01))})
    assert c["zero_advantage"]["severity"] == "crit" and "too easy" in c["zero_advantage"]["metrics"]["regime"]
    assert _checks({"frac_reward_zero_std": (X, 0.1 + noise(0.02))})["zero_advantage"]["severity"] == "ok"
    ev = np.arange(0, 301, 10)
    c = _checks({"reward": (X, 0.2 + 0.002 * X + noise(0.02)),
                 "eval_reward": (ev, 0.4 + rng.normal(0, 0.01, ev.size))})
    assert c["reward_vs_heldout"]["severity"] == "warn"
    c = _checks({"reward": (X, 0.2 + 0.002 * X + noise(0.02)), "eval_reward": (ev, 0.2 + 0.002 * ev)})
    assert c["reward_vs_heldout"]["severity"] == "ok"
    few = np.array([0, 100, 200, 300])  # too few evaluations to test: rising together is no alarm, a fall a note
    c = _checks({"reward": (X, 0.2 + 0.002 * X + noise(0.02)), "eval_reward": (few, [0.30, 0.33, 0.32, 0.36])})
    assert c["reward_vs_heldout"]["severity"] == "ok" and "too few" in c["reward_vs_heldout"]["evidence"][1]
    c = _checks({"reward": (X, 0.2 + 0.002 * X + noise(0.02)), "eval_reward": (few, [0.36, 0.33, 0.35, 0.30])})
    assert c["reward_vs_heldout"]["severity"] == "info"
    c = _checks({"completions/mean_length": (X, 100 + noise(1)), "completions/clipped_ratio": (X, 0.2 + noise(0.01))})
    assert c["length"]["severity"] == "crit" and "cap" in c["length"]["evidence"][0]
    assert _checks({"completions/mean_length": (X, 300 - 0.8 * X + noise(1))})["length"]["severity"] == "warn"
    # no clipped ratio (old TRL, a CSV export): a mean length pinned at its maximum is the cap, every completion cut
    lengths = np.minimum(240 + noise(12), 256.0)  # the batch mean reaches the cap 256 on ~9% of the steps
    c = _checks({"completion_length": (X, lengths)})["length"]
    cut = float(np.mean(lengths[-75:] == 256))
    assert c["metrics"]["inferred_cap"] == 256 and c["metrics"]["truncation"] == cut > 0.05
    assert c["severity"] == ("crit" if cut >= 0.15 else "warn") and "at least" in c["evidence"][0]
    free = _checks({"completion_length": (X, 240 + noise(12))})["length"]  # a free-running mean: max reached once
    assert free["metrics"]["inferred_cap"] is None and free["metrics"]["truncation"] is None
    assert any("truncation not measured" in e for e in free["evidence"]) and free["severity"] == "ok"
    coarse = _checks({"completion_length": (X, np.round(240 + noise(3)))})["length"]  # integer means repeat by rounding
    assert coarse["metrics"]["inferred_cap"] is None
    assert _checks({"clip_ratio/region_mean": (X, 0.45 + noise(0.01))})["clip_saturation"]["severity"] == "crit"
    assert _checks({"kl": (X, 0.01 * X)})["kl_drift"]["severity"] == "warn"  # 3.0 at the end
    assert _checks({"kl": (X, np.zeros(X.size))})["kl_drift"]["severity"] == "ok"
    g = 1 + noise(0.05)
    g[[50, 120, 200]] = 30
    c = _checks({"grad_norm": (X, g)})
    assert c["gradients"]["severity"] == "warn" and c["gradients"]["metrics"]["spikes"] == 3
    assert _checks({"grad_norm": (X, 1 + noise(0.05))})["gradients"]["severity"] == "ok"
    c = _checks({"rewards/format_reward/mean": (X, 1 + noise(0.5)), "rewards/task/mean": (X, 0.5 + noise(0.01))})
    assert c["reward_composition"]["metrics"]["dominant"] == "format_reward"
    assert c["reward_composition"]["severity"] == "crit"  # an auxiliary reward carries > 90% of the variance
    flat = _checks({"reward": (X, np.r_[np.linspace(0, 1, 100), np.ones(200)] + noise(0.05))})
    assert flat["plateau"]["severity"] == "warn"
    assert _checks({"reward": (X, 0.003 * X + noise(0.05))})["plateau"]["severity"] == "ok"


def test_health_entropy_collapse_ahead():
    h = 0.5 - 0.0015 * X
    c = _checks({"entropy": (X, h), "reward": (X, 0.5 + 0.0 * X)})
    assert c["entropy_collapse"]["severity"] in ("warn", "crit")
    assert _checks({"entropy": (X, 0.5 + 0.0 * X)})["entropy_collapse"]["severity"] == "ok"


# -- weights and planning tokens -----------------------------------------------------------------------------------
def test_weight_dynamics_rotation_and_a_linear_update_forecast_exactly():
    s = np.arange(25, 301, 25)
    series = {"rlscope/weights/angle_left_mean": (s, 0.001 * s), "rlscope/weights/angle_right_mean": (s, 0.001 * s),
              "rlscope/weights/sv_rel_change_mean": (s, 1e-5 * s), "rlscope/weights/dw_rank1_energy": (s, 0.6 + 0 * s),
              "rlscope/weights/dw_dir_cos_left": (s[1:], 0.97 + 0 * s[1:]), "rlscope/weights/dw_sigma1": (s, 0.02 * s),
              "reward": (X, 0.1 + 0 * X)}
    r = run("weight_dynamics", frame_of(series))
    v = r.values
    assert v["rotation_dominates"] and v["rotation_to_scaling"] == pytest.approx(100)
    assert v["direction_stability"] == pytest.approx(0.97) and v["rank1_energy"] == pytest.approx(0.6)
    assert v["forecast_sigma1"] == pytest.approx(6.0, rel=1e-6) and abs(v["forecast_error"]) < 1e-6
    assert v["trajectory"] == "linear" and v["sigma1_departure"] == pytest.approx(0, abs=1e-9)


PROBES = np.arange(25, 301, 25)


def _weights(sigma, cos=None, steps=PROBES) -> dict:
    """weight_dynamics on probes with dW's sigma_1 and, optionally, the successive |cos| of (left, right) vectors."""
    series = {"rlscope/weights/angle_left_mean": (steps, 0.001 * steps), "rlscope/weights/dw_sigma1": (steps, sigma),
              "reward": (X, 0.1 + 0 * X)}
    if cos is not None:
        series["rlscope/weights/dw_dir_cos_left"] = (steps[1:], cos[0])
        series["rlscope/weights/dw_dir_cos_right"] = (steps[1:], cos[1])
    return run("weight_dynamics", frame_of(series)).values


def _cos(seed: int, centre: float, sd: float) -> list[np.ndarray]:
    rng = np.random.default_rng(seed + 1000)
    return [np.clip(rng.normal(centre, sd, PROBES.size - 1), 0, 1) for _ in range(2)]


def _sigma(seed: int, clean: np.ndarray, sd: float) -> np.ndarray:
    return clean + np.random.default_rng(seed).normal(0, sd, PROBES.size)


@pytest.mark.parametrize("seed", range(5))
def test_weight_dynamics_a_planted_linear_trajectory_is_linear(seed):
    v = _weights(_sigma(seed, 0.02 * PROBES, 0.05), _cos(seed, 0.97, 0.01))
    assert v["trajectory"] == "linear", v["trajectory_reason"]
    assert v["sigma1_departure_ci"][1] < 0.1 and v["direction_stability_ci"][0] >= 0.9


@pytest.mark.parametrize("seed", range(5))
def test_weight_dynamics_a_planted_quadratic_growth_is_non_linear(seed):
    v = _weights(_sigma(seed, 1e-4 * PROBES ** 2, 0.05), _cos(seed, 0.97, 0.01))
    assert v["trajectory"] == "non-linear", v["trajectory_reason"]
    assert v["sigma1_departure_ci"][0] > 0.1 and v["curvature_p"] < 0.001


@pytest.mark.parametrize("seed", range(5))
def test_weight_dynamics_a_turning_direction_is_non_linear(seed):
    v = _weights(_sigma(seed, 0.02 * PROBES, 0.05), _cos(seed, 0.5, 0.1))
    assert v["trajectory"] == "non-linear" and "direction turns" in v["trajectory_reason"]
    assert v["sigma1_departure_ci"][1] < 0.1 and v["direction_stability_ci"][1] < 0.9


def test_weight_dynamics_a_noise_sigma1_is_never_called_linear_or_not():
    for seed in range(20):
        v = _weights(_sigma(seed, 0.5 + 0 * PROBES, 0.05), _cos(seed, 0.97, 0.01))
        assert v["trajectory"] not in ("linear", "non-linear"), (seed, v["trajectory_reason"])


def test_weight_dynamics_three_probes_are_too_few_for_a_trajectory():
    v = _weights(0.02 * PROBES[:3], [np.full(2, 0.97)] * 2, steps=PROBES[:3])
    assert v["trajectory"] is None and "4 are needed" in v["trajectory_reason"]


def test_weight_dynamics_the_departure_is_the_largest_gap_between_the_quadratic_and_the_line():
    steps = np.array([10, 20, 45, 60, 100, 130, 200, 290])  # uneven, as probes of a resumed run can be
    sigma = 0.3 + 0.01 * steps + 3e-5 * steps ** 2
    v = _weights(sigma, steps=steps)
    line, quad = np.polyval(np.polyfit(steps, sigma, 1), steps), np.polyval(np.polyfit(steps, sigma, 2), steps)
    brute = np.abs(quad - line).max() / abs(line[-1])
    assert v["sigma1_departure"] == pytest.approx(brute, rel=1e-9)
    assert v["sigma1_departure_ci"] == pytest.approx([brute, brute], rel=1e-9) and v["curvature_p"] == 0.0
    assert v["trajectory"] == "linear" and "size alone" in v["trajectory_reason"]  # D = 0.063 < 0.1, no cosines


def test_planted_strategic_grams_are_found():
    rng = np.random.default_rng(9)
    rows = []
    for step in range(1, 41):
        for _ in range(8):
            ok = rng.random() < 0.1 + 0.02 * step
            body = " ".join(rng.choice(["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta"], 12))
            text = f"{body} let me verify the sum {rng.integers(10, 99)} then done" if ok else body
            rows.append({"step": step, "completion": text, "reward": float(ok)})
    r = run("planning_tokens", RunFrame("x", "test", raw={"reward": (np.array([1]), np.array([0.0]))}, rollouts=rows))
    grams = [g for g, _ in r.values["grams"]]
    assert any("let me verify" in g or "verify the sum" in g for g in grams[:3]), grams
    assert r.values["planning_share_end"] > r.values["planning_share_start"]


def test_skipped_analyses_keep_their_keys_with_a_reason():
    r = run("boundary", frame_of({"reward": (X, 0 * X)}))
    assert r.status == "skipped" and r.reason.startswith("not measurable") and "pass@k" in r.reason
    assert set(ANALYSES.get("boundary").outputs) <= set(r.to_json()) and r.to_json()["crossover_k"] is None
