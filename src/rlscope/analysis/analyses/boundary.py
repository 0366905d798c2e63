"""The capability boundary: is RL expanding what the model can solve, or sharpening what it already could?

Yue et al. 2025 ("Does Reinforcement Learning Really Incentivize Reasoning Capacity in LLMs Beyond the Base Model?")
compare pass@k of the base and the RL model for growing k: RL wins at small k (sharper sampling), the base model
catches up and overtakes at large k when RL has narrowed coverage. From the run's pass@k evaluations (rlscope's
``passk`` probe: the base curve before the first update, then current curves, each with per-prompt correct counts):
the crossover k over time (the smallest k with base >= current), pass@1 and pass@n gains, and per-prompt coverage
(a prompt is covered when any of its n samples is correct): prompts gained and lost against the base.

Both curves come from the same prompts, so their difference is uncertain through which prompts were drawn: a paired
bootstrap over prompts gives intervals for pass@1 and pass@n differences (97.5% each: 95% for the pair, Bonferroni)
and a 95% interval for the crossover k. Claims follow the intervals: the base *overtakes* only when its pass@n is
higher beyond noise, RL *expands* the boundary only when its pass@n is; a crossover whose pass@n difference is within
noise is the base catching up, not overtaking.
"""

from __future__ import annotations

import numpy as np

from rlscope.analysis import stats
from rlscope.analysis.analyses import Skip, register
from rlscope.probes.passk import crossover_k, pass_at_k_curve

BOOTSTRAP = 1000


def paired_bootstrap(base_pp: np.ndarray, final_pp: np.ndarray, seed: int = 0, draws: int = BOOTSTRAP) -> dict:
    """Intervals over prompts (resampled together for both models) of pass@1 and pass@n differences (final - base;
    97.5% each, so that the pair holds at 95%) and of the crossover k (95%; n + 1 standing for "no crossover up to
    n"). ``*_pp``: per-prompt pass@k, (P, n)."""
    rng = np.random.default_rng(seed)
    prompts, n = base_pp.shape
    idx = rng.integers(0, prompts, size=(draws, prompts))
    # each draw as how often it took each prompt: curves by one product, not a (draws, prompts, n) copy of the curves
    weights = np.zeros((draws, prompts))
    np.add.at(weights, (np.arange(draws)[:, None], idx), 1.0 / prompts)
    b, f = weights @ base_pp, weights @ final_pp  # (draws, n)
    ahead = b >= f - 1e-12
    cross = np.where(ahead.any(axis=1), ahead.argmax(axis=1) + 1, n + 1)
    return {"pass1_diff_ci": stats.percentile_ci(f[:, 0] - b[:, 0], level=0.975),
            "passn_diff_ci": stats.percentile_ci(f[:, -1] - b[:, -1], level=0.975),
            "crossover_k_ci": [int(np.percentile(cross, 2.5)), int(np.percentile(cross, 97.5))]}


@register("boundary", requires=(("passk",),),
          outputs=("n", "prompts", "crossover_k", "crossover_found", "crossover_k_ci", "crossover_over_time",
                   "pass1_base", "pass1_final", "pass1_diff_ci", "passn_base", "passn_final", "passn_diff_ci",
                   "pattern", "covered_base", "covered_final", "gained", "lost", "evaluations"))
def boundary(frame) -> tuple[str, dict]:
    """pass@k curves over time against the base: crossover k, pass@1 / pass@n gains, prompts gained and lost."""
    bases = [r for r in frame.passk if r.get("kind") == "base"]
    if not bases:
        raise Skip("the pass@k records hold no base curve (it is measured before the first update)")
    base = bases[-1]
    n = int(base["n"])
    current = [r for r in frame.passk if r.get("kind") == "current" and int(r["n"]) == n
               and len(r["counts"]) == len(base["counts"])]
    if not current:
        raise Skip("no pass@k evaluation after the base with the same n and prompts")
    base_curve, base_pp = pass_at_k_curve(n, base["counts"])
    over_time = []
    for rec in current:
        curve, _ = pass_at_k_curve(n, rec["counts"])
        over_time.append({"step": int(rec["step"]), "crossover_k": crossover_k(base_curve, curve),
                          "pass1": float(curve[0]), f"pass{n}": float(curve[-1])})
    final = current[-1]
    final_curve, final_pp = pass_at_k_curve(n, final["counts"])
    b_cov = [c > 0 for c in base["counts"]]
    f_cov = [c > 0 for c in final["counts"]]
    gained = sum(f and not b for b, f in zip(b_cov, f_cov))
    lost = sum(b and not f for b, f in zip(b_cov, f_cov))
    cross = over_time[-1]["crossover_k"]
    boot = paired_bootstrap(base_pp, final_pp)
    (d1_lo, d1_hi), (dn_lo, dn_hi) = boot["pass1_diff_ci"], boot["passn_diff_ci"]
    if dn_hi < 0:
        pattern = "narrows"  # the base solves more at k = n, beyond noise (Yue et al.)
    elif dn_lo > 0:
        pattern = "expands"
    elif d1_lo > 0:
        pattern = "sharpens"  # better at k = 1, the same at k = n
    elif d1_hi < 0:
        pattern = "worse"
    else:
        pattern = "unchanged"
    values = {"n": n, "prompts": len(base["counts"]), "crossover_k": cross, "crossover_found": cross is not None,
              "crossover_k_ci": boot["crossover_k_ci"],
              "crossover_over_time": [[r["step"], r["crossover_k"]] for r in over_time],
              "pass1_base": float(base_curve[0]), "pass1_final": float(final_curve[0]),
              "pass1_diff_ci": boot["pass1_diff_ci"], "passn_base": float(base_curve[-1]),
              "passn_final": float(final_curve[-1]), "passn_diff_ci": boot["passn_diff_ci"], "pattern": pattern,
              "covered_base": sum(b_cov), "covered_final": sum(f_cov), "gained": gained, "lost": lost,
              "evaluations": len(current)}
    d1, dn = final_curve[0] - base_curve[0], final_curve[-1] - base_curve[-1]
    lo_k, hi_k = boot["crossover_k_ci"]
    k_ci = f"[{lo_k}, {hi_k if hi_k <= n else f'none up to {n}'}]"
    where = (f"RL stays ahead of the base at every k up to {n} (crossover 95% {k_ci})" if cross is None else
             f"the base {'overtakes' if pattern == 'narrows' else 'catches up'} at k = {cross} {k_ci}")
    head = {"narrows": "RL narrows the boundary: the base solves more at large k",
            "expands": "RL expands the boundary: it solves more than the base even at large k",
            "sharpens": "RL sharpens within the boundary: better at k = 1, no different from the base at large k",
            "worse": "RL is worse than the base at k = 1",
            "unchanged": "No significant change against the base at k = 1 or at large k"}[pattern]
    verdict = (f"{head}: pass@1 {base_curve[0]:.3g} -> {final_curve[0]:.3g} ({d1:+.3g} [{d1_lo:+.3g}, {d1_hi:+.3g}]), "
               f"pass@{n} {base_curve[-1]:.3g} -> {final_curve[-1]:.3g} ({dn:+.3g} [{dn_lo:+.3g}, {dn_hi:+.3g}]); "
               f"{where}; prompts covered {sum(b_cov)} -> {sum(f_cov)} of {len(b_cov)} ({gained} gained, {lost} lost).")
    return verdict, values
