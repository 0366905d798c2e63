"""The performance ceiling from the sigmoid compute curve of ScaleRL (Khatri et al. 2025, "The Art of Scaling
Reinforcement Learning Compute for LLMs"), forecast from a prefix and checked against the run's end.

ScaleRL fits pass rate against RL compute C as R(C) = R0 + (A - R0) / (1 + (C_mid / C)^B): A is the asymptote (the
ceiling the recipe can reach), B the efficiency, C_mid the compute at half the gain; R0 is the starting performance.
Here C is the number of RL steps so far (or ``axis="tokens"``: the tokens processed, when the run logs them), R the
run's performance (held-out accuracy when it has >= 6 points, else training accuracy, else reward). R0, A, B, C_mid
are fitted with lmfit (R0 free but bounded near the first points: fixing it at their value would bias A, since the
curve already rises there; B in [0.2, 10]; A <= 1 for a rate in [0, 1]); the interval of A is lmfit's standard error
x 1.96, inflated by sqrt(n / n_eff) for autocorrelated residuals (95-97% coverage on planted curves, also under AR(1)
noise). The
forecast fits the first half of the points and predicts the last value; it is marked unreliable when that half has
not passed its own fitted midpoint or leaves A's interval wider than twice the metric's range (ScaleRL extrapolates
only from curves past their midpoint). The entropy law's ceiling (``entropy_law``)
is put beside A.
"""

from __future__ import annotations

import math

import numpy as np

from rlscope.analysis import stats
from rlscope.analysis.analyses import Skip, fmt3, performance_series, register

MIN_POINTS = 10


def sigmoid(c, r0, a, b, c_mid):
    return r0 + (a - r0) / (1.0 + (c_mid / c) ** b)


def fit_sigmoid(c: np.ndarray, r: np.ndarray, r0: float, rate: bool) -> dict:
    """lmfit of R0, A, B, C_mid (R0 starting at ``r0``, bounded near it); ``rate``: the metric is a rate, so A <= 1."""
    import lmfit

    span = float(np.ptp(r)) or 1.0
    model = lmfit.Model(sigmoid, independent_vars=["c"])
    params = model.make_params(r0=r0, a=float(r.max()), b=1.0, c_mid=float(np.median(c)))
    params["r0"].set(min=float(r.min()) - span, max=r0 + 0.5 * span)
    params["a"].set(min=float(r.min()) - span, max=1.0 if rate else float(r.max()) + 10 * span)
    params["b"].set(min=0.2, max=10.0)
    params["c_mid"].set(min=float(c.min()) * 0.5, max=float(c.max()) * 20)
    res = model.fit(r, params, c=c)
    resid = r - res.best_fit
    inflate = math.sqrt(len(r) / stats.effective_n(resid))
    se = res.params["a"].stderr
    half = None if se is None or not np.isfinite(se) else stats.Z95 * se * inflate
    a = float(res.params["a"].value)
    return {"a": a, "a_ci": [a - half, a + half] if half is not None else [None, None],
            "r0": float(res.params["r0"].value), "b": float(res.params["b"].value), "c_mid": float(res.params["c_mid"].value), "r2": float(res.rsquared),
            "fit": res}


@register("ceiling", requires=(("heldout_accuracy", "train_accuracy", "reward"),),
          outputs=("asymptote", "asymptote_ci", "efficiency", "c_mid", "r0", "r2", "axis", "target",
                   "forecast_asymptote", "forecast_end", "actual_end", "forecast_error", "forecast_reliable",
                   "entropy_law_ceiling"))
def ceiling(frame, axis: str = "steps") -> tuple[str, dict]:
    """ScaleRL's sigmoid R = R0 + (A - R0) / (1 + (C_mid/C)^B) over steps: asymptote A, forecast from the first half."""
    target, steps, r = performance_series(frame)
    if len(steps) < MIN_POINTS:
        raise Skip(f"{target or 'performance'} has {len(steps)} RL points; the sigmoid needs at least {MIN_POINTS}")
    rl = frame.rl_steps
    c = (steps - (rl[0] if len(rl) else steps[0]) + 1).astype(np.float64)
    if axis == "tokens":
        t_steps, tokens = frame.series("tokens")
        if len(t_steps) < 2:
            raise Skip("axis 'tokens' asked for, but the run logs no token count")
        c = np.interp(steps, t_steps, tokens)
    elif axis != "steps":
        raise ValueError(f"ceiling: axis must be 'steps' or 'tokens', got {axis!r}")
    c = np.maximum(c, 1e-9)
    rate = bool(r.min() >= 0 and r.max() <= 1)
    r0 = float(np.median(r[:max(3, len(r) // 20)]))
    if float(np.ptp(r)) == 0:
        raise Skip(f"{target} is constant")
    f = fit_sigmoid(c, r, r0, rate)
    half = len(r) // 2
    values = {"asymptote": f["a"], "asymptote_ci": f["a_ci"], "efficiency": f["b"], "c_mid": f["c_mid"], "r0": f["r0"],
              "r2": f["r2"], "axis": axis, "target": target, "actual_end": stats.window_median(r, 0.1, end=True)}
    if half >= 6:
        try:
            pf = fit_sigmoid(c[:half], r[:half], r0, rate)
            end = float(sigmoid(c[-1], pf["r0"], pf["a"], pf["b"], pf["c_mid"]))
            lo, hi = pf["a_ci"]
            # ScaleRL extrapolates only from curves past their midpoint: before it, A is barely constrained
            early = pf["c_mid"] > c[half - 1]
            loose = lo is None or hi - lo > 2 * float(np.ptp(r))
            reliable = not (early or loose)
            why = "the first half has not passed the curve's midpoint" if early else \
                "the first half leaves the asymptote's interval wider than twice the metric's range"
            values.update({"forecast_asymptote": pf["a"], "forecast_end": end,
                           "forecast_error": end - values["actual_end"], "forecast_reliable": bool(reliable)})
            if not reliable:
                values["forecast_note"] = why
        except (ValueError, RuntimeError):
            pass
    try:
        from rlscope.analysis.analyses.entropy_law import law

        fitted = law(frame)
        if fitted["r2"] >= 0.5:  # compare with the law's ceiling only where the law holds
            values["entropy_law_ceiling"] = fitted["ceiling"]
    except Skip:
        pass
    ci = f["a_ci"]
    fits = f["r2"] >= 0.5
    verdict = (f"{target.replace('_', ' ')} {'follows' if fits else 'fits poorly'} a sigmoid in RL {axis} "
               f"(R^2 {f['r2']:.2f}){'' if fits else ', so its asymptote is loose:'} A = {f['a']:.3g} "
               f"[{fmt3(ci[0])}, {fmt3(ci[1])}] from R0 = {f['r0']:.3g}")
    if values.get("forecast_end") is not None:
        verdict += (f"; fitted on the first half it forecasts {values['forecast_end']:.3g} at the end, where the run "
                    f"is at {values['actual_end']:.3g} (error {values['forecast_error']:+.3g})")
        if not values["forecast_reliable"]:
            verdict += f" -- not a usable forecast: {values['forecast_note']}"
    if values.get("entropy_law_ceiling") is not None:
        verdict += f"; the entropy law's ceiling is {values['entropy_law_ceiling']:.3g}"
    return verdict + ".", values
