"""The entropy-performance law R = -a exp(H) + b (Cui et al. 2025, "The Entropy Mechanism of Reinforcement Learning for
Reasoning Language Models"), its ceiling and a forecast from an early prefix.

Cui et al. find that, without entropy interventions, performance R and policy entropy H trade off as R = -a e^H + b:
performance is bought with entropy, and when entropy is spent (H -> 0) performance tops out at b - a. They fit the
first 36 steps of a run and predict the remaining ~200 at ~1% error.

Pairs (H, R) per RL step: R is held-out accuracy when the run has at least 6 held-out points (H then the mean entropy
of the training steps since the previous evaluation; an evaluation before the first training step -- the model before
any update -- has no training entropy and is left out), else training accuracy, else reward. The law is linear in
(a, b) given e^H, so it is an ordinary least-squares fit; intervals come from a moving-block bootstrap over the pairs
in time order. The forecast fits the first ``prefix_share`` of the pairs (at least 6) and predicts the rest from their
entropies; its RMSE is reported.

The ceiling b - a is reported only where it can be: inside the metric's range (an accuracy's [0, 1]; its interval is
clipped there), and not carried by one point -- leaving any single pair out (exact leave-one-out refits) must neither
move it beyond its own interval nor undo the trade-off (a > 0).
"""

from __future__ import annotations

import math

import numpy as np

from rlscope.analysis import stats
from rlscope.analysis.analyses import Skip, clip_to, fmt3, performance, register

MIN_PAIRS = 8
BOOTSTRAP = 500


def pairs(frame):
    """``(perf, steps, H, R, left_out)``: entropy and performance at the same RL steps (see the module docstring);
    ``left_out``: the steps of evaluations before any training entropy."""
    perf = performance(frame)
    r_steps, r = perf.steps, perf.values
    h_steps, h = frame.series("entropy")
    if perf.name is None or not len(h_steps):
        return perf, np.zeros(0), np.zeros(0), np.zeros(0), []
    if perf.name == "heldout_accuracy":  # sparse evaluations: the entropy of the training steps since the previous one
        out_s, out_h, out_r, left_out, prev = [], [], [], [], -math.inf
        for s, v in zip(r_steps, r):
            if s < h_steps[0]:  # before any training step: the model before the first update
                left_out.append(int(s))
                continue
            sel = (h_steps > prev) & (h_steps <= s)
            if not sel.any():  # no training step since the previous evaluation: the latest one before it
                sel = h_steps == h_steps[np.searchsorted(h_steps, s, side="right") - 1]
            out_s.append(s), out_h.append(float(h[sel].mean())), out_r.append(v)
            prev = s
        return perf, np.asarray(out_s), np.asarray(out_h), np.asarray(out_r), left_out
    common, ih, ir = np.intersect1d(h_steps, r_steps, return_indices=True)
    return perf, common, h[ih], r[ir], []


def fit_law(h: np.ndarray, r: np.ndarray) -> tuple[float, float]:
    """Least-squares (a, b) of R = -a exp(H) + b."""
    design = np.column_stack([-np.exp(h), np.ones_like(h)])
    (a, b), *_ = np.linalg.lstsq(design, r, rcond=None)
    return float(a), float(b)


def predict(h: np.ndarray, a: float, b: float) -> np.ndarray:
    return b - a * np.exp(h)


def leave_one_out(h: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) of the law refitted without each pair in turn, exactly (the hat matrix's leave-one-out update)."""
    design = np.column_stack([-np.exp(h), np.ones_like(h)])
    inv = np.linalg.pinv(design.T @ design)
    coef = inv @ design.T @ r
    resid = r - design @ coef
    lever = np.einsum("ij,jk,ik->i", design, inv, design)
    shift = (design @ inv) * (resid / np.maximum(1 - lever, 1e-12))[:, None]  # (n, 2): coef - coef without i
    loo = coef[None, :] - shift
    return loo[:, 0], loo[:, 1]


def lack_of_fit(h: np.ndarray, r: np.ndarray, law_rss: float, bins: int = 10) -> dict:
    """Does any function of entropy fit R better than the law? The extra-sum-of-squares F test of the law (2
    parameters) nested in the law plus a free step function of H (its means in ``bins`` equal-count entropy bins).

    Noisy per-step accuracies cap R^2 far below 1 however true the law is; this asks instead whether what the law
    misses is structure in H (p small: the law has the wrong shape) or noise (p large). ``r2_bins`` is what the larger
    model explains, the ceiling the law's R^2 is to be read against. Autocorrelated residuals make the test reject
    more often, never less: it errs toward "the law does not fit".
    """
    n = len(h)
    bins = min(bins, n // 4)
    tss = float(((r - r.mean()) ** 2).sum())
    if bins <= 2 or tss <= 0:
        return {"lof_p": None, "r2_bins": None, "lof_bins": max(bins, 0)}
    edges = np.quantile(h, np.linspace(0, 1, bins + 1))
    which = np.clip(np.searchsorted(edges, h, side="right") - 1, 0, bins - 1)
    full = np.column_stack([-np.exp(h), np.eye(bins)[which]])
    params = int(np.linalg.matrix_rank(full))
    coef, *_ = np.linalg.lstsq(full, r, rcond=None)
    rss_full = float(((r - full @ coef) ** 2).sum())
    if params <= 2 or n - params <= 0 or rss_full <= 0:
        return {"lof_p": None, "r2_bins": None, "lof_bins": params - 1}
    f = (max(law_rss - rss_full, 0.0) / (params - 2)) / (rss_full / (n - params))
    return {"lof_p": stats.f_sf(f, params - 2, n - params), "r2_bins": 1 - rss_full / tss, "lof_bins": params - 1}


def law(frame, prefix_share: float = 0.2, seed: int = 0) -> dict:
    """The fit, its bootstrap intervals, its checks (range, one-point leverage) and the prefix forecast, as a dict
    (used by ``ceiling`` as well)."""
    perf, steps, h, r, left_out = pairs(frame)
    if perf.name is None:
        raise Skip("the run logs no performance (held-out accuracy, training accuracy or reward)")
    if len(h) < MIN_PAIRS:
        raise Skip(f"only {len(h)} steps have both entropy and {perf.describe()}; the law needs at least {MIN_PAIRS}"
                   + (f" (evaluations before the first training step left out: {left_out})" if left_out else ""))
    if float(np.ptp(h)) < 1e-6:
        raise Skip("entropy does not change, so the law cannot be fitted")
    a, b = fit_law(h, r)
    resid = r - predict(h, a, b)
    tss = float(((r - r.mean()) ** 2).sum())
    r2 = 1 - float(resid @ resid) / tss if tss > 0 else math.nan
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(BOOTSTRAP):
        idx = stats.block_indices(len(h), rng)
        if np.ptp(h[idx]) > 0:
            boot.append(fit_law(h[idx], r[idx]))
    boot = np.asarray(boot)
    k = max(6, int(math.ceil(prefix_share * len(h))))
    forecast = {"forecast_rmse": None, "forecast_mae": None, "forecast_prefix_steps": None, "forecast_points": 0}
    if len(h) - k >= 3 and np.ptp(h[:k]) > 0:
        pa, pb = fit_law(h[:k], r[:k])
        err = r[k:] - predict(h[k:], pa, pb)
        prefix_resid = r[:k] - predict(h[:k], pa, pb)
        forecast = {"forecast_rmse": float(np.sqrt((err ** 2).mean())), "forecast_mae": float(np.abs(err).mean()),
                    "forecast_prefix_steps": int(steps[k - 1]), "forecast_points": int(len(err)),
                    "forecast_a": pa, "forecast_b": pb,
                    # +-1.96 sd of the prefix's residuals (k - 2 degrees of freedom): the forecast's band
                    "forecast_band": float(stats.Z95 * np.sqrt(prefix_resid @ prefix_resid / max(k - 2, 1)))}
    a_ci = stats.percentile_ci(boot[:, 0])
    ceiling, ceiling_ci = b - a, stats.percentile_ci(boot[:, 1] - boot[:, 0])
    # one point carrying the fit: the pair whose removal moves the ceiling most, and whether the trade-off survives
    loo_a, loo_b = leave_one_out(h, r)
    moved = np.abs((loo_b - loo_a) - ceiling)
    worst = int(np.argmax(moved))
    half = (ceiling_ci[1] - ceiling_ci[0]) / 2 if ceiling_ci[0] is not None else 0.0
    leverage = None
    if a > 0 and (loo_a <= 0).any():
        i = int(np.flatnonzero(loo_a <= 0)[0])
        leverage = {"step": int(steps[i]), "without": float(loo_b[i] - loo_a[i]), "undoes_trade": True}
    elif moved[worst] > half:
        leverage = {"step": int(steps[worst]), "without": float(loo_b[worst] - loo_a[worst]), "undoes_trade": False}
    note = None
    bounds = perf.bounds
    if bounds is not None and not bounds[0] <= ceiling <= bounds[1]:
        note = f"b - a = {ceiling:.3g} lies outside a {perf.label}'s range [{bounds[0]:g}, {bounds[1]:g}]"
    elif leverage is not None:
        note = (f"it hangs on one point: without step {leverage['step']} it would be {leverage['without']:.3g}"
                + (" and performance would not rise as entropy falls" if leverage["undoes_trade"] else ""))
    return {"target": perf.name, "target_label": perf.describe(), "n_pairs": int(len(h)), "left_out": left_out,
            "a": a, "a_ci": a_ci, "b": b, "b_ci": stats.percentile_ci(boot[:, 1]), "r2": r2,
            "resid_rmse": float(np.sqrt((resid ** 2).mean())),
            **lack_of_fit(h, r, float(resid @ resid)),
            "ceiling": None if note else ceiling, "ceiling_ci": [None, None] if note else clip_to(bounds, ceiling_ci),
            "ceiling_fit": ceiling, "ceiling_note": note, "leverage": leverage,
            "entropy_start": float(h[0]), "entropy_end": float(h[-1]), **forecast,
            "points": _sample(steps, h, r, 400)}


def _sample(steps, h, r, most: int) -> list[list[float]]:
    """[step, H, R] of at most ``most`` pairs spread evenly over the run (the report's scatter)."""
    return [[int(steps[i]), float(h[i]), float(r[i])] for i in stats.even_indices(len(h), most)]


@register("entropy_law", requires=(("entropy",), ("heldout_accuracy", "train_accuracy", "reward")),
          outputs=("a", "a_ci", "b", "b_ci", "r2", "r2_bins", "lof_p", "lof_bins", "follows", "ceiling", "ceiling_ci",
                   "ceiling_fit", "ceiling_note", "leverage", "forecast_rmse", "forecast_mae", "forecast_prefix_steps",
                   "forecast_a", "forecast_b", "forecast_band", "target", "target_label", "n_pairs", "left_out",
                   "points"))
def entropy_law(frame, prefix_share: float = 0.2, seed: int = 0) -> tuple[str, dict]:
    """Fit R = -a exp(H) + b (Cui et al. 2025), the ceiling b - a at zero entropy, and a forecast from an early prefix."""
    f = law(frame, prefix_share, seed)
    # the law holds when performance does rise as entropy falls (a > 0, its interval clear of 0, and not because of
    # one point) and what the law leaves is noise: no function of H does significantly better (lack-of-fit
    # p >= 0.05), or the law explains at least 90% of what the best function of H explains (many points make any small
    # misfit significant). With too few points for the test: R^2 >= 0.5.
    one_point = f["leverage"] is not None and f["leverage"]["undoes_trade"]
    trades = f["a_ci"][0] is not None and f["a_ci"][0] > 0 and not one_point
    if f["lof_p"] is None:  # lack_of_fit gives both lof_p and r2_bins, or neither
        shape_ok = f["r2"] >= 0.5
    else:
        shape_ok = f["lof_p"] >= 0.05 or f["r2"] >= 0.9 * f["r2_bins"]
    follows = trades and shape_ok
    ci = f["ceiling_ci"]
    name = f["target_label"]
    best = (f"; the best function of entropy explains {f['r2_bins']:.2f}, lack-of-fit p {f['lof_p']:.2g}"
            if f["lof_p"] is not None else "")
    fitted = f"a = {f['a']:.3g} [{fmt3(f['a_ci'][0])}, {fmt3(f['a_ci'][1])}]"
    if follows:
        head = f"{name} follows R = -a e^H + b (R^2 {f['r2']:.2f}{best}; {fitted}, b = {f['b']:.3g})"
        head += (f": at zero entropy it tops out at b - a = {f['ceiling']:.3g} [{ci[0]:.3g}, {ci[1]:.3g}]"
                 if f["ceiling"] is not None else f"; no ceiling is reported: {f['ceiling_note']}")
    elif trades:
        why = ("some function of entropy fits significantly better" if f["lof_p"] is not None
               else "too few points to tell noise from misfit")
        head = f"{name} rises as entropy falls but not in the law's shape (R^2 {f['r2']:.2f}{best}: {why}; {fitted})"
    elif one_point:
        head = (f"{name} does not follow the entropy law: the trade-off ({fitted}) rests on the one point at step "
                f"{f['leverage']['step']}; without it performance does not rise as entropy falls")
    else:
        head = (f"{name} does not follow the entropy law (R^2 {f['r2']:.2f}, {fitted}: performance does not "
                f"significantly rise as entropy falls)")
    if f["left_out"]:
        head += (f" (evaluation{'s' if len(f['left_out']) > 1 else ''} at step {', '.join(map(str, f['left_out']))}, "
                 f"before any training step, left out)")
    f["follows"] = follows
    tail = (f"; fitted on the steps up to {f['forecast_prefix_steps']}, it predicts the remaining {f['forecast_points']} "
            f"to RMSE {f['forecast_rmse']:.3g}." if f["forecast_rmse"] is not None else ".")
    return head + tail, f
