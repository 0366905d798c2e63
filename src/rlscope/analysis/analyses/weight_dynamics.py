"""Weight dynamics: rotation or scaling, is the update settling into one direction, and can the final update be
forecast from an early window?

Jin et al. 2025 find RL rotates the singular vectors of the weights while leaving their singular values almost
unchanged; Cai et al. 2025 (AlphaRL) find the update dW = W_t - W_0 nearly rank 1, its dominant direction fixed early
and its magnitude growing almost linearly, so the final update can be extrapolated from an early window (also RELEX).
From rlscope's ``weights`` probe (``rlscope/weights/*``): the ratio of the mean principal angle (radians; the share of
a subspace turned) to the mean relative change of the top singular values; the rank-1 energy and its trend; the
stability of the dominant direction (median |cos| between successive probes' top singular vectors of dW); and a
forecast of sigma_1(dW) -- the rank-1 component's size -- at the last probe by a line through the probes of the first
30% of the RL steps, with its relative error against the measured value.
"""

from __future__ import annotations

import numpy as np

from rlscope.analysis import stats
from rlscope.analysis.analyses import Skip, register

W = "rlscope/weights/"


@register("weight_dynamics", requires=((f"{W}angle_left_mean",),),
          outputs=("rotation_to_scaling", "rotation_dominates", "angle_mean", "sv_rel_change_mean", "rank1_energy",
                   "rank1_energy_trend", "direction_stability", "forecast_sigma1", "actual_sigma1", "forecast_error",
                   "probes", "by_kind"))
def weight_dynamics(frame, early_share: float = 0.3) -> tuple[str, dict]:
    """Rotation vs scaling of the weights, the rank-1 update's energy and direction, and a forecast from an early window."""
    s, ang_l = frame.series(f"{W}angle_left_mean")
    _, ang_r = frame.series(f"{W}angle_right_mean")
    _, sv = frame.series(f"{W}sv_rel_change_mean")
    if len(s) < 2:
        raise Skip("fewer than 2 weight probes")
    angle = float((ang_l[-1] + (ang_r[-1] if len(ang_r) else ang_l[-1])) / 2)
    scale = float(sv[-1]) if len(sv) else float("nan")
    ratio = angle / scale if scale > 0 else float("inf")
    e_s, energy = frame.series(f"{W}dw_rank1_energy")
    _, cos = frame.series(f"{W}dw_dir_cos_left")
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
    return verdict + ".", values
