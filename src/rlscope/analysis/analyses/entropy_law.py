"""The entropy-performance law R = -a exp(H) + b (Cui et al. 2025, "The Entropy Mechanism of Reinforcement Learning for
Reasoning Language Models"), its ceiling and a forecast from an early prefix.

Cui et al. find that, without entropy interventions, performance R and policy entropy H trade off as R = -a e^H + b:
performance is bought with entropy, and when entropy is spent (H -> 0) performance tops out at b - a. They fit the
first 36 steps of a run and predict the remaining ~200 at ~1% error.

Pairs (H, R) per RL step: R is held-out accuracy when the run has at least 6 held-out points (H then the mean entropy
of the training steps since the previous evaluation), else training accuracy, else reward. The law is linear in
(a, b) given e^H, so it is an ordinary least-squares fit; intervals come from a moving-block bootstrap over the pairs
in time order. The forecast fits the first ``prefix_share`` of the pairs (at least 6) and predicts the rest from their
entropies; its RMSE is reported.
"""

from __future__ import annotations

import math

import numpy as np

from rlscope.analysis import stats
from rlscope.analysis.analyses import Skip, fmt3, performance_series, register

MIN_PAIRS = 8
BOOTSTRAP = 500


def pairs(frame) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    """``(target, steps, H, R)``: entropy and performance at the same RL steps (see the module docstring)."""
    target, r_steps, r = performance_series(frame)
    h_steps, h = frame.series("entropy")
    if target is None or not len(h_steps):
        return target, np.zeros(0), np.zeros(0), np.zeros(0)
    if target == "heldout_accuracy":  # sparse evaluations: the entropy of the training steps since the previous one
        out_s, out_h, out_r, prev = [], [], [], -math.inf
        for s, v in zip(r_steps, r):
            sel = (h_steps > prev) & (h_steps <= s)
            if not sel.any():  # an evaluation before any training step (the base): the first entropy after it
                sel = h_steps == h_steps[np.searchsorted(h_steps, s) if s < h_steps[-1] else -1]
            out_s.append(s), out_h.append(float(h[sel].mean())), out_r.append(v)
            prev = s
        return target, np.asarray(out_s), np.asarray(out_h), np.asarray(out_r)
    common, ih, ir = np.intersect1d(h_steps, r_steps, return_indices=True)
    return target, common, h[ih], r[ir]


def fit_law(h: np.ndarray, r: np.ndarray) -> tuple[float, float]:
    """Least-squares (a, b) of R = -a exp(H) + b."""
    design = np.column_stack([-np.exp(h), np.ones_like(h)])
    (a, b), *_ = np.linalg.lstsq(design, r, rcond=None)
    return float(a), float(b)


def predict(h: np.ndarray, a: float, b: float) -> np.ndarray:
    return b - a * np.exp(h)


def lack_of_fit(h: np.ndarray, r: np.ndarray, law_rss: float, bins: int = 10) -> dict:
    """Does any function of entropy fit R better than the law? The extra-sum-of-squares F test of the law (2
    parameters) nested in the law plus a free step function of H (its means in ``bins`` equal-count entropy bins).

    Noisy per-step accuracies cap R^2 far below 1 however true the law is; this asks instead whether what the law
    misses is structure in H (p small: the law has the wrong shape) or noise (p large). ``r2_bins`` is what the larger
    model explains, the ceiling the law's R^2 is to be read against. Autocorrelated residuals make the test reject
    more often, never less: it errs toward "the law does not fit".
    """
    from scipy import stats as sps

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
    return {"lof_p": float(sps.f.sf(f, params - 2, n - params)), "r2_bins": 1 - rss_full / tss, "lof_bins": params - 1}


def law(frame, prefix_share: float = 0.2, seed: int = 0) -> dict:
    """The fit, its bootstrap intervals and the prefix forecast, as a dict (used by ``ceiling`` as well)."""
    target, steps, h, r = pairs(frame)
    if target is None:
        raise Skip("the run logs no performance (held-out accuracy, training accuracy or reward)")
    if len(h) < MIN_PAIRS:
        raise Skip(f"only {len(h)} steps have both entropy and {target}; the law needs at least {MIN_PAIRS}")
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
    return {"target": target, "n_pairs": int(len(h)), "a": a, "a_ci": stats.percentile_ci(boot[:, 0]),
            "b": b, "b_ci": stats.percentile_ci(boot[:, 1]), "r2": r2, **lack_of_fit(h, r, float(resid @ resid)),
            "ceiling": b - a,
            "ceiling_ci": stats.percentile_ci(boot[:, 1] - boot[:, 0]),
            "entropy_start": float(h[0]), "entropy_end": float(h[-1]), **forecast,
            "points": _sample(steps, h, r, 400)}


def _sample(steps, h, r, most: int) -> list[list[float]]:
    """[step, H, R] of at most ``most`` pairs spread evenly over the run (the report's scatter)."""
    return [[int(steps[i]), float(h[i]), float(r[i])] for i in stats.even_indices(len(h), most)]


@register("entropy_law", requires=(("entropy",), ("heldout_accuracy", "train_accuracy", "reward")),
          outputs=("a", "a_ci", "b", "b_ci", "r2", "r2_bins", "lof_p", "lof_bins", "follows", "ceiling", "ceiling_ci",
                   "forecast_rmse", "forecast_mae", "forecast_prefix_steps", "forecast_a", "forecast_b",
                   "forecast_band", "target", "n_pairs", "points"))
def entropy_law(frame, prefix_share: float = 0.2, seed: int = 0) -> tuple[str, dict]:
    """Fit R = -a exp(H) + b (Cui et al. 2025), the ceiling b - a at zero entropy, and a forecast from an early prefix."""
    f = law(frame, prefix_share, seed)
    # the law holds when performance does rise as entropy falls (a > 0, its interval clear of 0) and what the law
    # leaves is noise: no function of H does significantly better (lack-of-fit p >= 0.05), or the law explains at least
    # 90% of what the best function of H explains (many points make any small misfit significant). With too few points
    # for the test: R^2 >= 0.5.
    trades = f["a_ci"][0] is not None and f["a_ci"][0] > 0
    if f["lof_p"] is None:  # lack_of_fit gives both lof_p and r2_bins, or neither
        shape_ok = f["r2"] >= 0.5
    else:
        shape_ok = f["lof_p"] >= 0.05 or f["r2"] >= 0.9 * f["r2_bins"]
    follows = trades and shape_ok
    ci = f["ceiling_ci"]
    name = f["target"].replace("_", " ")
    best = (f"; the best function of entropy explains {f['r2_bins']:.2f}, lack-of-fit p {f['lof_p']:.2g}"
            if f["lof_p"] is not None else "")
    if follows:
        head = (f"{name} follows R = -a e^H + b (R^2 {f['r2']:.2f}{best}; a = {f['a']:.3g} [{fmt3(f['a_ci'][0])}, "
                f"{fmt3(f['a_ci'][1])}], b = {f['b']:.3g}): at zero entropy it tops out at b - a = "
                f"{f['ceiling']:.3g} [{ci[0]:.3g}, {ci[1]:.3g}]")
    elif trades:
        why = ("some function of entropy fits significantly better" if f["lof_p"] is not None
               else "too few points to tell noise from misfit")
        head = (f"{name} rises as entropy falls but not in the law's shape (R^2 {f['r2']:.2f}{best}: {why}; "
                f"a = {f['a']:.3g} [{fmt3(f['a_ci'][0])}, {fmt3(f['a_ci'][1])}])")
    else:
        head = (f"{name} does not follow the entropy law (R^2 {f['r2']:.2f}, a = {f['a']:.3g} "
                f"[{fmt3(f['a_ci'][0])}, {fmt3(f['a_ci'][1])}]: performance does not significantly rise as entropy "
                f"falls)")
    f["follows"] = follows
    tail = (f"; fitted on the steps up to {f['forecast_prefix_steps']}, it predicts the remaining {f['forecast_points']} "
            f"to RMSE {f['forecast_rmse']:.3g}." if f["forecast_rmse"] is not None else ".")
    return head + tail, f
