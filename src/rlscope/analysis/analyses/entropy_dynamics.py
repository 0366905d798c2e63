"""Entropy dynamics: how much exploration is left, when entropy reaches its floor at the current pace, an unexpected
rise, an abrupt cliff, and (where rlscope logged them) the entropy percentiles and Cov(logp, A).

Entropy collapse -- policy entropy falling fast while performance saturates -- is the central failure mode of RL on
reasoning models (Cui et al. 2025); -Cov(logp, A) drives the entropy change, so a persistently positive covariance
means entropy keeps falling. Over the RL steps: the start and end levels (medians of the first and last 10%), the
recent trend (last half: Theil-Sen slope, Kendall's test), the better of a linear and a log-linear (exponential)
fit to the recent half (smaller squared error in entropy units) extrapolated to the floor (``floor_share`` x the start
level, default 10%), and an abrupt drop: a single-step fall far outside the step-to-step noise (a smooth decline,
however fast, is not one).
"""

from __future__ import annotations

import numpy as np

from rlscope.analysis import stats
from rlscope.analysis.analyses import Skip, performance, register

PERCENTILES = ("p10", "p50", "p90", "p99", "top20_share", "above_first_p80_share")


def projection(steps: np.ndarray, h: np.ndarray, floor: float) -> dict:
    """Linear and exponential fits of a (recent) entropy series; the better one's step at which it reaches ``floor``."""
    lin = np.polyfit(steps, h, 1)
    fits = {"linear": (lin, float(((np.polyval(lin, steps) - h) ** 2).sum()))}
    if (h > 0).all() and floor > 0:
        exp = np.polyfit(steps, np.log(h), 1)
        fits["exponential"] = (exp, float(((np.exp(np.polyval(exp, steps)) - h) ** 2).sum()))
    model = min(fits, key=lambda k: fits[k][1])
    (slope, intercept), _ = fits[model]
    if slope >= 0:
        return {"model": model, "floor_step": None}
    target = np.log(floor) if model == "exponential" else floor
    return {"model": model, "floor_step": float((target - intercept) / slope)}


@register("entropy_dynamics", requires=(("entropy",),),
          outputs=("start", "end", "change", "slope", "slope_ci", "p", "floor", "model", "projected_floor_step",
                   "steps_to_floor", "collapse_warning", "rising", "cliff_step", "cliff_from", "cliff_to",
                   "percentiles", "cov_mean", "cov_trend", "performance_improving"))
def entropy_dynamics(frame, floor_share: float = 0.1) -> tuple[str, dict]:
    """Exploration left: entropy trend, projected step at the floor, a rise or a cliff; percentiles and Cov(logp, A)."""
    steps, h = frame.series("entropy")
    if len(steps) < 8:
        raise Skip(f"entropy has {len(steps)} RL points; its dynamics need at least 8")
    start, end = stats.window_median(h, 0.1, end=False), stats.window_median(h, 0.1, end=True)
    if start <= 0:
        raise Skip("the starting entropy is not positive")
    floor = floor_share * start
    half = max(len(h) // 2, 8)
    rs, rh = steps[-half:], h[-half:]
    tr = stats.trend(rs.astype(float), rh)
    falling, rising = stats.direction(tr) < 0, stats.direction(tr) > 0
    proj = projection(rs.astype(float), rh, floor) if falling else {"model": None, "floor_step": None}
    span = int(steps[-1] - steps[0]) or 1
    to_floor = None if proj["floor_step"] is None else max(0, int(round(proj["floor_step"] - steps[-1])))
    warning = bool(end <= floor or (to_floor is not None and to_floor <= span))
    cliff = stats.cliff(steps, h)
    perf = performance(frame)
    improving = None
    if len(perf) >= 8:
        half_p = max(len(perf) // 2, 8)
        improving = stats.direction(stats.trend(perf.steps[-half_p:].astype(float), perf.values[-half_p:])) > 0
    pct = {}
    for name in PERCENTILES:
        ps, pv = frame.series(f"rlscope/entropy/{name}")
        if len(ps) >= 4:
            pct[name] = [stats.window_median(pv, 0.1, end=False), stats.window_median(pv, 0.1, end=True)]
    cs, cv = frame.series("rlscope/cov/mean")
    values = {"start": start, "end": end, "change": (end - start) / start, "slope": tr["slope"],
              "slope_ci": tr["slope_ci"], "p": tr["p"], "floor": floor, "model": proj["model"],
              "projected_floor_step": None if proj["floor_step"] is None else int(round(proj["floor_step"])),
              "steps_to_floor": to_floor, "collapse_warning": warning, "rising": rising,
              "performance_improving": improving, "percentiles": pct or None,
              "cov_mean": float(np.mean(cv)) if len(cv) else None,
              "cov_trend": stats.trend(cs.astype(float), cv)["slope"] if len(cv) >= 4 else None}
    if cliff is not None:
        values.update({"cliff_step": cliff["step"], "cliff_from": cliff["before"], "cliff_to": cliff["after"]})
    verdict = f"Entropy {start:.3g} -> {end:.3g} ({values['change']:+.0%})"
    if end <= floor:
        verdict += f": already at the floor ({floor:.3g}, {floor_share:.0%} of the start)"
    elif falling:
        verdict += (f", still falling ({tr['slope']:+.2e}/step, p {tr['p']:.1g}); at this pace ({proj['model']}) it "
                    + (f"reaches the floor {floor:.3g} in about {to_floor} steps" if to_floor
                       else f"is at the floor {floor:.3g} within a step")
                    + (" -- within another run of this length: collapse ahead" if warning and to_floor
                       else ": the collapse is here" if warning else ""))
    elif rising:
        verdict += f", rising again ({tr['slope']:+.2e}/step, p {tr['p']:.1g}): an unexpected rise"
    else:
        verdict += ", stable over the recent half (no significant trend)"
    if cliff is not None:
        verdict += f"; an abrupt drop at step {cliff['step']} ({cliff['before']:.3g} -> {cliff['after']:.3g})"
    if improving is not None:
        verdict += f"; {perf.describe()} is {'still improving' if improving else 'no longer improving'}"
    if values["cov_mean"] is not None:
        verdict += f"; mean Cov(logp, A) {values['cov_mean']:+.3g}"
    return verdict + ".", values
