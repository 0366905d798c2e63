"""Two stages of response length: does length first shrink and then grow?

RL on reasoning models often goes through two stages: completion length first falls (the policy drops tokens it does
not need, or that hurt), then rises as it learns to spend reasoning where problems need it (DeepSeek-AI 2025, R1's
"aha"; the survey's section 2.2 and appendix C). Over the RL steps, the response length is fitted by a single line
and by a continuous one-break piecewise-linear ("hinge") model, y = a + b x + c max(0, x - tau). The break's start
value comes from ruptures (binary segmentation with its piecewise-linear cost), the fits from scipy. The hinge is
preferred when its BIC is lower by at least 6 ("strong" evidence, Kass and Raftery 1995), with BIC on the effective
number of independent points (the residuals' lag-1 autocorrelation; training curves are autocorrelated). Intervals
(break step, slopes) come from a moving-block bootstrap of the hinge residuals.

Patterns: "shrink then grow" (the two stages: both slopes' intervals exclude 0, first negative, then positive), "grow
then shrink", "shrink", "grow", "flat" (a line's slope interval includes 0).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

from rlscope.analysis import stats
from rlscope.analysis.analyses import Skip, register

MIN_POINTS = 20
MAX_POINTS = 120
BIC_MARGIN = 6.0
BOOTSTRAP = 100


def hinge(x, a, b, c, tau):
    return a + b * x + c * np.maximum(0.0, x - tau)


def hinge_jacobian(x, a, b, c, tau):
    return np.column_stack([np.ones_like(x), x, np.maximum(0.0, x - tau), -c * (x > tau)])


def _line_fit(x, y):
    coef = np.polyfit(x, y, 1)
    return coef, y - np.polyval(coef, x)


def _hinge_fit(x, y, tau0, lo, hi):
    left = x <= tau0
    b0 = np.polyfit(x[left], y[left], 1)[0] if left.sum() >= 2 else 0.0
    b1 = np.polyfit(x[~left], y[~left], 1)[0] if (~left).sum() >= 2 else 0.0
    p0 = [float(np.polyval(np.polyfit(x, y, 1), x[0])) - b0 * x[0], b0, b1 - b0, tau0]
    with warnings.catch_warnings():  # parameter covariances are not used: the intervals are bootstrapped
        warnings.simplefilter("ignore", OptimizeWarning)
        try:  # Levenberg-Marquardt with the analytic Jacobian: fast; the bounded solver when tau leaves [lo, hi]
            popt, _ = curve_fit(hinge, x, y, p0=p0, jac=hinge_jacobian, method="lm", maxfev=2000)
            if not lo <= popt[3] <= hi:
                raise RuntimeError("break outside the allowed range")
        except RuntimeError:
            popt, _ = curve_fit(hinge, x, y, p0=p0, jac=hinge_jacobian, method="trf", maxfev=2000,
                                bounds=([-np.inf, -np.inf, -np.inf, lo], [np.inf, np.inf, np.inf, hi]))
    return popt, y - hinge(x, *popt)


def _break_start(x, y, min_size):
    import ruptures as rpt

    signal = np.column_stack([y, np.ones_like(x), x])
    k = rpt.Binseg(model="linear", min_size=min_size, jump=1).fit(signal).predict(n_bkps=1)[0]
    return float(x[min(max(k, min_size), len(x) - min_size) - 1])


def fit(x: np.ndarray, y: np.ndarray, seed: int = 0) -> dict:
    """The line and hinge fits of (x, y), their BICs, the pattern and bootstrap intervals (see the module docstring)."""
    key = ("two_stage.fit", x.tobytes(), y.tobytes(), seed)
    if key in _CACHE:
        return _CACHE[key]
    _CACHE[key] = out = _fit(x, y, seed)
    if len(_CACHE) > 64:
        _CACHE.pop(next(iter(_CACHE)))
    return out


_CACHE: dict = {}


def _fit(x: np.ndarray, y: np.ndarray, seed: int) -> dict:
    n = len(x)
    min_size = max(5, n // 10)
    lo, hi = float(x[min_size - 1]), float(x[n - min_size])
    line, line_res = _line_fit(x, y)
    n_eff = stats.effective_n(line_res)
    rss_line = float(line_res @ line_res)
    params, res = _hinge_fit(x, y, _break_start(x, y, min_size), lo, hi)
    rss_hinge = float(res @ res)
    delta_bic = stats.bic(rss_line, n, n_eff, 2) - stats.bic(rss_hinge, n, n_eff, 4)
    rng = np.random.default_rng(seed)
    fitted = y - res
    boot = []
    for _ in range(BOOTSTRAP):
        yb = fitted + res[stats.block_indices(n, rng)]
        try:
            p, _ = _hinge_fit(x, yb, params[3], lo, hi)
        except RuntimeError:
            continue
        boot.append((p[3], p[1], p[1] + p[2]))
    boot = np.asarray(boot) if boot else np.zeros((0, 3))
    resamples = np.stack([line_res[stats.block_indices(n, rng)] for _ in range(BOOTSTRAP)], axis=1)
    line_boot = np.polyfit(x, np.polyval(line, x)[:, None] + resamples, 1)[0]  # all resamples in one solve
    out = {"delta_bic": delta_bic, "n_eff": n_eff, "tau": float(params[3]), "tau_ci": stats.percentile_ci(boot[:, 0]),
           "slope_before": float(params[1]), "slope_before_ci": stats.percentile_ci(boot[:, 1]),
           "slope_after": float(params[1] + params[2]), "slope_after_ci": stats.percentile_ci(boot[:, 2]),
           "slope": float(line[0]), "slope_ci": stats.percentile_ci(line_boot), "hinge": params, "line": line}
    out["pattern"] = pattern(out)
    return out


def _sign(ci) -> int:
    """+1 / -1 when the interval excludes 0 on that side, 0 when it includes 0 or is unknown."""
    if ci[0] is None:
        return 0
    return 1 if ci[0] > 0 else -1 if ci[1] < 0 else 0


def pattern(f: dict) -> str:
    if f["delta_bic"] >= BIC_MARGIN:
        s1, s2 = _sign(f["slope_before_ci"]), _sign(f["slope_after_ci"])
        if s1 < 0 < s2:
            return "shrink then grow"
        if s1 > 0 > s2:
            return "grow then shrink"
    s = _sign(f["slope_ci"])
    return {1: "grow", -1: "shrink", 0: "flat"}[s]


@register("two_stage", requires=(("response_length",),),
          outputs=("found", "pattern", "break_step", "break_step_ci", "slope_before", "slope_before_ci", "slope_after",
                   "slope_after_ci", "slope", "slope_ci", "delta_bic", "length_start", "length_end", "n_points",
                   "fit_knots"))
def two_stage(frame, seed: int = 0) -> tuple[str, dict]:
    """Response length: one-break continuous piecewise-linear fit vs a line; "shrink then grow" or one stage."""
    steps, length = frame.series("response_length")
    if len(steps) < MIN_POINTS:
        raise Skip(f"response length has {len(steps)} RL points; two stages need at least {MIN_POINTS}")
    x, y = stats.binned(steps, length, MAX_POINTS)
    if float(np.ptp(y)) == 0.0:
        raise Skip("response length is constant")
    f = fit(x, y, seed)
    found = f["pattern"] == "shrink then grow"
    values = {"found": found, "pattern": f["pattern"], "delta_bic": f["delta_bic"], "n_points": len(steps),
              "slope": f["slope"], "slope_ci": f["slope_ci"],
              "length_start": stats.window_median(length, 0.1, end=False),
              "length_end": stats.window_median(length, 0.1, end=True)}
    # the chosen model's knots (first point, break, last point; a line: its ends), for the report's figure
    knots = [float(x[0]), f["tau"], float(x[-1])] if f["delta_bic"] >= BIC_MARGIN else [float(x[0]), float(x[-1])]
    values["fit_knots"] = [[k, float(hinge(k, *f["hinge"]) if len(knots) == 3 else np.polyval(f["line"], k))]
                           for k in knots]
    if f["pattern"] in ("shrink then grow", "grow then shrink"):
        values.update({"break_step": int(round(f["tau"])), "break_step_ci": _round(f["tau_ci"]),
                       "slope_before": f["slope_before"], "slope_before_ci": f["slope_before_ci"],
                       "slope_after": f["slope_after"], "slope_after_ci": f["slope_after_ci"]})
        verdict = (f"{'Two stages' if found else 'Grow, then shrink'}: length {_verb(f['slope_before'])} "
                   f"{abs(f['slope_before']):.3g} tokens/step until step {values['break_step']} "
                   f"[{values['break_step_ci'][0]}, {values['break_step_ci'][1]}], then {_verb(f['slope_after'])} "
                   f"{abs(f['slope_after']):.3g} tokens/step (BIC gain {f['delta_bic']:.1f}).")
    else:
        how = {"flat": "stays flat", "grow": "grows", "shrink": "shrinks"}[f["pattern"]]
        verdict = (f"One stage: length {how} ({f['slope']:+.3g} tokens/step, 95% [{f['slope_ci'][0]:+.3g}, "
                   f"{f['slope_ci'][1]:+.3g}]), {values['length_start']:.4g} -> {values['length_end']:.4g}; ")
        if f["delta_bic"] >= BIC_MARGIN:
            verdict += (f"its rate changes at step {int(round(f['tau']))} ({f['slope_before']:+.3g} then "
                        f"{f['slope_after']:+.3g} tokens/step) but not its direction.")
        else:
            verdict += f"no break (a break's BIC gain {f['delta_bic']:.1f} is below {BIC_MARGIN:g})."
    return verdict, values


def _round(ci):
    return [None if v is None else int(round(v)) for v in ci]


def _verb(slope: float) -> str:
    return "grows" if slope > 0 else "shrinks"


def break_step(frame) -> int | None:
    """The shrink-then-grow break of the run's length, or None (for other analyses, e.g. aha)."""
    steps, length = frame.series("response_length")
    if len(steps) < MIN_POINTS or math.isclose(float(np.ptp(length)), 0.0):
        return None
    x, y = stats.binned(steps, length, MAX_POINTS)
    f = fit(x, y)
    return int(round(f["tau"])) if f["pattern"] == "shrink then grow" else None
