"""The performance ceiling from the sigmoid compute curve of ScaleRL (Khatri et al. 2025, "The Art of Scaling
Reinforcement Learning Compute for LLMs"), forecast from a prefix and checked against the run's end.

ScaleRL fits pass rate against RL compute C as R(C) = R0 + (A - R0) / (1 + (C_mid / C)^B): A is the asymptote (the
ceiling the recipe can reach), B the efficiency, C_mid the compute at half the gain; R0 is the starting performance.
Here C is the number of RL steps so far (or ``axis="tokens"``: the tokens processed, when the run logs them), R the
run's performance (held-out accuracy when it has >= 6 points, else training accuracy, else reward). R0, A, B, C_mid
are fitted by variable projection (Golub and Pereyra 1973): R is linear in (R0, A) given (B, C_mid), so (R0, A) are
solved exactly, within their bounds, on a grid of (B, C_mid) that is refined around its best cell -- a global fit,
with R0 free but bounded near the first points (fixing it at their value would bias A, since the curve already rises
there), B in [0.2, 10] and R0, A in [0, 1] for a rate. A's interval is its standard error from the Jacobian at the
optimum (as lmfit reports it) x 1.96, inflated by sqrt(n / n_eff) for autocorrelated residuals (95-97% coverage on
planted curves, also under AR(1) noise).

A is reported as the ceiling only when it can be one: inside the metric's range (an accuracy's [0, 1]), not below
the level the run has already reached (beyond the noise of that level), with the run past the fitted curve's midpoint
(before it, A is barely constrained, as ScaleRL notes), and not while the run is still rising at its end when the
fitted curve has already flattened there (the sigmoid then has found no ceiling: the run's own end contradicts it),
and only when the run rose at all: its last third above its first tenth beyond their long-run noise (z > 1.96; a
sigmoid through a flat, noisy curve -- a noisy reward on a small batch -- puts A at the curve's level with a narrow
interval, which is no ceiling). The forecast fits the first half of the points and predicts the last value; it is marked
unreliable when that half has not passed its own fitted midpoint or leaves A's interval wider than twice the metric's
range (ScaleRL extrapolates only from curves past their midpoint).

The entropy law's ceiling (``entropy_law``, where the law holds) is put beside A; when the two disagree (intervals
apart), the verdict says which to trust and why: the one whose own forecast from an early part of the run came true,
and of two that both did, the one that extrapolates less (the sigmoid from a run near its asymptote, the law from an
entropy near 0).
"""

from __future__ import annotations

import math

import numpy as np

from rlscope.analysis import stats
from rlscope.analysis.analyses import Skip, clip_to, fmt3, performance, register

MIN_POINTS = 10
SATURATED = 0.95  # the fitted curve has made this share of its gain: flat at the run's end


def sigmoid(c, r0, a, b, c_mid):
    return r0 + (a - r0) / (1.0 + (c_mid / c) ** b)


def _share(c: np.ndarray, b: np.ndarray, log_mid: np.ndarray) -> np.ndarray:
    """s = 1 / (1 + (C_mid / C)^B) for each (B, C_mid) pair: (G, n)."""
    z = b[:, None] * (log_mid[:, None] - np.log(c)[None, :])
    return 1.0 / (1.0 + np.exp(np.clip(z, -700, 700)))


def _linear(s: np.ndarray, r: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least squares of R = r0 (1 - s) + A s over (r0, A) in ``box`` ([[r0 lo, hi], [A lo, hi]]) for each row of
    ``s``: the unconstrained solution when inside the box, else the best of the box's edges (one variable at a bound,
    the other solved and clipped). Returns the (G, 2) parameters and (G,) squared errors."""
    u, v = 1.0 - s, s
    uu, uv, vv = (u * u).sum(1), (u * v).sum(1), (v * v).sum(1)
    ur, vr, rr = u @ r, v @ r, float(r @ r)

    def rss(p0, p1):
        return rr - 2 * (p0 * ur + p1 * vr) + p0 * p0 * uu + 2 * p0 * p1 * uv + p1 * p1 * vv

    det = uu * vv - uv * uv
    with np.errstate(divide="ignore", invalid="ignore"):
        p0 = np.where(det > 1e-300, (ur * vv - vr * uv) / det, np.nan)
        p1 = np.where(det > 1e-300, (vr * uu - ur * uv) / det, np.nan)
    inside = (p0 >= box[0, 0]) & (p0 <= box[0, 1]) & (p1 >= box[1, 0]) & (p1 <= box[1, 1])
    cands = [(np.where(inside, p0, np.nan), np.where(inside, p1, np.nan))]
    with np.errstate(divide="ignore", invalid="ignore"):
        for bound in box[0]:  # r0 at a bound, A solved
            cands.append((np.full_like(ur, bound), np.clip((vr - bound * uv) / vv, *box[1])))
        for bound in box[1]:  # A at a bound, r0 solved
            cands.append((np.clip((ur - bound * uv) / uu, *box[0]), np.full_like(ur, bound)))
    errs = np.stack([np.where(np.isfinite(a) & np.isfinite(b), rss(a, b), np.inf) for a, b in cands])
    pick = np.argmin(errs, axis=0)
    rows = np.arange(len(ur))
    params = np.stack([np.stack(cands[k]) for k in range(len(cands))])[pick, :, rows]
    return params, errs[pick, rows]


def fit_sigmoid(c: np.ndarray, r: np.ndarray, r0: float, rate: bool) -> dict:
    """The least-squares sigmoid of (c, r) within the bounds of the module docstring (``r0``: the starting level R0
    is bounded near; ``rate``: the metric is a rate, so A <= 1), with A's interval."""
    c, r = np.asarray(c, dtype=np.float64), np.asarray(r, dtype=np.float64)
    span = float(np.ptp(r)) or 1.0
    low = max(float(r.min()) - span, 0.0) if rate else float(r.min()) - span  # a rate's R0 and A lie in [0, 1]
    box = np.array([[low, max(r0 + 0.5 * span, low)], [low, 1.0 if rate else float(r.max()) + 10 * span]])
    b_lo, b_hi = math.log(0.2), math.log(10.0)
    m_lo, m_hi = math.log(max(float(c.min()) * 0.5, 1e-12)), math.log(float(c.max()) * 20)
    lb, lm = np.linspace(b_lo, b_hi, 33), np.linspace(m_lo, m_hi, 49)
    best = None
    for _ in range(5):  # a grid over (log B, log C_mid), refined four times around its best cell
        gb, gm = np.meshgrid(lb, lm, indexing="ij")
        gb, gm = gb.ravel(), gm.ravel()
        params, err = _linear(_share(c, np.exp(gb), gm), r, box)
        i = int(np.argmin(err))
        if best is None or err[i] <= best[0]:
            best = (float(err[i]), float(gb[i]), float(gm[i]), params[i])
        db, dm = (lb[1] - lb[0]) * 1.5, (lm[1] - lm[0]) * 1.5
        lb = np.linspace(max(best[1] - db, b_lo), min(best[1] + db, b_hi), 13)
        lm = np.linspace(max(best[2] - dm, m_lo), min(best[2] + dm, m_hi), 13)
    rss, log_b, log_mid, (p_r0, p_a) = best
    b, c_mid = math.exp(log_b), math.exp(log_mid)
    fitted = sigmoid(c, p_r0, p_a, b, c_mid)
    resid = r - fitted
    # A's standard error from the Jacobian in (R0, A, B, log C_mid) at the optimum: s^2 (J^T J)^-1, as lmfit reports
    q = (c_mid / c) ** b
    sh = 1.0 / (1.0 + q)
    jac = np.column_stack([1 - sh, sh, -(p_a - p_r0) * sh ** 2 * q * np.log(c_mid / c),
                           -(p_a - p_r0) * sh ** 2 * q * b])
    dof = len(r) - 4
    se = None
    if dof > 0:
        try:
            cov = np.linalg.inv(jac.T @ jac) * (rss / dof)
            se = math.sqrt(cov[1, 1]) if cov[1, 1] > 0 and np.isfinite(cov[1, 1]) else None
        except np.linalg.LinAlgError:
            se = None
    half = None if se is None else stats.Z95 * se * math.sqrt(len(r) / stats.effective_n(resid))
    tss = float(((r - r.mean()) ** 2).sum())
    return {"a": float(p_a), "a_ci": [p_a - half, p_a + half] if half is not None else [None, None],
            "r0": float(p_r0), "b": b, "c_mid": c_mid, "r2": 1 - rss / tss if tss > 0 else math.nan,
            "fitted": fitted}


def end_level(r: np.ndarray, share: float = 0.1) -> tuple[float, float]:
    """The run's level at its end, the mean of the last ``share`` of the points (at least 3), and the standard error
    of that mean (the long-run noise variance: autocorrelated points are worth fewer)."""
    k = min(len(r), max(3, int(round(len(r) * share))))
    return float(np.mean(r[-k:])), math.sqrt(stats.long_run_variance(r) / k)


def compare_ceilings(sig: dict, law: dict) -> dict:
    """Whether the sigmoid's A and the entropy law's b - a agree (their intervals overlap), and if not which to trust
    and why (see the module docstring)."""
    (s_lo, s_hi), (l_lo, l_hi) = sig["ci"], law["ci"]
    if None in (s_lo, s_hi, l_lo, l_hi) or (s_lo <= l_hi and l_lo <= s_hi):
        return {"agree": True, "trust": None, "why": None}
    sig_ok, law_ok = sig["forecast_ok"], law["forecast_ok"]
    if sig_ok and not law_ok:
        trust, why = "sigmoid", "its forecast from the first half came true; the law's from its early steps did not"
    elif law_ok and not sig_ok:
        trust, why = "entropy law", ("its forecast from the early steps came true; the sigmoid's from the first half "
                                     f"did not{' (' + sig['note'] + ')' if sig.get('note') else ''}")
    elif sig_ok and law_ok:
        # both held on the run so far: the one that extrapolates less -- how much of the sigmoid's gain is still to
        # come, against how much of the way to zero entropy is still to go
        if sig["left"] <= law["left"]:
            trust, why = "sigmoid", (f"both forecasts came true; the run has made {1 - sig['left']:.0%} of the "
                                     f"sigmoid's gain but spent only {1 - law['left']:.0%} of its entropy")
        else:
            trust, why = "entropy law", (f"both forecasts came true; entropy is {1 - law['left']:.0%} of the way to "
                                         f"0, the run only {1 - sig['left']:.0%} of the way to the sigmoid's A")
    else:
        trust, why = None, "neither forecast from an early part of the run came true, so neither ceiling is trustworthy"
    return {"agree": False, "trust": trust, "why": why}


@register("ceiling", requires=(("heldout_accuracy", "train_accuracy", "reward"),),
          outputs=("asymptote", "asymptote_ci", "asymptote_fit", "asymptote_note", "efficiency", "c_mid", "r0", "r2",
                   "axis", "target", "target_label", "end_level", "end_level_se", "gain_made", "end_rising",
                   "forecast_asymptote", "forecast_end", "actual_end", "forecast_error", "forecast_reliable",
                   "entropy_law_ceiling", "entropy_law_ceiling_ci", "ceilings_agree", "trust", "trust_why"))
def ceiling(frame, axis: str = "steps") -> tuple[str, dict]:
    """ScaleRL's sigmoid R = R0 + (A - R0) / (1 + (C_mid/C)^B) over steps: asymptote A, forecast from the first half."""
    perf = performance(frame)
    steps, r = perf.steps, perf.values
    if len(steps) < MIN_POINTS:
        raise Skip(f"{perf.describe()} has {len(steps)} RL points; the sigmoid needs at least {MIN_POINTS}")
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
    if float(np.ptp(r)) == 0:
        raise Skip(f"{perf.describe()} is constant")
    rate = perf.accuracy or bool(r.min() >= 0 and r.max() <= 1 and perf.name != "reward")
    r0 = float(np.median(r[:max(3, len(r) // 20)]))
    f = fit_sigmoid(c, r, r0, rate)
    end, end_se = end_level(r)
    gain = float(1.0 / (1.0 + (f["c_mid"] / c[-1]) ** f["b"]))  # share of the sigmoid's gain made by the run's end
    third = max(len(r) // 3, 8)
    rising = stats.direction(stats.trend(steps[-third:].astype(float), r[-third:])) > 0
    half = len(r) // 2
    k0, k1 = max(3, len(r) // 10), max(3, len(r) // 3)
    rise = float(r[-k1:].mean() - r[:k0].mean())
    rise_se = math.sqrt(stats.long_run_variance(r) * (1 / k0 + 1 / k1))
    values = {"asymptote_fit": f["a"], "efficiency": f["b"], "c_mid": f["c_mid"], "r0": f["r0"], "r2": f["r2"],
              "axis": axis, "target": perf.name, "target_label": perf.describe(), "end_level": end,
              "end_level_se": end_se, "gain_made": gain, "end_rising": rising,
              "actual_end": stats.window_median(r, 0.1, end=True)}
    lo, hi = f["a_ci"]
    bounds = perf.bounds
    note = None
    if bounds is not None and not bounds[0] <= f["a"] <= bounds[1]:
        note = f"A = {f['a']:.3g} lies outside a {perf.label}'s range [{bounds[0]:g}, {bounds[1]:g}]"
    elif not rise > stats.Z95 * rise_se:
        note = (f"the run shows no significant rise (its last third against its first tenth: {rise:+.3g} +- "
                f"{stats.Z95 * rise_se:.2g}): a sigmoid through a flat, noisy curve puts A ({f['a']:.3g}) at the "
                f"curve's level, which is no ceiling")
    elif hi is not None and hi < end - stats.Z95 * end_se:
        note = (f"the fitted A = {f['a']:.3g} [{lo:.3g}, {hi:.3g}] lies below the level the run has already reached "
                f"({end:.3g} +- {stats.Z95 * end_se:.2g}): the sigmoid has found no ceiling")
    elif gain < 0.5:
        note = (f"the run has made only {gain:.0%} of the fitted gain (it is not past the curve's midpoint), so "
                f"A = {f['a']:.3g} is an extrapolation the data do not pin down")
    elif gain >= SATURATED and rising:
        note = (f"the fitted curve is flat at the run's end ({gain:.0%} of its gain made) while the run is still "
                f"rising over its last third: the sigmoid's A = {f['a']:.3g} is not a ceiling the data show, at best "
                f"a lower bound")
    values.update({"asymptote": None if note else f["a"], "asymptote_note": note,
                   "asymptote_ci": [None, None] if note else clip_to(bounds, f["a_ci"])})
    if half >= 6:
        try:
            pf = fit_sigmoid(c[:half], r[:half], r0, rate)
            end_pred = float(sigmoid(c[-1], pf["r0"], pf["a"], pf["b"], pf["c_mid"]))
            plo, phi = pf["a_ci"]
            # ScaleRL extrapolates only from curves past their midpoint: before it, A is barely constrained
            early = pf["c_mid"] > c[half - 1]
            loose = plo is None or phi - plo > 2 * float(np.ptp(r))
            reliable = not (early or loose)
            values.update({"forecast_asymptote": pf["a"], "forecast_end": end_pred,
                           "forecast_error": end_pred - values["actual_end"], "forecast_reliable": bool(reliable)})
            if not reliable:
                values["forecast_note"] = ("the first half has not passed the curve's midpoint" if early else
                                           "the first half leaves the asymptote's interval wider than twice the "
                                           "metric's range")
        except (ValueError, RuntimeError, np.linalg.LinAlgError):
            pass
    law_part = _law_ceiling(frame)
    if law_part is not None:
        values.update({"entropy_law_ceiling": law_part["value"], "entropy_law_ceiling_ci": law_part["ci"]})
        if values["asymptote"] is not None:
            ok = bool(values.get("forecast_reliable")) and abs(values["forecast_error"]) <= max(
                2 * stats.Z95 * end_se, 0.05 * float(np.ptp(r)))
            cmp = compare_ceilings({"ci": values["asymptote_ci"], "forecast_ok": ok, "left": 1 - gain,
                                    "note": values.get("forecast_note")}, law_part)
            values.update({"ceilings_agree": cmp["agree"], "trust": cmp["trust"], "trust_why": cmp["why"]})
    return _verdict(values, f, perf), values


def _law_ceiling(frame) -> dict | None:
    """The entropy law's ceiling where the law holds and its ceiling is reported, with what ``compare_ceilings``
    needs."""
    from rlscope.analysis.analyses.entropy_law import entropy_law

    try:
        _, law = entropy_law(frame)
    except Skip:
        return None
    if not law["follows"] or law["ceiling"] is None:
        return None
    ok = law["forecast_rmse"] is not None and law["forecast_rmse"] <= 1.5 * law["resid_rmse"]
    left = (math.exp(law["entropy_end"]) - 1) / max(math.exp(law["entropy_start"]) - 1, 1e-12)
    return {"value": law["ceiling"], "ci": law["ceiling_ci"], "forecast_ok": ok, "left": min(max(left, 0.0), 1.0)}


def _verdict(v: dict, f: dict, perf) -> str:
    fits = f["r2"] >= 0.5
    out = f"{perf.describe()} {'follows' if fits else 'fits poorly'} a sigmoid in RL {v['axis']} (R^2 {f['r2']:.2f})"
    if v["asymptote"] is None:
        out += f"; no ceiling is reported: {v['asymptote_note']}"
    else:
        out += (f"{'' if fits else ', so its asymptote is loose:'} A = {f['a']:.3g} [{fmt3(v['asymptote_ci'][0])}, "
                f"{fmt3(v['asymptote_ci'][1])}] from R0 = {f['r0']:.3g}; the run has made {v['gain_made']:.0%} of "
                f"that gain")
    if v.get("forecast_end") is not None:
        if v["forecast_reliable"]:
            out += (f"; fitted on the first half it forecasts {v['forecast_end']:.3g} at the end, where the run is at "
                    f"{v['actual_end']:.3g} (error {v['forecast_error']:+.3g})")
        else:
            out += f"; no usable forecast from the first half ({v['forecast_note']})"
    if v.get("entropy_law_ceiling") is not None:
        lci = v["entropy_law_ceiling_ci"]
        out += f"; the entropy law's ceiling is {v['entropy_law_ceiling']:.3g} [{fmt3(lci[0])}, {fmt3(lci[1])}]"
        if v.get("ceilings_agree") is False:
            out += (f" -- the two disagree; trust the {v['trust']}: {v['trust_why']}" if v["trust"] else
                    f" -- the two disagree and {v['trust_why']}")
        elif v.get("ceilings_agree"):
            out += ", in agreement"
    return out + "."
