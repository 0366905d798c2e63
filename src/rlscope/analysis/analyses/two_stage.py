"""Two stages of response length: does length first shrink and then grow?

RL on reasoning models often goes through two stages: completion length first falls (the policy drops tokens it does
not need, or that hurt), then rises as it learns to spend reasoning where problems need it (DeepSeek-AI 2025, R1's
"aha"; the survey's section 2.2 and appendix C). Over the RL steps, the response length is fitted by a single line
and by a continuous one-break piecewise-linear ("hinge") model, y = a + b x + c max(0, x - tau). The hinge is fitted
by profile least squares: for each break tau on a grid (every logged step and three between each pair, at least
``min_size`` points on either side) the rest is linear, so the best tau is found exactly on the grid and refined by a
golden-section search -- a global fit that coarse logs (20-30 points) and a fast early drop do not trap. The hinge is
preferred when its BIC is lower by at least 6 ("strong" evidence, Kass and Raftery 1995), with BIC on the effective
number of independent points of the hinge's residuals (their lag-1 autocorrelation: training curves are
autocorrelated; a line's residuals around a curve that turns are autocorrelated by the misfit itself, so they would
hide the very break being tested). Intervals (break step, slopes) come from a moving-block bootstrap of the hinge
residuals.

Patterns: "shrink then grow" (the two stages: both slopes' intervals exclude 0, first negative, then positive), "grow
then shrink", "shrink", "grow", "flat" -- only when the line's slope interval, over the whole run, bounds the change
within 10% of the level (a slope interval that includes 0 is not evidence of flatness) -- and otherwise "not
measurable": too few or too noisy points to tell a trend or a turn.

Length at the cap is not the policy's choice: when 15% or more of completions are cut at the length cap (the logged
clipped ratio, or the share of steps where the mean length is pinned at its maximum, ``health.truncation``), the
verdict adds a caution, since the fit then describes the cap as much as the policy.
"""

from __future__ import annotations

import math

import numpy as np

from rlscope.analysis import stats
from rlscope.analysis.analyses import Skip, register

MIN_POINTS = 12
MAX_POINTS = 120
BIC_MARGIN = 6.0
BOOTSTRAP = 100
TRUNCATED = 0.15  # this share of completions cut at the cap: the length measures the cap (health's crit level)
FLAT_SHARE = 0.10  # "flat": the slope's 95% interval moves the length by at most 10% of its level over the run
_SUBSTEPS = 4  # grid points per interval between neighbouring logged steps


def hinge(x, a, b, c, tau):
    return a + b * x + c * np.maximum(0.0, x - tau)


def _line_fit(x, y):
    """Least-squares line(s): ``y`` (n,) or (n, B); returns ([slope, intercept], residuals)."""
    xc = x - x.mean()
    slope = xc @ (y - y.mean(axis=0)) / float(xc @ xc)
    intercept = y.mean(axis=0) - slope * x.mean()
    coef = np.array([slope, intercept])
    return coef, y - (np.multiply.outer(x, slope) + intercept)


def min_size(n: int) -> int:
    """Points a stage needs on either side of the break: 3 on a coarse log, a tenth of the points on a long one."""
    return max(3, n // 10)


def _grid(u: np.ndarray, m: int) -> np.ndarray:
    """Candidate breaks: the points from the m-th to the m-th last, and ``_SUBSTEPS - 1`` between each pair."""
    lo, hi = m - 1, len(u) - m
    if hi <= lo:
        return u[lo:lo + 1]
    parts = [np.linspace(u[i], u[i + 1], _SUBSTEPS, endpoint=False) for i in range(lo, hi)]
    return np.concatenate([*parts, u[hi:hi + 1]])


def _bases(u: np.ndarray, taus: np.ndarray):
    """The hinge's design for every break, QR-factorised at once: Q (G, n, 3), R (G, 3, 3)."""
    design = np.stack(np.broadcast_arrays(np.ones_like(u)[None, :], u[None, :],
                                          np.maximum(0.0, u[None, :] - taus[:, None])), axis=-1)
    return np.linalg.qr(design)


def _profile(u: np.ndarray, ys: np.ndarray, taus: np.ndarray):
    """For every column of ``ys`` (n, B): the grid index of the least-squares break and the hinge's (a, b, c)."""
    q, r = _bases(u, taus)
    proj = np.matmul(q.transpose(0, 2, 1), ys)  # (G, 3, B): one batched product
    rss = (ys * ys).sum(axis=0)[None, :] - (proj ** 2).sum(axis=1)
    best = np.argmin(rss, axis=0)
    cols = np.arange(ys.shape[1])
    coef = np.linalg.solve(r[best], proj[best, :, cols][..., None])[..., 0]
    return best, coef


def _rss_at(u, y, tau) -> tuple[float, np.ndarray]:
    design = np.column_stack([np.ones_like(u), u, np.maximum(0.0, u - tau)])
    coef = np.linalg.solve(design.T @ design, design.T @ y)  # u in [0, 1]: the normal equations are well conditioned
    res = y - design @ coef
    return float(res @ res), coef


def _hinge_fit(u: np.ndarray, y: np.ndarray, taus: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The least-squares hinge (a, b, c, tau) of (u, y): the best break on the grid, refined by golden section
    between its neighbours; and its residuals."""
    g, _ = _profile(u, y[:, None], taus)
    g = int(g[0])
    lo, hi = taus[max(g - 1, 0)], taus[min(g + 1, len(taus) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = _rss_at(u, y, c)[0], _rss_at(u, y, d)[0]
    for _ in range(30):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = _rss_at(u, y, c)[0]
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = _rss_at(u, y, d)[0]
    tau = min([taus[g], c, d], key=lambda t: _rss_at(u, y, t)[0])
    _, coef = _rss_at(u, y, tau)
    params = np.array([*coef, tau])
    return params, y - hinge(u, *params)


def fit(x: np.ndarray, y: np.ndarray, seed: int = 0) -> dict:
    """The line and hinge fits of (x, y), their BICs, the pattern and bootstrap intervals (see the module docstring)."""
    key = ("two_stage.fit", x.tobytes(), y.tobytes(), seed)
    if key in _CACHE:
        return _CACHE[key]
    _CACHE[key] = out = _fit(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64), seed)
    if len(_CACHE) > 64:
        _CACHE.pop(next(iter(_CACHE)))
    return out


_CACHE: dict = {}


def _fit(x: np.ndarray, y: np.ndarray, seed: int) -> dict:
    n = len(x)
    x0, span = float(x[0]), float(x[-1] - x[0]) or 1.0
    u = (x - x0) / span  # the fits run on [0, 1]: well conditioned whatever the steps
    taus = _grid(u, min_size(n))
    line, line_res = _line_fit(x, y)
    rss_line = float(line_res @ line_res)
    params, res = _hinge_fit(u, y, taus)
    rss_hinge = float(res @ res)
    n_eff = stats.effective_n(res)
    delta_bic = stats.bic(rss_line, n, n_eff, 2) - stats.bic(rss_hinge, n, n_eff, 4)
    rng = np.random.default_rng(seed)
    fitted = y - res
    ys = fitted[:, None] + res[stats.block_indices(n, rng, count=BOOTSTRAP)].T
    g, coef = _profile(u, ys, taus)
    boot = np.column_stack([x0 + taus[g] * span, coef[:, 1] / span, (coef[:, 1] + coef[:, 2]) / span])
    resamples = line_res[stats.block_indices(n, rng, count=BOOTSTRAP)].T
    line_boot = _line_fit(x, np.polyval(line, x)[:, None] + resamples)[0][0]  # all resamples at once
    a, b, c, t = params
    out = {"delta_bic": delta_bic, "n_eff": n_eff, "tau": x0 + t * span, "tau_ci": stats.percentile_ci(boot[:, 0]),
           "slope_before": b / span, "slope_before_ci": stats.percentile_ci(boot[:, 1]),
           "slope_after": (b + c) / span, "slope_after_ci": stats.percentile_ci(boot[:, 2]),
           "slope": float(line[0]), "slope_ci": stats.percentile_ci(line_boot),
           "hinge": np.array([a - b * x0 / span, b / span, c / span, x0 + t * span]), "line": line,
           "level": float(np.median(y)), "span": span}
    out["pattern"] = pattern(out)
    return out


def _sign(ci) -> int:
    """+1 / -1 when the interval excludes 0 on that side, 0 when it includes 0 or is unknown."""
    if ci[0] is None:
        return 0
    return 1 if ci[0] > 0 else -1 if ci[1] < 0 else 0


def flat_bound(f: dict) -> float | None:
    """The largest change over the run the line's slope interval allows, as a share of the level (None: unknown)."""
    lo, hi = f["slope_ci"]
    if lo is None or f["level"] == 0:
        return None
    return max(abs(lo), abs(hi)) * f["span"] / abs(f["level"])


def pattern(f: dict) -> str:
    if f["delta_bic"] >= BIC_MARGIN:
        s1, s2 = _sign(f["slope_before_ci"]), _sign(f["slope_after_ci"])
        if s1 < 0 < s2:
            return "shrink then grow"
        if s1 > 0 > s2:
            return "grow then shrink"
    s = _sign(f["slope_ci"])
    if s:
        return "grow" if s > 0 else "shrink"
    bound = flat_bound(f)
    return "flat" if bound is not None and bound <= FLAT_SHARE else "unclear"


@register("two_stage", requires=(("response_length",),),
          outputs=("found", "pattern", "break_step", "break_step_ci", "slope_before", "slope_before_ci", "slope_after",
                   "slope_after_ci", "slope", "slope_ci", "delta_bic", "length_start", "length_end", "n_points",
                   "fit_knots", "truncation"))
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
    moves = f"{values['length_start']:.4g} -> {values['length_end']:.4g} (range {np.min(y):.4g} to {np.max(y):.4g})"
    if f["pattern"] == "unclear":
        raise Skip(f"length moves ({moves}) but {len(steps)} points do not tell a trend or a turn from the noise: a "
                   f"line's slope, 95% [{f['slope_ci'][0]:+.3g}, {f['slope_ci'][1]:+.3g}] tokens/step, allows "
                   f"{flat_bound(f):.0%} of the level over the run, so it is not flat, and one break gains "
                   f"{f['delta_bic']:.1f} in BIC ({BIC_MARGIN:g} needed) with two clear slopes", values)
    if f["pattern"] in ("shrink then grow", "grow then shrink"):
        values.update({"break_step": int(round(f["tau"])), "break_step_ci": _round(f["tau_ci"]),
                       "slope_before": f["slope_before"], "slope_before_ci": f["slope_before_ci"],
                       "slope_after": f["slope_after"], "slope_after_ci": f["slope_after_ci"]})
        verdict = (f"{'Two stages' if found else 'Grow, then shrink'}: length {_verb(f['slope_before'])} "
                   f"{abs(f['slope_before']):.3g} tokens/step until step {values['break_step']} "
                   f"[{values['break_step_ci'][0]}, {values['break_step_ci'][1]}], then {_verb(f['slope_after'])} "
                   f"{abs(f['slope_after']):.3g} tokens/step (BIC gain {f['delta_bic']:.1f}; {moves}).")
    else:
        how = {"flat": "stays flat", "grow": "grows", "shrink": "shrinks"}[f["pattern"]]
        verdict = (f"One stage: length {how} ({f['slope']:+.3g} tokens/step, 95% [{f['slope_ci'][0]:+.3g}, "
                   f"{f['slope_ci'][1]:+.3g}]"
                   + (f": within {flat_bound(f):.0%} of its level over the run" if f["pattern"] == "flat" else "")
                   + f"), {values['length_start']:.4g} -> {values['length_end']:.4g}; ")
        if f["delta_bic"] >= BIC_MARGIN:
            verdict += (f"its rate changes at step {int(round(f['tau']))} ({f['slope_before']:+.3g} then "
                        f"{f['slope_after']:+.3g} tokens/step) but not its direction.")
        else:
            verdict += f"no break (a break's BIC gain {f['delta_bic']:.1f} is below {BIC_MARGIN:g})."
    from rlscope.analysis.analyses.health import truncation

    t = truncation(frame)
    values["truncation"] = None if t is None else t["share"]
    if t is not None and t["share"] >= TRUNCATED:
        verdict += (f" Caution: {'at least ' if t['cap'] is not None else ''}{t['share']:.0%} of completions are cut "
                    f"at the length cap (last quarter), so this length measures the cap as much as the policy.")
    return verdict, values


def _round(ci):
    return [None if v is None else int(round(v)) for v in ci]


def _verb(slope: float) -> str:
    return "grows" if slope > 0 else "shrinks"


def length_pattern(frame) -> tuple[str | None, int | None]:
    """(pattern, break step) of the run's length for other analyses (e.g. aha): the break only for "shrink then
    grow"; (None, None) when the run has too few length points or a constant length."""
    steps, length = frame.series("response_length")
    if len(steps) < MIN_POINTS or math.isclose(float(np.ptp(length)), 0.0):
        return None, None
    x, y = stats.binned(steps, length, MAX_POINTS)
    f = fit(x, y)
    return f["pattern"], (int(round(f["tau"])) if f["pattern"] == "shrink then grow" else None)
