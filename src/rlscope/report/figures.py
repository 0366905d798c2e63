"""The report's figures: one function a figure, registered, each drawing saved results (the metric series a run
logged and the numbers its analyses wrote) as an Altair (Vega-Lite) chart; none computes a statistic of its own.

A figure takes the runs (one, or several in compare mode: each run a colour) and returns a chart, or raises
:class:`NotDrawn` with the reason ("not measurable: ..."), which the page prints in its place.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rlscope.analysis.stats import even_indices
from rlscope.registry import Registry

SEVERITY = ["ok", "info", "warn", "crit"]
SEVERITY_COLORS = ["#cfe8cf", "#9ecae1", "#fdae6b", "#de2d26"]
WIDTH = 620


class NotDrawn(Exception):
    """A figure the runs lack the inputs for; the message is the reason shown on the page."""


@dataclass
class Figure:
    name: str
    title: str
    question: str
    draw: object  # (runs) -> alt.Chart


FIGURES: Registry[Figure] = Registry("figure")
ORDER: list[str] = []


def figure(name: str, title: str, question: str):
    def wrap(fn):
        FIGURES.register(name, Figure(name, title, question, fn))
        ORDER.append(name)
        return fn
    return wrap


def _alt():
    import altair as alt

    alt.data_transformers.disable_max_rows()
    return alt


def _rows(runs, names: dict[str, str], rl_only: bool = False) -> list[dict]:
    """Long rows (run, step, metric, value) of canonical or raw metrics, SFT steps included unless ``rl_only``."""
    rows = []
    for run in runs:
        for label, name in names.items():
            s, v = run.frame.series(name, rl_only=rl_only)
            s, v = _thin(s, v)
            rows += [{"run": run.label, "step": int(a), "metric": label, "value": float(b)} for a, b in zip(s, v)]
    return rows


def _thin(s, v, most: int = 1500):
    """At most ``most`` points (evenly spaced) per series: the page stays small for long runs."""
    idx = even_indices(len(s), most)
    return s[idx], v[idx]


def _sft_spans(runs) -> list[dict]:
    """Contiguous SFT step ranges of each run (the warm start and schedule-chosen SFT steps), for shading."""
    spans = []
    for run in runs:
        steps = sorted(run.frame.sft_steps)
        if not steps:
            continue
        start = prev = steps[0]
        for s in steps[1:] + [None]:
            if s is not None and s == prev + 1:
                prev = s
                continue
            spans.append({"run": run.label, "from": start, "to": prev + 1, "phase": "SFT"})
            if s is not None:
                start = prev = s
    return spans


def _color(alt, runs, field: str = "run"):
    return alt.Color(f"{field}:N", legend=alt.Legend(orient="top") if len(runs) > 1 else None)


def _over_steps(alt, runs, rows, title: str, y_title: str, color_field: str = "metric", dash_runs: bool = True):
    if not rows:
        raise NotDrawn(f"not measurable: the run has no {y_title}")
    base = alt.Chart(alt.Data(values=rows)).encode(x=alt.X("step:Q", title="step"))
    enc = {"y": alt.Y("value:Q", title=y_title, scale=alt.Scale(zero=False)),
           "color": _color(alt, runs) if color_field == "run" else
           alt.Color(f"{color_field}:N", legend=alt.Legend(orient="top", title=None))}
    if len(runs) > 1 and dash_runs:
        enc["strokeDash"] = alt.StrokeDash("run:N", legend=alt.Legend(orient="top"))
    lines = base.mark_line(strokeWidth=1.5).encode(**enc, tooltip=["run:N", "metric:N", "step:Q", "value:Q"])
    layers = [lines]
    lo, hi = min(r["step"] for r in rows), max(r["step"] for r in rows)
    spans = [{**sp, "from": max(sp["from"], lo), "to": min(sp["to"], hi)} for sp in _sft_spans(runs)]
    before = [sp for sp in spans if sp["from"] >= sp["to"]]  # SFT steps that logged none of these metrics
    spans = [sp for sp in spans if sp["from"] < sp["to"]]
    if before:
        title = f"{title} (SFT steps before step {lo} logged none of these)"
    if spans:
        shade = alt.Chart(alt.Data(values=spans)).mark_rect(opacity=0.12, color="#7570b3").encode(
            x="from:Q", x2="to:Q", tooltip=["run:N", "phase:N", "from:Q", "to:Q"])
        layers.insert(0, shade)
    return alt.layer(*layers).properties(width=WIDTH, height=170, title=title)


@figure("dynamics", "Entropy and accuracy over steps", "How do exploration and performance move? (SFT shaded)")
def dynamics(runs):
    alt = _alt()
    ent = _rows(runs, {"entropy": "entropy"})
    perf = _rows(runs, {"held-out accuracy": "heldout_accuracy", "training accuracy": "train_accuracy",
                        "reward": "reward"})
    warm = _rows(runs, {"loss": "sft/loss", "entropy": "sft/entropy", "token accuracy": "sft/mean_token_accuracy"})
    charts = []
    if ent:
        charts.append(_over_steps(alt, runs, ent, "policy entropy", "entropy (nats)"))
    if perf:
        charts.append(_over_steps(alt, runs, perf, "performance", "accuracy / reward"))
    if not charts:
        raise NotDrawn("not measurable: the run logs neither entropy nor performance")
    if warm:  # the SFT warm start logs its own metrics (on the demonstrations): its own panel, first in time
        charts.insert(0, _over_steps(alt, runs, warm, "the SFT warm start: loss, entropy and token accuracy on the "
                                                   "demonstrations", "loss / entropy / accuracy"))
    return alt.vconcat(*charts)


def _analysis(run, name: str) -> dict:
    return (run.result.get("analyses") or {}).get(name) or {}


@figure("entropy_law", "Entropy-performance law", "Does performance follow R = -a e^H + b, and what does the early "
        "prefix forecast?")
def entropy_law(runs):
    alt = _alt()
    points, curves, bands = [], [], []
    for run in runs:
        law = _analysis(run, "entropy_law")
        if law.get("status") != "ok" or not law.get("points"):
            continue
        prefix_end = law.get("forecast_prefix_steps")
        for step, h, r in law["points"]:
            part = "prefix (fit of the forecast)" if prefix_end is not None and step <= prefix_end else "rest"
            points.append({"run": run.label, "step": step, "entropy": h, "performance": r, "part": part})
        hs = np.linspace(min(p[1] for p in law["points"]), max(p[1] for p in law["points"]), 60)
        curves += [{"run": run.label, "entropy": float(h), "value": float(law["b"] - law["a"] * np.exp(h)),
                    "fit": "law fitted on all points"} for h in hs]
        if law.get("forecast_a") is not None:
            pred = law["forecast_b"] - law["forecast_a"] * np.exp(hs)
            band = law.get("forecast_band") or 0.0
            curves += [{"run": run.label, "entropy": float(h), "value": float(p), "fit": "forecast from the prefix"}
                       for h, p in zip(hs, pred)]
            bands += [{"run": run.label, "entropy": float(h), "lo": float(p - band), "hi": float(p + band)}
                      for h, p in zip(hs, pred)]
    if not points:
        raise NotDrawn(_reason(runs, "entropy_law") or "not measurable: no entropy-law fit")
    many = len(runs) > 1  # compare mode: each run its colour (points, both curves, the band); prefix/rest by shape
    law0 = _analysis(runs[0], "entropy_law")
    title = law0.get("target_label") or TARGET_TITLES.get(law0.get("target"), "performance")
    layers = []
    if bands:
        area = alt.Chart(alt.Data(values=bands)).mark_area(opacity=0.12 if many else 0.15)
        layers.append(area.encode(x=alt.X("entropy:Q", title="entropy H (nats)"), y="lo:Q", y2="hi:Q",
                                  **({"color": _color(alt, runs)} if many else {"color": alt.value("#d95f02")})))
    legend = alt.Legend(orient="top", title=None)
    layers.append(alt.Chart(alt.Data(values=points)).mark_point(size=28, opacity=0.7, filled=True).encode(
        x=alt.X("entropy:Q", title="entropy H (nats)", scale=alt.Scale(zero=False)),
        y=alt.Y("performance:Q", title=title, scale=alt.Scale(zero=False)),
        color=_color(alt, runs) if many else alt.Color("part:N", legend=legend),
        shape=alt.Shape("part:N", legend=legend) if many else alt.value("circle"),
        tooltip=["run:N", "step:Q", "entropy:Q", "performance:Q", "part:N"]))
    layers.append(alt.Chart(alt.Data(values=curves)).mark_line().encode(
        x="entropy:Q", y="value:Q", strokeDash=alt.StrokeDash("fit:N", legend=legend),
        detail="run:N", color=_color(alt, runs) if many else alt.value("#333")))
    return alt.layer(*layers).properties(width=WIDTH, height=260, title="performance against entropy")


TARGET_TITLES = {"train_accuracy": "training accuracy", "heldout_accuracy": "held-out accuracy", "reward": "reward"}


def _reason(runs, name: str) -> str:
    return "; ".join(f"{r.label}: {_analysis(r, name).get('reason')}" if len(runs) > 1 else
                     str(_analysis(r, name).get("reason")) for r in runs if _analysis(r, name).get("reason"))


@figure("length", "Response length and the two-stage fit", "Does length shrink, then grow? Where is the break?")
def length(runs):
    alt = _alt()
    rows = _rows(runs, {"response length": "response_length"}, rl_only=True)
    if not rows:
        raise NotDrawn("not measurable: the run has no response length")
    base = alt.Chart(alt.Data(values=rows)).mark_line(strokeWidth=1, opacity=0.6).encode(
        x=alt.X("step:Q"), y=alt.Y("value:Q", title="mean completion length (tokens)", scale=alt.Scale(zero=False)),
        color=_color(alt, runs), tooltip=["run:N", "step:Q", "value:Q"])
    layers, fits, intervals = [base], [], []
    for run in runs:
        ts = _analysis(run, "two_stage")
        fits += [{"run": run.label, "step": k[0], "value": k[1]} for k in ts.get("fit_knots") or []]
        ci = ts.get("break_step_ci") or [None, None]
        if ts.get("break_step") is not None and None not in ci:
            intervals.append({"run": run.label, "from": ci[0], "to": ci[1], "break": ts["break_step"]})
    if intervals:
        layers.insert(0, alt.Chart(alt.Data(values=intervals)).mark_rect(opacity=0.15, color="#e7298a").encode(
            x="from:Q", x2="to:Q", tooltip=["run:N", "break:Q", "from:Q", "to:Q"]))
    if fits:
        layers.append(alt.Chart(alt.Data(values=fits)).mark_line(strokeWidth=2.5, color="#e7298a").encode(
            x="step:Q", y="value:Q", detail="run:N"))
    return alt.layer(*layers).properties(width=WIDTH, height=220,
                                         title="length (RL steps), piecewise fit and the break's 95% interval")


@figure("behavior", "Reflection and planning tokens", "Do re-checking and planning phrases take over?")
def behavior(runs):
    alt = _alt()
    rows = _rows(runs, {"reflection words per completion": "reflection_rate"}, rl_only=True)
    for run in runs:
        pt = _analysis(run, "planning_tokens")
        rows += [{"run": run.label, "step": s, "metric": "planning-token share", "value": share}
                 for s, share, _ in pt.get("per_step") or []]
    if not rows:
        raise NotDrawn("not measurable: no reflection rate and no planning-token mining (needs rollout text)")
    return _over_steps(alt, runs, rows, "behaviour from the rollouts", "rate / share")


@figure("entropy_bands", "Entropy percentiles and Cov(logp, A)", "Is entropy collapsing everywhere or only in the "
        "tail? What drives it?")
def entropy_bands(runs):
    alt = _alt()
    lines = _rows(runs, {"Cov(logp, A)": "rlscope/cov/mean"}, rl_only=True)
    band_rows, med_rows = [], []
    for run in runs:
        (ls, lv), (hs, hv) = run.frame.series("rlscope/entropy/p10"), run.frame.series("rlscope/entropy/p90")
        steps, il, ih = np.intersect1d(ls, hs, return_indices=True)
        keep = even_indices(len(steps), 1500)
        band_rows += [{"run": run.label, "step": int(steps[k]), "p10": float(lv[il[k]]), "p90": float(hv[ih[k]])}
                      for k in keep]
        s, v = _thin(*run.frame.series("rlscope/entropy/p50"))
        med_rows += [{"run": run.label, "step": int(a), "p50": float(b)} for a, b in zip(s, v)]
    if not band_rows and not lines:
        raise NotDrawn("not measurable: entropy percentiles and Cov(logp, A) come from rlscope's entropy and cov "
                       "probes")
    charts = []
    if band_rows:
        layers = [alt.Chart(alt.Data(values=band_rows)).mark_area(opacity=0.25).encode(
            x=alt.X("step:Q"), y=alt.Y("p10:Q", title="token entropy (nats)"), y2="p90:Q", color=_color(alt, runs))]
        if med_rows:
            layers.append(alt.Chart(alt.Data(values=med_rows)).mark_line().encode(
                x="step:Q", y="p50:Q", color=_color(alt, runs)))
        charts.append(alt.layer(*layers).properties(width=WIDTH, height=170,
                                                    title="token entropy: p10-p90 band, median line"))
    if lines:
        charts.append(_over_steps(alt, runs, lines, "Cov(logp, A): positive = confident tokens reinforced",
                                  "covariance", color_field="run", dash_runs=False))
    return alt.vconcat(*charts)


@figure("passk", "pass@k against the base", "Is RL expanding the capability boundary or sharpening inside it?")
def passk(runs):
    alt = _alt()
    curves, cross = [], []
    for run in runs:
        for ev in run.frame.passk:
            label = ev.get("label") or ("base" if ev.get("kind") == "base" else f"step {ev['step']}")
            curves += [{"run": run.label, "k": int(k), "pass": float(p), "model": label, "step": int(ev["step"]),
                        "base": ev.get("kind") == "base"} for k, p in _curve(ev)]
        b = _analysis(run, "boundary")
        cross += [{"run": run.label, "step": int(s), "crossover k": k} for s, k in b.get("crossover_over_time") or []
                  if k is not None]
    if not curves:
        raise NotDrawn("not measurable: the run has no pass@k evaluations (rlscope's passk probe)")
    chart = alt.Chart(alt.Data(values=curves)).mark_line(point=True).encode(
        x=alt.X("k:Q", scale=alt.Scale(type="log", base=2), title="k"),
        y=alt.Y("pass:Q", title="pass@k"),
        color=alt.Color("step:Q", scale=alt.Scale(scheme="viridis"), title="step"),
        strokeDash=alt.condition("datum.base", alt.value([5, 3]), alt.value([1, 0])),
        detail="model:N", tooltip=["run:N", "model:N", "k:Q", "pass:Q"])
    if len(runs) > 1:
        chart = chart.encode(shape="run:N")
    charts = [chart.properties(width=WIDTH, height=220, title="pass@k curves (base dashed), coloured by step")]
    if cross:
        charts.append(alt.Chart(alt.Data(values=cross)).mark_line(point=True).encode(
            x="step:Q", y=alt.Y("crossover k:Q", title="crossover k (base catches up)"), color=_color(alt, runs),
            tooltip=["run:N", "step:Q", "crossover k:Q"]).properties(width=WIDTH, height=140,
                                                                     title="crossover k over time"))
    return alt.vconcat(*charts)


def _curve(ev) -> list[tuple[int, float]]:
    curve = ev.get("curve") or []
    if curve and isinstance(curve[0], (list, tuple)):
        return [(int(k), float(p)) for k, p in curve]
    if ev.get("ks"):  # a published curve: pass@k at the listed ks only
        return [(int(k), float(p)) for k, p in zip(ev["ks"], curve)]
    return [(k + 1, float(p)) for k, p in enumerate(curve)]


@figure("weights", "Weight-update geometry", "Do the weights rotate or scale? Does the update settle into one "
        "direction?")
def weights(runs):
    alt = _alt()
    heat, trend = [], []
    for run in runs:
        rows = run.frame.weights
        if not rows:
            continue
        last = max(r["step"] for r in rows)
        for r in rows:
            layer, kind = _layer_kind(r["matrix"])
            if r["step"] == last:
                heat.append({"run": run.label, "layer": layer, "matrix": kind,
                             "angle": float(r.get("angle_left_mean") or 0.0),
                             "sv change": float(r.get("sv_rel_change_mean") or 0.0)})
        by_step: dict[int, list[float]] = {}
        for r in rows:
            if r.get("dw_rank1_energy") is not None:
                by_step.setdefault(int(r["step"]), []).append(float(r["dw_rank1_energy"]))
        trend += [{"run": run.label, "step": s, "rank-1 energy": float(np.mean(v))} for s, v in sorted(by_step.items())]
    if not heat:
        raise NotDrawn("not measurable: the run has no weight-geometry probes (rlscope's weights probe)")
    hm = alt.Chart(alt.Data(values=heat)).mark_rect().encode(
        x=alt.X("matrix:N", title="matrix kind"), y=alt.Y("layer:O", title="layer"),
        color=alt.Color("angle:Q", title="mean principal angle (rad)", scale=alt.Scale(scheme="oranges")),
        tooltip=["run:N", "layer:O", "matrix:N", "angle:Q", "sv change:Q"])
    if len(runs) > 1:
        hm = hm.encode(column=alt.Column("run:N"))
    charts = [hm.properties(width=min(WIDTH, 320), height=180, title="rotation at the last probe (layer x matrix)")]
    if trend:
        charts.append(alt.Chart(alt.Data(values=trend)).mark_line(point=True).encode(
            x="step:Q", y=alt.Y("rank-1 energy:Q", title="rank-1 energy of dW (mean over matrices)"),
            color=_color(alt, runs), tooltip=["run:N", "step:Q", "rank-1 energy:Q"]).properties(
            width=WIDTH, height=150, title="rank-1 energy of the update"))
    return alt.vconcat(*charts)


def _layer_kind(matrix: str) -> tuple[int, str]:
    parts = matrix.split(".")
    layer = next((int(p) for p in parts if p.isdigit()), -1)
    kind = next((p for p in reversed(parts) if p not in ("weight", "bias") and not p.isdigit()), matrix)
    return layer, kind


@figure("health", "Health detectors over the run", "When did each problem start?")
def health(runs):
    alt = _alt()
    rows = []
    for run in runs:
        for point in _analysis(run, "health").get("timeline") or []:
            rows += [{"run": run.label, "step": point["step"], "detector": name, "severity": level}
                     for name, level in point["severity"].items()]
    if not rows:
        raise NotDrawn(_reason(runs, "health") or "not measurable: too few RL steps for a timeline")
    chart = alt.Chart(alt.Data(values=rows)).mark_rect().encode(
        x=alt.X("step:O", title="the run up to step"), y=alt.Y("detector:N", title=None),
        color=alt.Color("severity:N", scale=alt.Scale(domain=SEVERITY, range=SEVERITY_COLORS),
                        legend=alt.Legend(orient="top")),
        tooltip=["run:N", "detector:N", "step:O", "severity:N"])
    if len(runs) > 1:
        chart = chart.encode(row=alt.Row("run:N"))
    return chart.properties(width=WIDTH, height=alt.Step(16), title="each detector on the run as it stood then")
