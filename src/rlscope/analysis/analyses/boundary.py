"""The capability boundary: is RL expanding what the model can solve, or sharpening what it already could?

Yue et al. 2025 ("Does Reinforcement Learning Really Incentivize Reasoning Capacity in LLMs Beyond the Base Model?")
compare pass@k of the base and the RL model for growing k: RL wins at small k (sharper sampling), the base model
catches up and overtakes at large k when RL has narrowed coverage. From the run's pass@k evaluations (rlscope's
``passk`` probe: the base curve before the first update, then current curves, each with per-prompt correct counts):
the crossover k over time (the smallest k with base >= current), pass@1 and pass@n gains, and per-prompt coverage
(a prompt is covered when any of its n samples is correct): prompts gained and lost against the base.
"""

from __future__ import annotations

from rlscope.analysis.analyses import Skip, register
from rlscope.probes.passk import crossover_k, pass_at_k_curve


@register("boundary", requires=(("passk",),),
          outputs=("n", "prompts", "crossover_k", "crossover_found", "crossover_over_time", "pass1_base",
                   "pass1_final", "passn_base", "passn_final", "covered_base", "covered_final", "gained", "lost",
                   "evaluations"))
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
    base_curve, _ = pass_at_k_curve(n, base["counts"])
    over_time = []
    for rec in current:
        curve, _ = pass_at_k_curve(n, rec["counts"])
        over_time.append({"step": int(rec["step"]), "crossover_k": crossover_k(base_curve, curve),
                          "pass1": float(curve[0]), f"pass{n}": float(curve[-1])})
    final = current[-1]
    final_curve, _ = pass_at_k_curve(n, final["counts"])
    b_cov = [c > 0 for c in base["counts"]]
    f_cov = [c > 0 for c in final["counts"]]
    gained = sum(f and not b for b, f in zip(b_cov, f_cov))
    lost = sum(b and not f for b, f in zip(b_cov, f_cov))
    cross = over_time[-1]["crossover_k"]
    values = {"n": n, "prompts": len(base["counts"]), "crossover_k": cross, "crossover_found": cross is not None,
              "crossover_over_time": [[r["step"], r["crossover_k"]] for r in over_time],
              "pass1_base": float(base_curve[0]), "pass1_final": float(final_curve[0]),
              "passn_base": float(base_curve[-1]), "passn_final": float(final_curve[-1]),
              "covered_base": sum(b_cov), "covered_final": sum(f_cov), "gained": gained, "lost": lost,
              "evaluations": len(current)}
    d1, dn = final_curve[0] - base_curve[0], final_curve[-1] - base_curve[-1]
    if cross is None:
        kind = "expands the boundary" if dn > 0 else "stays ahead of the base"
        where = f"RL stays ahead of the base at every k up to {n}"
    else:
        kind = "sharpens within the boundary"
        where = f"the base catches up at k = {cross}"
    verdict = (f"RL {kind}: pass@1 {base_curve[0]:.3g} -> {final_curve[0]:.3g} ({d1:+.3g}), pass@{n} "
               f"{base_curve[-1]:.3g} -> {final_curve[-1]:.3g} ({dn:+.3g}); {where}; prompts covered "
               f"{sum(b_cov)} -> {sum(f_cov)} of {len(b_cov)} ({gained} gained, {lost} lost).")
    return verdict, values
