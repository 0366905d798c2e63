"""Run health: the failure detectors log-health tools run (rldoctor's nine among them), with robust statistics.

Each detector reads canonical metrics and gives a severity (ok, info, warn, crit) with its evidence, or says it cannot
measure. Levels are medians of a window (the last quarter unless said), trends Theil-Sen slopes with Kendall's test
(significant: p < 0.05 over >= 8 points). Thresholds follow common practice (and rldoctor's, so the two can be
compared):

* ``zero_advantage`` -- share of prompt groups with all-equal rewards (no gradient): >= 0.30 info, 0.50 warn, 0.75
  crit; the accuracy level says whether the groups are all-correct (too easy) or all-wrong (too hard) (DAPO, Yu et
  al. 2025);
* ``entropy_collapse`` -- entropy at its floor (10% of the start), or projected there within a quarter of the run
  (warn; crit when performance has stopped improving) or within the run's length (info / warn) (Cui et al. 2025);
* ``reward_vs_heldout`` -- training reward rising while held-out accuracy does not (warn; crit when it falls), or the
  two significantly anti-correlated (Spearman p < 0.05): a reward-hacking hint;
* ``length`` -- truncation at the cap (clipped share >= 5% warn, >= 15% crit; a log without a clipped ratio: the
  share of recent steps whose mean length is pinned at its recurring maximum, a lower bound), length collapse (end <
  half the start), and length growth >= 50% tracking the reward (Spearman >= 0.6) that held-out accuracy does not
  follow;
* ``clip_saturation`` -- share of clipped tokens >= 0.10 info, 0.20 warn, 0.40 crit; one-sided clipping (lower >= 3x
  upper, lower >= 2%) warn;
* ``kl_drift`` -- KL >= 0.5 info, >= 2 warn (crit when performance stalls), accelerating (late slope > 1.5x early)
  above 0.5 warn, pinned to the reference (max <= 1e-4 with a KL term) warn;
* ``gradients`` -- non-finite norms crit, exactly-zero norms >= 20 / 40 / 70% of steps, vanishing (end <= 5% of the
  start) warn, spikes (robust z > 8 and > 3x the median) 1-2 info, >= 3 warn;
* ``reward_composition`` -- a reward component carrying >= 70% of the reward variance (shares of the variance of
  each component winsorized at its 5th and 95th percentiles: robust to spikes, not blind to quantised values as a
  MAD is) when it is an auxiliary (format-like) reward warn, >= 90% crit; a component that is constant (one value on
  >= 95% of the recent steps: no gradient signal) info, warn for a task reward; one with < 2% of the variance that
  does vary is named as minor, no alarm;
* ``plateau`` -- performance over the recent 35%: rising, falling or flat by its least-squares change with an AR(1)
  standard error (a median of pairwise slopes is exactly 0 on quantised rewards); "flat" only when the largest rise
  the interval allows is under 30% of the run's earlier rise (the window's mean against the first 10%'s), or, for a
  run that never rose significantly, under one point's noise. Warn when flat or falling for 30%+ of the run and 50+
  steps -- since the earliest step from which the run shows no significant rise, scanning back from the window in
  steps of 5% of the run --, else info;
* ``heldout_decline`` -- held-out accuracy falling (least-squares change over all evaluations, or over their last
  half, below 0 at p < 0.025 each, with the t distribution on the effective points): warn -- overfitting to the
  training prompts or forgetting, whatever the training reward does.

Trend directions come from Kendall's tau (its sign and p-value) or a least-squares change, never from the sign of a
Theil-Sen median slope, which ties make 0.
"""

from __future__ import annotations

import math
import re

import numpy as np

from rlscope.analysis import stats
from rlscope.analysis.analyses import Skip, performance, register
from rlscope.analysis.findings import LEVELS, thresholds
from rlscope.analysis.findings import finding as _finding, grade as _grade, head as _head, tail as _tail, \
    worst as _worst

FLAT_GAIN = 0.3  # plateau: the recent window gains less than this share of the run's earlier rise
AUX_HINTS = ("format", "tag", "xml", "json", "length", "lang", "style", "think", "overlong")


def _recent(frame, name: str, min_points: int = 2):
    """(steps, values, median of the last quarter) of a canonical metric, or None with fewer than ``min_points``."""
    s, v = frame.series(name)
    return (s, v, _tail(v)) if len(s) >= min_points else None


def zero_advantage(frame, th: dict | None = None) -> dict | None:
    th = thresholds("zero_advantage", th)
    if (got := _recent(frame, "zero_std_share")) is None:
        return None
    s, v, f = got
    level = _grade(f, th["crit"], th["warn"], th["info"])
    tr = stats.trend(s.astype(float), v) if len(s) >= 8 else {"slope": None, "p": None}
    ev = [f"{f:.0%} of prompt groups had all-equal rewards over the last quarter: you pay {1 / max(1 - f, 1e-6):.1f} "
          f"rollouts per rollout that carries gradient"]
    if stats.direction(tr) > 0:
        ev.append(f"and the share is rising ({tr['slope']:+.2e}/step, p {tr['p']:.1g})")
    _, acc = frame.series("train_accuracy")
    regime = None
    if len(acc) and acc.min() >= 0 and acc.max() <= 1:  # a share: a 0-2 correctness reward says nothing of it
        level_acc = _tail(acc)
        regime = "all-correct (too easy)" if level_acc >= 0.85 else "all-wrong (too hard)" if level_acc <= 0.15 \
            else "mixed"
        ev.append(f"training accuracy {level_acc:.0%}: the degenerate groups are mostly {regime}")
    return _finding(level, "Zero-advantage groups", ev, share=f, trend=tr["slope"], regime=regime)


def entropy_collapse(frame, th: dict | None = None) -> dict | None:
    from rlscope.analysis.analyses.entropy_dynamics import entropy_dynamics

    th = thresholds("entropy_collapse", th)
    try:
        _, d = entropy_dynamics(frame, floor_share=th["floor_share"])
    except Skip:
        return None
    rl = frame.rl_steps
    span = max(int(rl[-1] - rl[0]), 1) if len(rl) else 1
    improving = d["performance_improving"]
    if d["end"] <= d["floor"]:
        level = "warn" if improving else "crit"
    elif d["steps_to_floor"] is None:
        level = "ok"
    elif d["steps_to_floor"] <= th["soon_share"] * span:
        level = "warn" if improving else "crit"
    elif d["steps_to_floor"] <= span:
        level = "info" if improving else "warn"
    else:
        level = "ok"
    ev = [f"entropy {d['start']:.3g} -> {d['end']:.3g} ({d['change']:+.0%}); floor {d['floor']:.3g}"]
    if d["steps_to_floor"] is not None:
        ev.append(f"at the recent pace ({d['model']}) it reaches the floor in ~{d['steps_to_floor']} steps "
                  f"(the run so far: {span})")
    if d.get("cliff_step") is not None:
        ev.append(f"abrupt drop at step {d['cliff_step']}: {d['cliff_from']:.3g} -> {d['cliff_to']:.3g}")
    if improving is not None:
        ev.append("performance is still improving" if improving else "performance is no longer improving")
    return _finding(level, "Entropy collapse", ev, steps_to_floor=d["steps_to_floor"], end=d["end"],
                    floor=d["floor"])


def reward_vs_heldout(frame, th: dict | None = None) -> dict | None:
    need = int(thresholds("reward_vs_heldout", th)["min_evaluations"])
    es, ev_ = frame.series("heldout_accuracy")
    rs, rv = frame.series("reward")
    if len(es) < 4 or len(rs) < 8:
        return None
    tr_r = stats.trend(rs.astype(float), rv)  # on every reward point: its significance is well measured
    tr_e = stats.trend(es.astype(float), ev_)
    r_on_e = np.interp(es, rs, rv)
    rho = stats.spearman(r_on_e, ev_) if np.ptp(r_on_e) and np.ptp(ev_) else math.nan
    up_r = stats.direction(tr_r) > 0
    evid = [f"training reward trend {tr_r['slope']:+.3g}/step (p {tr_r['p']:.2g}), held-out trend "
            f"{tr_e['slope']:+.3g}/step over {len(es)} evaluations; rank correlation {rho:+.2f}"]
    if len(es) >= need:
        dir_e = stats.direction(tr_e)
        if up_r and dir_e < 0:
            level = "crit"
            evid.append("the reward rises while held-out accuracy falls significantly")
        elif up_r and dir_e == 0:
            level = "warn"
            evid.append("the reward rises significantly; held-out accuracy shows no significant trend")
        elif rho < 0 and (p_rho := stats.spearman_p(rho, len(es))) < 0.05:  # anti-correlated beyond chance
            level = "warn"
            evid.append(f"reward and held-out accuracy move against each other (p {p_rho:.2g})")
        else:
            level = "ok"
    else:  # too few evaluations to test a held-out trend: only a fall against a rising reward is worth a note
        fell = ev_[-1] < ev_[0] and not (rho > 0)
        level = "info" if up_r and fell else "ok"
        evid.append(f"{len(es)} evaluations are too few to test the held-out trend ({need} needed)"
                    + ("; held-out accuracy ended below its start while the reward rose" if level == "info" else ""))
    return _finding(level, "Reward vs held-out accuracy", evid, rho=rho, reward_slope=tr_r["slope"],
                    heldout_slope=tr_e["slope"], evaluations=len(es))


def length(frame, th: dict | None = None) -> dict | None:
    th = thresholds("length", th)
    s, v = frame.series("response_length")
    if len(s) < 8:
        return None
    l0, l1 = _head(v), _tail(v, 0.1)
    growth = (l1 - l0) / l0 if l0 > 0 else math.nan
    parts, context = [], [f"mean length {l0:.4g} -> {l1:.4g} ({growth:+.0%})"]
    t = truncation(frame)
    trunc, cap = (None, None) if t is None else (t["share"], t["cap"])
    if t is not None:
        parts.append((_grade(trunc, th["truncation_crit"], th["truncation_warn"]), t["text"]))
    else:
        context.append("truncation not measured: the log has no clipped ratio (TRL's completions/clipped_ratio, "
                       "verl's response_length/clip_ratio) and the mean length is never pinned at its maximum")
    if growth <= th["collapse_ratio"] - 1:
        parts.append(("warn", f"length collapsed to {l1 / l0:.0%} of its start"))
    rs, rv = frame.series("reward")
    if growth >= 0.5 and len(rs) >= 8:
        rho = stats.spearman(v, np.interp(s, rs, rv))
        es, evv = frame.series("heldout_accuracy")
        earned = None if len(es) < 4 else stats.direction(stats.trend(es.astype(float), evv)) > 0
        if rho >= 0.6:
            parts.append(("crit" if earned is False else "info",
                          f"length grew {growth:+.0%} tracking the reward (rank correlation {rho:+.2f})"
                          + ("" if earned is None else f"; held-out accuracy {'rises' if earned else 'does not'}")))
    return _worst(parts, "Length (truncation, collapse, hacking)", context, growth=growth, truncation=trunc,
                  inferred_cap=cap)


def truncation(frame) -> dict | None:
    """The share of completions cut at the length cap over the last quarter: ``{"share", "cap", "text"}``.

    The logged clipped ratio's median when the log has one (``cap`` None); else, when the mean length is pinned at
    its maximum (:func:`pinned_cap`), the share of recent steps where it sits there -- a lower bound, since the other
    steps may have cut some completions too. None when neither tells."""
    cs, cv = frame.series("clipped_ratio")
    if len(cs) >= 2:
        share = _tail(cv)
        return {"share": share, "cap": None,
                "text": f"{share:.1%} of completions hit the length cap (their reward measures the cap)"}
    _, v = frame.series("response_length")
    if (cap := pinned_cap(v)) is None:
        return None
    share = float(np.mean(v[-max(3, int(round(len(v) * 0.25))):] == cap["value"]))
    return {"share": share, "cap": cap["value"],
            "text": f"at least {share:.0%} of completions hit the length cap over the last quarter: the mean length "
                    f"equals its maximum, {cap['value']:.4g}, at {cap['steps']} of {len(v)} steps, which only a cap "
                    "does (every completion of those steps cut); the log has no clipped ratio"}


def pinned_cap(lengths) -> dict | None:
    """The completion cap read off a mean-length series, for logs without a clipped ratio (old TRL, CSV exports).

    A batch's mean length equals the cap only when every completion of the batch was cut there, and nothing exceeds
    it; a free-running mean reaches its maximum once. So the cap is the series' maximum when that exact value recurs
    (>= 3 steps and >= 5% of them) in a series that is not coarse (>= 20 distinct values, so repeats are not a
    rounding artefact). None when the series shows no such pin."""
    v = np.asarray(lengths, dtype=float)
    v = v[np.isfinite(v)]
    if v.size < 20 or np.unique(v).size < 20:
        return None
    top = float(v.max())
    hits = int(np.sum(v == top))
    return {"value": top, "steps": hits} if hits >= max(3, 0.05 * v.size) else None


def clip_saturation(frame, th: dict | None = None) -> dict | None:
    th = thresholds("clip_saturation", th)
    if (got := _recent(frame, "clip_ratio")) is None:
        return None
    c = got[2]
    level = _grade(c, th["crit"], th["warn"], th["info"])
    ev = [f"{c:.1%} of tokens are clipped (median of the last quarter)"]
    low = frame.series("clip_ratio/low_mean")[1] if frame.has("clip_ratio/low_mean") else \
        frame.series("actor/pg_clipfrac_lower")[1]
    high = frame.series("clip_ratio/high_mean")[1] if frame.has("clip_ratio/high_mean") else \
        frame.series("actor/pg_clipfrac_higher")[1]
    ratio = None
    if len(low) >= 2 and len(high) >= 2:
        lo, hi = _tail(low), _tail(high)
        ratio = lo / max(hi, 1e-9)
        ev.append(f"lower clip {lo:.1%}, upper clip {hi:.1%}")
        if ratio >= 3 and lo >= 0.02:
            level = max(level, "warn", key=LEVELS.index)
            ev.append("one-sided clipping: consider clip-higher (DAPO's epsilon_high)")
    return _finding(level, "Clip saturation", ev, clipped=c, asymmetry=ratio)


def kl_drift(frame) -> dict | None:
    s, v = frame.series("kl")
    if len(s) < 8:
        return None
    if np.all(v == 0):
        return _finding("ok", "KL drift", ["KL is exactly 0: no KL term (beta = 0)"], kl_now=0.0)
    now, peak = _tail(v, 0.1), float(np.max(v))
    mid = len(v) // 2
    early = stats.trend(s[:mid].astype(float), v[:mid])["slope"] if mid >= 8 else 0.0
    late = stats.trend(s[mid:].astype(float), v[mid:])["slope"] if len(v) - mid >= 8 else 0.0
    accelerating = late > 0 and late > 1.5 * max(early, 0.0)
    perf = performance(frame)
    stalled = len(perf) >= 6 and stats.direction(stats.trend(perf.steps.astype(float), perf.values)) <= 0
    if now >= 2 and stalled:
        level = "crit"
    elif now >= 2 or (accelerating and now >= 0.5):
        level = "warn"
    elif now >= 0.5:
        level = "info"
    elif peak <= 1e-4:
        level = "warn"
    else:
        level = "ok"
    ev = [f"KL now {now:.3g} (peak {peak:.3g}); slope early {early:+.2e}, late {late:+.2e}/step"]
    if peak <= 1e-4:
        ev.append("the policy is pinned to the reference (KL <= 1e-4)")
    return _finding(level, "KL drift", ev, kl_now=now, kl_peak=peak, accelerating=accelerating)


def gradients(frame) -> dict | None:
    raw = frame.name_of("grad_norm")
    if raw is None:
        return None
    _, v_all = frame.raw[raw]
    nonfinite = int((~np.isfinite(v_all)).sum())
    s, v = frame.series("grad_norm")
    if len(s) < 8:
        return None
    parts = []
    if nonfinite:
        parts.append(("crit", f"{nonfinite} logged gradient norms are NaN/inf"))
    zero = float((v == 0).mean())
    if zero >= 0.2:
        parts.append(("crit" if zero >= 0.7 else "warn" if zero >= 0.4 else "info",
                      f"{zero:.0%} of logged steps have a gradient norm of exactly 0 (no update)"))
    g0, g1 = _head(v), _tail(v, 0.1)
    if g0 > 0 and g1 / g0 <= 0.05:
        parts.append(("warn", f"the gradient norm vanished: {g0:.3g} -> {g1:.3g}"))
    med = float(np.median(v))
    mad = stats.mad_sigma(v)
    spikes = [int(i) for i in np.flatnonzero((v - med) / (mad or 1e-12) > 8) if v[i] > 3 * max(med, 1e-12)] \
        if mad > 0 else []
    if spikes:
        worst = max(spikes, key=lambda i: v[i])
        parts.append(("warn" if len(spikes) >= 3 else "info",
                      f"{len(spikes)} spike(s) beyond 8 robust sigma at steps {[int(s[i]) for i in spikes][:6]}; the "
                      f"largest {v[worst]:.3g} at step {s[worst]} ({v[worst] / max(med, 1e-12):.0f}x the median)"))
    return _worst(parts, "Gradients", [f"gradient norm {g0:.3g} -> {g1:.3g} ({raw})"], spikes=len(spikes),
                  zero_share=zero, nonfinite=nonfinite)


COMPONENT = re.compile(r"^(?:eval_)?rewards?/(?P<name>[^/]+)(?:/mean)?$")


def _constant(x: np.ndarray) -> bool:
    """One value on at least 95% of the steps: the component gives (almost) no signal."""
    _, counts = np.unique(x, return_counts=True)
    return counts.max() >= 0.95 * len(x)


def reward_composition(frame) -> dict | None:
    comps = {}
    for name in frame.raw:
        m = COMPONENT.match(name)
        if m and m.group("name") not in ("mean", "std", "max", "min", "total", "sum", "overall") \
                and not name.startswith("eval"):
            s, v = frame.series(name)
            if len(s) >= 4:
                comps[m.group("name")] = v
    if len(comps) < 2:
        return None

    def spread(x):  # variance after winsorizing at the 5th / 95th percentiles: spikes do not dominate, ties count
        lo, hi = np.quantile(x, [0.05, 0.95])
        return float(np.var(np.clip(x, lo, hi)))

    recent_values = {k: v[len(v) // 2:] for k, v in comps.items()}
    spreads = {k: spread(x) for k, x in recent_values.items()}
    total = sum(spreads.values())
    recent = {k: (v / total if total > 0 else 1 / len(spreads)) for k, v in spreads.items()}
    top = max(recent, key=recent.get)
    aux = any(h in top.lower() for h in AUX_HINTS)
    dead = [k for k, x in recent_values.items() if _constant(x)]
    minor = [k for k, v in recent.items() if v < 0.02 and k not in dead]
    level = "ok"
    if recent[top] >= 0.9:
        level = "crit" if aux else "info"
    elif recent[top] >= 0.7 and aux:
        level = "warn"
    if dead:
        task_dead = [k for k in dead if not any(h in k.lower() for h in AUX_HINTS)]
        level = max(level, "warn" if task_dead else "info", key=LEVELS.index)
    n_obs = min(len(v) for v in comps.values())
    if LEVELS.index(level) > 1 and n_obs < 150:
        level = "info"  # too few observations for a stronger verdict
    ev = ["share of the reward variance over the recent half: " + ", ".join(
        f"{k} {v:.0%}" for k, v in sorted(recent.items(), key=lambda kv: -kv[1]))]
    if dead:
        ev.append("constant components (one value on >= 95% of the recent steps: no gradient signal): "
                  + ", ".join(f"{k} = {float(np.median(recent_values[k])):.3g}" for k in dead))
    if minor:
        ev.append("minor components (they vary, but carry < 2% of the variance): " + ", ".join(
            f"{k} (sd {float(np.std(recent_values[k])):.2g}, differs from its median on "
            f"{float(np.mean(recent_values[k] != np.median(recent_values[k]))):.0%} of steps)" for k in minor))
    return _finding(level, "Reward composition", ev, shares=recent, dominant=top, dead=dead, minor=minor)


def _noise_sd(y: np.ndarray) -> float:
    """One point's noise: the standard deviation of first differences / sqrt 2 (a trend barely moves it; ties and
    quantised values do not zero it, as they can a MAD)."""
    return float(np.std(np.diff(y)) / math.sqrt(2)) if len(y) > 2 else 0.0


def plateau(frame, th: dict | None = None) -> dict | None:
    th = thresholds("plateau", th)
    perf = performance(frame, min_heldout=12)
    s, v = perf.steps, perf.values
    if len(s) < 12:
        return None
    n = len(v)
    window = min(max(int(0.35 * n), 12), n)
    xs = s.astype(float)
    tr = stats.ols_trend(xs[-window:], v[-window:])
    z = tr["change"] / tr["change_se"] if tr["change_se"] > 0 else 0.0
    rising, declining = z > stats.Z95, z < -stats.Z95
    upper = tr["change"] + stats.Z95 * tr["change_se"]  # the largest rise over the window the data allow
    # what "flat" is measured against: a run that rose before the window must have slowed to under FLAT_GAIN of that
    # rise per window; a run that never rose significantly, to under one point's noise
    k = max(3, (n - window) // 10)
    gain, gain_se = (float(v[-window:].mean() - v[:k].mean()),
                     math.sqrt(stats.long_run_variance(v) * (1 / k + 1 / window))) if n - window >= 3 else (0.0, 0.0)
    rose = gain_se > 0 and gain / gain_se > stats.Z95
    noise = _noise_sd(v[-window:])
    scale = FLAT_GAIN * gain if rose else noise
    flat = not rising and not declining and upper < scale
    # since when: scan back from the window, in steps of 5% of the run, while [start, end] shows no significant rise
    flat_from = int(s[n - window])
    if flat or declining:
        for i in range(n - window - max(n // 20, 1), -1, -max(n // 20, 1)):
            seg = stats.ols_trend(xs[i:], v[i:])
            if seg["change_se"] > 0 and seg["change"] / seg["change_se"] > stats.Z95:
                break
            flat_from = int(s[i])
    since = float((s[-1] - flat_from) / max(s[-1] - s[0], 1))
    long_enough = since >= th["flat_share"] and s[-1] - flat_from >= th["min_flat_steps"]
    level = "warn" if (declining or flat) and long_enough else "info" if flat or declining else "ok"
    state = ("rising" if rising else "falling" if declining else "flat" if flat else
             "not significantly rising, but too noisy to call flat")
    against = (f"{FLAT_GAIN:.0%} of the run's earlier rise ({gain:+.3g}) is {scale:.3g}" if rose
               else f"one point's noise is {scale:.3g} (no significant rise before)")
    ev = [f"{perf.describe()} over the last {window} points: {state}, change {tr['change']:+.3g} "
          f"[{tr['change'] - stats.Z95 * tr['change_se']:+.3g}, {upper:+.3g}]; {against}"]
    if flat or declining:
        ev.append(f"no significant rise since step {flat_from} ({since:.0%} of the run)")
    return _finding(level, "Plateau", ev, change=tr["change"], change_se=tr["change_se"], scale=scale,
                    flat_since=flat_from if (flat or declining) else None, since_share=since if (flat or declining)
                    else None, state=state)


def heldout_decline(frame, th: dict | None = None) -> dict | None:
    need = int(thresholds("heldout_decline", th)["min_evaluations"])
    s, v = frame.series("heldout_accuracy")
    if len(s) < need:
        return None
    share = v.min() >= 0 and v.max() <= 1
    label = "held-out accuracy" if share else "held-out score"
    xs = s.astype(float)
    parts = {"over all evaluations": stats.ols_trend(xs, v)}
    half = len(s) // 2
    if len(s) - half >= need:
        parts["over the last half"] = stats.ols_trend(xs[half:], v[half:])
    falling = [(k, t) for k, t in parts.items() if t["p"] is not None and t["p"] < 0.025 and t["change"] < 0]
    peak = int(np.argmax(v))
    ev = [f"{label} ({frame.name_of('heldout_accuracy')}) {v[0]:.3g} at step {s[0]}, best {v[peak]:.3g} at step "
          f"{s[peak]}, {v[-1]:.3g} at step {s[-1]} ({len(s)} evaluations)"]
    for k, t in (falling or parts.items()):
        ev.append(f"{k}: change {t['change']:+.3g} [{t['change'] - stats.Z95 * t['change_se']:+.3g}, "
                  f"{t['change'] + stats.Z95 * t['change_se']:+.3g}], p {t['p']:.2g}")
    if falling:
        ev.insert(0, f"{label} is falling {falling[0][0]}: overfitting to the training prompts or forgetting")
    return _finding("warn" if falling else "ok", "Held-out decline", ev,
                    change={k: t["change"] for k, t in parts.items()}, falling=[k for k, _ in falling])


DETECTORS = {"zero_advantage": zero_advantage, "entropy_collapse": entropy_collapse,
             "reward_vs_heldout": reward_vs_heldout, "length": length, "clip_saturation": clip_saturation,
             "kl_drift": kl_drift, "gradients": gradients, "reward_composition": reward_composition,
             "plateau": plateau, "heldout_decline": heldout_decline}


def run_detectors(frame, names=None, overrides: dict | None = None) -> tuple[dict, list[str]]:
    """The detectors (every one, or ``names``) on ``frame``: (findings by name, names of those that could not
    measure); ``overrides``: thresholds by detector (see :data:`rlscope.analysis.findings.THRESHOLDS`)."""
    checks, missing = {}, []
    for name in names or DETECTORS:
        detector = DETECTORS[name]
        result = detector(frame, overrides[name]) if overrides and name in overrides else detector(frame)
        if result is None:
            missing.append(name)
        else:
            checks[name] = result
    return checks, missing


def timeline(frame, cuts: int = 8, final: dict | None = None) -> list[dict]:
    """The detectors' severities as the run went: each detector on the run up to ``cuts`` evenly spaced RL steps
    (``{"step", "severity": {detector: level}}``) -- when a problem started, for the report. ``final``: the
    findings on the whole run, when already computed (the last cut is the whole run)."""
    rl = frame.rl_steps
    if len(rl) < 2 * cuts:
        return []
    out = []
    for step in np.unique(rl[np.linspace(len(rl) // cuts, len(rl) - 1, cuts).round().astype(int)]):
        whole = final is not None and step >= frame.last_step  # this cut is the whole run
        checks = final if whole else run_detectors(frame.until(int(step)))[0]
        out.append({"step": int(step), "severity": {n: c["severity"] for n, c in checks.items()}})
    return out


@register("health", outputs=("severity", "alarms", "checks", "not_measured", "timeline"))
def health(frame) -> tuple[str, dict]:
    """Run health: zero-advantage groups, entropy collapse, reward vs held-out, length, clipping, KL, gradients,
    reward composition, plateau, held-out decline -- each ok / info / warn / crit with its evidence, and their
    timeline."""
    checks, missing = run_detectors(frame)
    if not checks:
        raise Skip("the run logs none of the metrics the detectors read (" + ", ".join(missing) + ")")
    alarms = [{"detector": n, **c} for n, c in checks.items() if c["severity"] in ("warn", "crit")]
    alarms.sort(key=lambda a: -LEVELS.index(a["severity"]))
    status = max((c["severity"] for c in checks.values()), key=LEVELS.index, default="ok")
    infos = [n for n, c in checks.items() if c["severity"] == "info"]
    if alarms:
        verdict = "; ".join(f"{a['severity'].upper()} {a['title'].lower()}: {a['evidence'][0]}" for a in alarms[:3])
    else:
        verdict = f"No alarm from {len(checks)} checks" + (f" (info: {', '.join(infos)})" if infos else "")
    if missing:
        verdict += f"; not measurable here: {', '.join(missing)}"
    return verdict + ".", {"severity": status, "alarms": alarms, "checks": checks, "not_measured": missing,
                           "timeline": timeline(frame, final=checks)}
