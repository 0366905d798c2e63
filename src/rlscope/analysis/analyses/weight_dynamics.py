"""Weight dynamics: rotation or scaling, is the update settling into one direction, can the final update be forecast
from an early window, and is the rank-1 update's trajectory linear in time?

Jin et al. 2025 find RL rotates the singular vectors of the weights while leaving their singular values almost
unchanged; Cai et al. 2025 (AlphaRL) find the update dW = W_t - W_0 nearly rank 1, its dominant direction fixed early
and its magnitude growing almost linearly, so the final update can be extrapolated from an early window (also RELEX).
From rlscope's ``weights`` probe (``rlscope/weights/*``): the ratio of the mean principal angle (radians; the share of
a subspace turned) to the mean relative change of the top singular values; the rank-1 energy and its trend; the
stability of the dominant direction (median |cos| between successive probes' top singular vectors of dW, left and
right pooled); and a forecast of sigma_1(dW) -- the rank-1 component's size -- at the last probe by a line through the
probes of the first 30% of the RL steps, with its relative error against the measured value.

Linear or not: RELEX (arXiv 2605.21468) finds the rank-1 trajectory sigma_1(t) u_1(t) v_1(t)^T of full fine-tuning
near-linear in time; NExt (arXiv 2604.11446) finds it not linear under LoRA. The trajectory is linear when its size
grows on a line and its direction holds. Size: least-squares line l and quadratic q of sigma_1 on the probe steps
(centred and scaled); on the grid q - l = c r exactly, c the quadratic coefficient and r the residual of t^2 on
(1, t), so the departure D = max_t |q(t) - l(t)| / |l(t_last)| = |c| max|r| / |l(t_last)|. Its 95% interval comes
from c +- t_q se(c), se(c) inflated for AR(1) residuals by (1 + rho) / (1 - rho) (rho = stats.lag1 of q's residuals)
and t_q on n_eff - 3 degrees of freedom (n_eff = stats.effective_n; below 1 it is not measurable); l(t_last) is taken
as known. ``curvature_p`` is the partial F-test of the quadratic term on the same inflated variance and degrees of
freedom (p < 0.05 exactly when c's interval excludes 0). Direction: the median of the successive |cos| with a
percentile bootstrap interval (2000 resamples, seed 0). Verdict: "linear" when D's upper bound < 0.1 and the
direction's lower bound >= 0.9 (no cosines: on size alone, said so); "non-linear" when D's lower bound > 0.1 or the
direction's upper bound < 0.9; else "undetermined". Not measurable (None, with the reason) with fewer than 4 probes
with sigma_1 > 0, or when sigma_1 shows no significant growth (stats.trend: Kendall p >= 0.05 or slope <= 0; with 4
probes Kendall's p is at least 0.083, so 5 are needed in practice) -- the shape of noise is no trajectory.
"""

from __future__ import annotations

import numpy as np

from rlscope.analysis import stats
from rlscope.analysis.analyses import Skip, register

W = "rlscope/weights/"
LINEAR_DEPARTURE, STABLE_COS = 0.1, 0.9


def _fmt(v) -> str:
    return "?" if v is None or not np.isfinite(v) else f"{v:.3g}"


def _departure(steps: np.ndarray, sigma: np.ndarray) -> dict:
    """D = |c| max|r| / |l(t_last)| with its AR(1)-inflated t interval and the quadratic term's F-test p-value."""
    x = (steps - steps.mean()) / (np.ptp(steps) / 2)
    lin, quad = np.polyfit(x, sigma, 1), np.polyfit(x, sigma, 2)
    r = x * x - np.polyval(np.polyfit(x, x * x, 1), x)  # t^2 less its projection onto span(1, t)
    resid = sigma - np.polyval(quad, x)
    resid[np.abs(resid) < 1e-12 * np.abs(sigma).max()] = 0.0  # rounding dust of an exact fit is not noise
    l_last, n = float(np.polyval(lin, x[-1])), len(x)
    out = {"departure": None, "ci": [None, None], "p": None, "df": None}
    if l_last <= 0:
        return out
    scale = float(np.abs(r).max()) / l_last
    c, rho = float(quad[0]), stats.lag1(resid)
    se = float(np.sqrt(float(resid @ resid) / (n - 3) / float(r @ r) * (1 + rho) / (1 - rho)))
    out.update(departure=abs(c) * scale, df=stats.effective_n(resid) - 3)
    if out["df"] >= 1:
        half = stats.t_quantile(out["df"]) * se
        lo, hi = abs(c - half), abs(c + half)
        out["ci"] = [0.0 if abs(c) <= half else min(lo, hi) * scale, max(lo, hi) * scale]  # of |c|, c's interval
        out["p"] = stats.f_sf((c / se) ** 2, 1, out["df"]) if se > 0 else 0.0 if c else 1.0
    return out


def _trajectory(steps: np.ndarray, sigma: np.ndarray, cos: np.ndarray) -> dict:
    """The linear / non-linear verdict on the rank-1 trajectory, its numbers and a one-sentence reason."""
    out = {"trajectory": None, "sigma1_departure": None, "sigma1_departure_ci": [None, None], "curvature_p": None,
           "direction_stability_ci": [None, None]}
    if len(cos):
        med = np.median(cos[np.random.default_rng(0).integers(0, len(cos), (2000, len(cos)))], axis=1)
        out["direction_stability_ci"] = stats.percentile_ci(med)
    if (sigma > 0).sum() < 4:
        return {**out, "trajectory_reason": f"only {(sigma > 0).sum()} probes with sigma_1 > 0, 4 are needed."}
    d = _departure(steps.astype(float), sigma)
    out.update(sigma1_departure=d["departure"], sigma1_departure_ci=d["ci"], curvature_p=d["p"])
    tr = stats.trend(steps.astype(float), sigma)
    if tr["p"] is None or not tr["p"] < 0.05 or not tr["slope"] > 0 or d["departure"] is None:
        why = f"sigma_1 shows no significant growth (Kendall p {_fmt(tr['p'])}, Theil-Sen slope {_fmt(tr['slope'])})"
        return {**out, "trajectory_reason": why + ": the shape of noise is no trajectory."}
    if d["p"] is None:
        return {**out, "trajectory_reason": f"the {len(steps)} probes are worth {d['df'] + 3:.1f} independent points "
                                            "after autocorrelation, too few to bound a curvature."}
    (d_lo, d_hi), (c_lo, c_hi) = d["ci"], out["direction_stability_ci"]
    size = f"sigma_1 departs from a line by {d['departure']:.3g} [{d_lo:.3g}, {d_hi:.3g}] of its final value"
    turn = c_hi is not None and c_hi < STABLE_COS
    if d_lo > LINEAR_DEPARTURE or turn:
        out["trajectory"] = "non-linear"
        why = size if d_lo > LINEAR_DEPARTURE else f"the direction turns (median |cos| upper bound {c_hi:.3g})"
    elif d_hi < LINEAR_DEPARTURE and (c_lo is None or c_lo >= STABLE_COS):
        out["trajectory"] = "linear"
        why = size + (" (no direction cosines: decided on size alone)" if c_lo is None else
                      f" and the direction holds (median |cos| lower bound {c_lo:.3g})")
    else:
        out["trajectory"] = "undetermined"
        dirs = f", direction median |cos| [{c_lo:.3g}, {c_hi:.3g}]" if c_lo is not None else ""
        why = f"{size}{dirs}: neither interval settles it against {LINEAR_DEPARTURE} / {STABLE_COS}"
    return {**out, "trajectory_reason": why + "."}


@register("weight_dynamics", requires=((f"{W}angle_left_mean",),),
          outputs=("rotation_to_scaling", "rotation_dominates", "angle_mean", "sv_rel_change_mean", "rank1_energy",
                   "rank1_energy_trend", "direction_stability", "forecast_sigma1", "actual_sigma1", "forecast_error",
                   "probes", "by_kind", "trajectory", "sigma1_departure", "sigma1_departure_ci", "curvature_p",
                   "direction_stability_ci", "trajectory_reason"))
def weight_dynamics(frame, early_share: float = 0.3) -> tuple[str, dict]:
    """Rotation vs scaling of the weights, the rank-1 update's energy and direction, a forecast from an early window,
    and whether the rank-1 trajectory is linear in time."""
    s, ang_l = frame.series(f"{W}angle_left_mean")
    _, ang_r = frame.series(f"{W}angle_right_mean")
    _, sv = frame.series(f"{W}sv_rel_change_mean")
    if len(s) < 2:
        raise Skip("fewer than 2 weight probes")
    angle = float((ang_l[-1] + (ang_r[-1] if len(ang_r) else ang_l[-1])) / 2)
    scale = float(sv[-1]) if len(sv) else float("nan")
    ratio = angle / scale if scale > 0 else float("inf")
    e_s, energy = frame.series(f"{W}dw_rank1_energy")
    cos = np.r_[frame.series(f"{W}dw_dir_cos_left")[1], frame.series(f"{W}dw_dir_cos_right")[1]]
    values = {"probes": int(len(s)), "angle_mean": angle, "sv_rel_change_mean": scale, "rotation_to_scaling": ratio,
              "rotation_dominates": bool(ratio > 3), "rank1_energy": float(energy[-1]) if len(energy) else None,
              "rank1_energy_trend": stats.trend(e_s.astype(float), energy)["slope"] if len(energy) >= 4 else None,
              "direction_stability": float(np.median(cos)) if len(cos) else None}
    kinds = {}
    for name in frame.raw:
        if name.startswith(f"{W}kind/") and name.endswith("/angle_left_mean"):
            kinds[name.split("/")[3]] = float(frame.series(name)[1][-1])
    values["by_kind"] = kinds or None
    g_s, sigma = frame.series(f"{W}dw_sigma1")
    values.update(_trajectory(g_s, sigma, cos))
    rl = frame.rl_steps
    if len(g_s) >= 3 and len(rl):
        cut = rl[0] + early_share * (rl[-1] - rl[0])
        early = g_s <= cut
        if early.sum() >= 2 and np.ptp(g_s[early]) > 0 and g_s[-1] > cut:
            line = np.polyfit(np.r_[rl[0] - 1, g_s[early]].astype(float), np.r_[0.0, sigma[early]], 1)  # dW = 0 at start
            pred = float(np.polyval(line, g_s[-1]))
            values.update({"forecast_sigma1": pred, "actual_sigma1": float(sigma[-1]),
                           "forecast_error": (pred - sigma[-1]) / sigma[-1] if sigma[-1] else None})
    verdict = (f"The weights {'rotate more than they scale' if values['rotation_dominates'] else 'do not mainly rotate'}"
               f": mean principal angle {angle:.3g} rad vs relative singular-value change {scale:.3g} "
               f"(ratio {ratio:.3g})")
    if values["rank1_energy"] is not None:
        verdict += f"; dW's rank-1 energy {values['rank1_energy']:.2f}"
    if values["direction_stability"] is not None:
        stable = values["direction_stability"] >= 0.9
        verdict += (f"; its dominant direction {'holds' if stable else 'keeps turning'} (median |cos| "
                    f"{values['direction_stability']:.2f} between probes)")
    if values.get("forecast_error") is not None:
        verdict += (f"; a line through the first {early_share:.0%} of the steps forecasts sigma_1(dW) "
                    f"{values['forecast_sigma1']:.3g} at the last probe, measured {values['actual_sigma1']:.3g} "
                    f"({values['forecast_error']:+.0%})")
    shape = values["trajectory"] or "not measurable"
    verdict += f"; the rank-1 trajectory is {shape}: {values['trajectory_reason'].rstrip('.')}"
    return verdict + ".", values
