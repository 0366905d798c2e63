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

Published curves (a pass@k curve table, :mod:`rlscope.analysis.readers.passk_curve`: records with ``curve`` and ``ks``
but ``counts`` None) are compared as they are, at the ks both curves list: the crossover on the listed ks (with the two
listed ks it falls between when they are not adjacent, and a log2-k interpolation), pass@1 (when k = 1 is listed) and
pass@kmax, and the area between the curves -- the mean over log2 k of (RL - base), by the trapezoid rule, normalised by
the log2 k span. Without per-prompt counts there is no interval and no prompt coverage: the verdict describes the
curves and claims no pattern (``pattern`` is null).
"""

from __future__ import annotations

import numpy as np

from rlscope.analysis import stats
from rlscope.analysis.analyses import Skip, register

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
                   "pattern", "covered_base", "covered_final", "gained", "lost", "evaluations", "from_counts",
                   "pass1_diff", "passn_diff", "ks", "crossover_between", "crossover_k_interp", "area_between",
                   "area_over_time"))
def boundary(frame) -> tuple[str, dict]:
    """pass@k curves over time against the base: crossover k, pass@1 / pass@n gains, prompts gained and lost."""
    bases = [r for r in frame.passk if r.get("kind") == "base"]
    if not bases:
        raise Skip("the pass@k records hold no base curve (it is measured before the first update)")
    base = bases[-1]
    if base.get("counts") is None:  # published curves: no per-prompt counts
        return from_curves(base, [r for r in frame.passk if r.get("kind") == "current"])
    from rlscope.probes.passk import crossover_k, pass_at_k_curve  # the probe's own estimator (imports torch)

    n = int(base["n"])
    current = [r for r in frame.passk if r.get("kind") == "current" and int(r["n"]) == n
               and r.get("counts") is not None and len(r["counts"]) == len(base["counts"])]
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
              "evaluations": len(current), "from_counts": True}
    d1, dn = final_curve[0] - base_curve[0], final_curve[-1] - base_curve[-1]
    values.update(pass1_diff=float(d1), passn_diff=float(dn))
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


# -- published curves (no per-prompt counts) -------------------------------------------------------------------------
def _curve_points(rec: dict) -> dict[int, float]:
    curve = rec.get("curve") or []
    ks = rec.get("ks") or range(1, len(curve) + 1)
    return {int(k): float(p) for k, p in zip(ks, curve)}


def compare_curves(ks, base, rl, atol: float = 1e-12) -> dict:
    """Two curves at the same listed ``ks`` (ascending): the crossover on the listed ks (the first k with base >= RL;
    None if none), ``between`` (the listed ks it falls between when they are not adjacent integers; None when the
    crossover is exact or at the first listed k), ``interp`` (where RL - base reaches 0, linear in log2 k, between
    those two ks), ``area`` (the mean over log2 k of RL - base: trapezoids on log2 k over the log2 k span; None with
    one k)."""
    ks = np.asarray(ks, dtype=np.float64)
    d = np.asarray(rl, dtype=np.float64) - np.asarray(base, dtype=np.float64)
    hits = np.flatnonzero(d <= atol)
    cross = between = interp = None
    if hits.size:
        i = int(hits[0])
        cross = int(ks[i])
        if i > 0:
            x0, x1 = np.log2(ks[i - 1]), np.log2(ks[i])
            interp = float(2 ** (x0 + d[i - 1] / (d[i - 1] - d[i]) * (x1 - x0)))
            if ks[i] - ks[i - 1] > 1:
                between = [int(ks[i - 1]), int(ks[i])]
            else:
                interp = float(ks[i])  # adjacent ks: the crossover is exact
    area = None
    if ks.size >= 2:
        x = np.log2(ks)
        area = float(np.sum((d[1:] + d[:-1]) / 2 * np.diff(x)) / (x[-1] - x[0]))
    return {"crossover_k": cross, "between": between, "interp": interp, "area": area}


def from_curves(base: dict, current: list[dict]) -> tuple[str, dict]:
    """The boundary from published curves: crossover, pass@1 / pass@kmax and the area between the curves, at the ks
    both list; no intervals, no coverage."""
    b_pts = _curve_points(base)
    if not b_pts:
        raise Skip("the base pass@k record holds neither per-prompt counts nor a curve")
    evals = []
    for rec in current:
        pts = _curve_points(rec)
        ks = sorted(set(pts) & set(b_pts))
        if ks:
            evals.append((rec, ks, [b_pts[k] for k in ks], [pts[k] for k in ks]))
    if not evals:
        raise Skip("no RL pass@k curve shares a listed k with the base curve")
    over_time = []
    for rec, ks, b, c in evals:
        over_time.append((int(rec["step"]), compare_curves(ks, b, c)))
    rec, ks, b, c = evals[-1]
    final = over_time[-1][1]
    kmax = ks[-1]
    pass1 = (b[0], c[0]) if ks[0] == 1 else (None, None)
    d1 = None if pass1[0] is None else c[0] - b[0]
    dn = c[-1] - b[-1]
    cross, between, interp, area = final["crossover_k"], final["between"], final["interp"], final["area"]
    values = {"n": kmax, "prompts": None, "crossover_k": cross, "crossover_found": cross is not None,
              "crossover_k_ci": None, "crossover_over_time": [[s, r["crossover_k"]] for s, r in over_time],
              "pass1_base": pass1[0], "pass1_final": pass1[1], "pass1_diff_ci": None, "passn_base": b[-1],
              "passn_final": c[-1], "passn_diff_ci": None, "pattern": None, "covered_base": None,
              "covered_final": None, "gained": None, "lost": None, "evaluations": len(evals), "from_counts": False,
              "pass1_diff": d1, "passn_diff": dn, "ks": ks, "crossover_between": between,
              "crossover_k_interp": interp, "area_between": area,
              "area_over_time": [[s, r["area"]] for s, r in over_time]}
    label, base_label = str(rec.get("label") or "RL"), str(base.get("label") or "base")
    name = "RL" if label.lower() == "rl" else f"RL ({label})"
    base_name = "the base" if base_label.lower() == "base" else f"the base ({base_label})"
    if cross is None:
        where = f"{name} stays ahead of {base_name} at every listed k up to {kmax}"
    elif cross == ks[0]:
        where = f"{base_name} is at or above {name} from the first listed k (k = {cross})"
    else:
        gap = f" (between {between[0]} and {between[1]}; ~{interp:.3g} interpolated on log2 k)" if between else ""
        verb = "overtakes" if dn < 0 else "catches up with" if dn == 0 else "reaches"
        where = f"{base_name} {verb} {name} at k = {cross}{gap}"
    if cross is not None and dn > 0:
        where += f", and {name} is ahead again at k = {kmax}"
    p1 = "" if d1 is None else f"pass@1 {b[0]:.3g} -> {c[0]:.3g} ({d1:+.3g}), "
    parts = [f"On the published curves {where}: {p1}pass@{kmax} {b[-1]:.3g} -> {c[-1]:.3g} ({dn:+.3g})"]
    if area is not None:
        lead = "RL ahead" if area > 0 else "the base ahead" if area < 0 else "level"
        parts.append(f"area between the curves (RL - base, mean over log2 k from {ks[0]} to {kmax}) {area:+.3g}: "
                     f"{lead} on average")
    if len(over_time) > 1:
        crosses = " -> ".join("none" if r["crossover_k"] is None else str(r["crossover_k"]) for _, r in over_time)
        areas = " -> ".join("?" if r["area"] is None else f"{r['area']:+.3g}" for _, r in over_time)
        parts.append(f"over {len(over_time)} RL curves (steps {over_time[0][0]}..{over_time[-1][0]}) the crossover k "
                     f"went {crosses} and the area {areas}")
    parts.append(f"no interval: the table has no per-prompt counts, so the difference at k = {kmax} ({dn:+.3g}) "
                 f"is not tested against noise, prompts gained or lost cannot be counted, and whether RL narrows or "
                 f"expands the boundary beyond noise is not claimed")
    return "; ".join(parts) + ".", values
