"""The "aha" step: where performance rises most sharply in a sustained way, and whether re-checking and length regrowth
start near it (DeepSeek-AI 2025, R1-Zero's "aha moment"; Gandhi et al. 2025 on the cognitive behaviours behind it).

Performance is held-out accuracy (>= 8 points), else training accuracy, else reward, over the RL steps (binned to at
most 120 points). Its level shifts come from the optimal l2 partition (``stats.partition_l2``, what ruptures' PELT
computes) with a penalty of 3 sigma^2 log n, sigma^2
the long-run noise variance (residuals around a rolling median, inflated for their autocorrelation: training curves
are autocorrelated, and a penalty for independent noise would cut them into many steps). At each shift, the jump of
the segment means has a z-score from the same variance. The aha step is the largest upward
jump with z >= 3 -- upward shifts separated only by transition segments of <= 3 points count as one rise, from the
level before the first to the level after the last -- that is *sharp* (at least 40% of the run's whole rise happens
in it, and around it the levels beat one straight line by a BIC margin of 6 on the effective number of points: a slow
ramp in noise is often cut into one step, and is not an aha) and *sustained* (every later segment stays above the
level before it plus half the jump); a gradual rise, or noise, has none.

Near it (within max(10 steps, 10% of the RL steps)): the first upward shift of the reflection-word rate (rlscope's
behaviour probe, or counted from rollout text) and the break of the length's shrink-then-grow pattern (``two_stage``).
Where the run logs neither reflection words (a rate or completion text) nor length, the verdict says they were not
measured rather than that they did not rise.

An *early* aha -- in the first 10% of the RL steps, carrying >= 80% of the whole rise -- is flagged: on a rule-based
reward that scores only answers in its expected format (verl's GSM8K scorer reads ``#### <number>``, "this also tests
the formatting of the model"), a model that has not yet adopted the format scores near zero, and learning the format
lifts accuracy at once at the start of the run. Such a jump is often the format being learnt, not a reasoning
behaviour (R1-Zero's aha came at an intermediate checkpoint, with reflection rising); the verdict says to check
completions from before and after it. The flag (``early``) is a caution, not a second verdict.
"""

from __future__ import annotations

import math

import numpy as np

from rlscope.analysis import stats
from rlscope.analysis.analyses import Skip, performance, register

MAX_POINTS = 120
Z_MIN = 3.0
SHARE_MIN = 0.4
BIC_MARGIN = 6.0  # the step must beat a straight line by this much (as two_stage's break must beat a line)
EARLY_SHARE, EARLY_RISE = 0.10, 0.80  # an aha this early in the run, carrying this much of the rise: often format


def level_shifts(steps: np.ndarray, y: np.ndarray) -> list[dict]:
    """Level shifts of a series: ``{"step", "before", "after", "jump", "z", "index"}`` per boundary, in order."""
    x, yb = stats.binned(steps, y, MAX_POINTS)
    n = len(yb)
    var = stats.long_run_variance(yb) if n >= 8 else 0.0
    if var == 0:
        return []
    min_size = max(1, n // 50)  # sparse evaluations: the first one alone can be the level before a jump
    bkps = stats.partition_l2(yb, 3 * var * math.log(n), min_size)
    bounds = [0, *bkps]
    segments = [(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    means = [float(yb[a:b].mean()) for a, b in segments]
    out = []
    for i in range(1, len(segments)):
        (a0, b0), (a1, b1) = segments[i - 1], segments[i]
        se = math.sqrt(var / (b0 - a0) + var / (b1 - a1)) or 1e-12
        jump = means[i] - means[i - 1]
        out.append({"index": i, "step": int(round(x[a1])), "step_window": [int(round(x[a1 - 1])), int(round(x[a1]))],
                    "before": means[i - 1], "after": means[i], "jump": jump, "z": jump / se, "se": se,
                    "seg_len_before": b0 - a0, "means": means, "bounds": bounds, "x": x, "y": yb})
    return out


def step_beats_line(rise: dict) -> float:
    """BIC gain of the level shifts over one straight line, around a rise (from the start of the level before it to
    the end of the level after it), on the effective number of points of the line's residuals: a rise that a line
    explains as well is gradual, whatever its size."""
    bounds, means, y = rise["bounds"], rise["means"], rise["y"]
    i0, i1 = rise["index"] - 1, rise["last_index"]  # the segments before and after the rise
    a, b = bounds[i0], bounds[i1 + 1]
    t, yy = np.arange(a, b, dtype=float), y[a:b]
    line_res = yy - np.polyval(np.polyfit(t, yy, 1), t)
    step_fit = np.concatenate([np.full(bounds[j + 1] - bounds[j], means[j]) for j in range(i0, i1 + 1)])
    segments = i1 - i0 + 1
    n, n_eff = len(yy), stats.effective_n(line_res)
    rss_step = float(((yy - step_fit) ** 2).sum())
    return stats.bic(float((line_res ** 2).sum()), n, n_eff, 2) - stats.bic(rss_step, n, n_eff, 2 * segments - 1)


def merge_rises(shifts: list[dict], transition: int = 3) -> list[dict]:
    """Upward shifts joined across short transition segments (a ramp cut into steps by the binning is one rise).

    A joined rise spans ``step_window`` (from the last point before it to the first after it); its ``step`` is the
    shift inside it with the largest jump."""
    out: list[dict] = []
    for sh in shifts:
        prev = out[-1] if out else None
        if (prev is not None and sh["jump"] > 0 and prev["jump"] > 0
                and sh["index"] == prev["last_index"] + 1 and sh["seg_len_before"] <= transition):
            merged = dict(prev, after=sh["after"], jump=sh["after"] - prev["before"], last_index=sh["index"],
                          step_window=[prev["step_window"][0], sh["step_window"][1]])
            if sh["jump"] > prev["largest"]:  # the rise's step is where its largest part happens
                merged.update(step=sh["step"], largest=sh["jump"])
            merged["z"] = merged["jump"] / math.sqrt(prev["se"] ** 2 + sh["se"] ** 2)
            merged["se"] = math.sqrt(prev["se"] ** 2 + sh["se"] ** 2)
            out[-1] = merged
        else:
            out.append(dict(sh, last_index=sh["index"], largest=sh["jump"]))
    return out


def aha_point(steps: np.ndarray, y: np.ndarray) -> dict:
    """The aha shift of a series (see the module docstring): ``{"found", "step", ...}``."""
    shifts = level_shifts(steps, y)
    if not shifts:
        return {"found": False, "reason": "no level shift"}
    means = shifts[0]["means"]
    rise = max(means) - means[0]
    up = [s for s in merge_rises(shifts) if s["jump"] > 0 and s["z"] >= Z_MIN]
    if not up or rise <= 0:
        return {"found": False, "reason": "no significant upward shift", "shifts": len(shifts)}
    best = max(up, key=lambda s: s["jump"])
    share = best["jump"] / rise
    later = means[best["last_index"]:]
    sustained = min(later) >= best["before"] + 0.5 * best["jump"]
    gain = step_beats_line(best)
    sharp = share >= SHARE_MIN and gain >= BIC_MARGIN
    out = {"found": bool(sharp and sustained), "step": best["step"], "step_window": best["step_window"],
           "before": best["before"], "after": best["after"], "jump": best["jump"], "z": best["z"], "share": share,
           "sustained": sustained, "step_vs_line_bic": gain, "shifts": len(shifts)}
    if not out["found"]:
        out["reason"] = ("the largest jump does not last" if not sustained else
                         f"the rise is gradual: the largest sustained jump is {share:.0%} of the whole rise"
                         if share < SHARE_MIN else
                         f"the rise is gradual: around its largest jump ({best['before']:.3g} -> {best['after']:.3g} "
                         f"near step {best['step']}) a straight line fits as well as a step (BIC gain "
                         f"{gain:.1f} < {BIC_MARGIN:g})")
    return out


def first_rise(steps: np.ndarray, y: np.ndarray) -> int | None:
    """The step of the first significant upward level shift of a series (or None)."""
    for s in level_shifts(steps, y):
        if s["jump"] > 0 and s["z"] >= Z_MIN:
            return s["step"]
    return None


def reflection_series(frame) -> tuple[np.ndarray, np.ndarray]:
    """Reflection words per completion per RL step: rlscope's behaviour metric, else counted from rollout text."""
    steps, rate = frame.series("reflection_rate")
    if len(steps) >= 8:
        return steps, rate
    rows = frame.rollout_rows(max_steps=400, per_step=64)
    if not rows:
        return steps[:0], rate[:0]
    from rlscope.probes.behavior import reflection_count  # the probe's own count (its package imports torch)

    per_step: dict[int, list[int]] = {}
    for row in rows:
        if isinstance(row.get("completion"), str):
            per_step.setdefault(int(row["step"]), []).append(reflection_count(row["completion"]))
    ks = sorted(per_step)
    return np.asarray(ks, dtype=np.int64), np.asarray([np.mean(per_step[k]) for k in ks], dtype=np.float64)


@register("aha", requires=(("heldout_accuracy", "train_accuracy", "reward"),),
          outputs=("found", "step", "step_window", "target", "before", "after", "jump", "z", "share", "step_vs_line_bic",
                   "window", "early",
                   "reflection_step", "reflection_near", "length_regrowth_step", "length_near"))
def aha(frame) -> tuple[str, dict]:
    """The step of the sharpest sustained rise in performance, and whether re-checking and length regrowth start near it."""
    perf = performance(frame, min_heldout=8, min_points=8)
    if perf.name is None:
        raise Skip("performance has fewer than 8 RL points")
    p = aha_point(perf.steps, perf.values)
    rl = frame.rl_steps
    window = max(10, int(0.1 * (rl[-1] - rl[0]))) if len(rl) else 10
    values = {k: p.get(k) for k in ("found", "step", "step_window", "before", "after", "jump", "z", "share",
                                    "step_vs_line_bic")}
    values.update({"target": perf.name, "window": window, "found": p["found"], "early": None})
    label = perf.describe()
    if not p["found"]:
        return f"No aha step in {label}: {p.get('reason', 'no sustained sharp rise')}.", values
    span = rl[-1] - rl[0] if len(rl) else 0
    at = (p["step"] - rl[0]) / span if span > 0 else 0.0
    values["early"] = bool(at <= EARLY_SHARE and p["share"] >= EARLY_RISE)
    r_steps, r = reflection_series(frame)
    refl = first_rise(r_steps, r) if len(r_steps) >= 8 else None
    from rlscope.analysis.analyses.two_stage import length_pattern

    length_shape, regrow = length_pattern(frame)
    values.update({"reflection_step": refl, "reflection_near": None if refl is None else abs(refl - p["step"]) <= window,
                   "length_regrowth_step": regrow,
                   "length_near": None if regrow is None else abs(regrow - p["step"]) <= window})
    lo, hi = p["step_window"]
    where = (f"step {p['step']}" if hi - lo <= 1 else
             f"step {p['step']} (between points at steps {lo} and {hi})" if hi == p["step"]
             else f"step {p['step']} (the rise spans steps {lo} to {hi})")
    verdict = (f"Aha at {where}: {label} jumps {p['before']:.3g} -> {p['after']:.3g} ({p['jump']:+.3g}, "
               f"z {p['z']:.1f}, {p['share']:.0%} of the whole rise) and stays up")
    if refl is not None:
        verdict += f"; reflection words start rising at step {refl}" + (" (near it)" if values["reflection_near"]
                                                                         else " (not near it)")
    elif len(r_steps) >= 8:
        verdict += "; no rise in reflection words"
    else:
        verdict += "; reflection words not measured (the run logs no reflection rate or completion text)"
    if regrow is not None:
        verdict += f"; length regrows from step {regrow}" + (" (near it)" if values["length_near"] else " (not near it)")
    elif length_shape not in (None, "unclear"):
        verdict += f"; no length regrowth (length: {length_shape})"
    else:
        verdict += ("; length regrowth not measured (" + ("the run logs too few length points" if length_shape is None
                                                          else "too few or too noisy length points to tell") + ")")
    if values["early"]:
        verdict += (f"; caution: it comes in the first {at:.0%} of the run and carries {p['share']:.0%} of the rise, "
                    "which is what learning the answer format looks like on a reward that scores only well-formatted "
                    "answers -- read completions from before and after it before calling it reasoning")
    return verdict + ".", values
