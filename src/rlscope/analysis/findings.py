"""A detector's finding: severity levels, the thresholds a user may change, and the small helpers the health
detectors (:mod:`rlscope.analysis.analyses.health`) and the live alarms (:mod:`rlscope.callbacks.alarms`) share.

A finding is ``{"severity": ok | info | warn | crit, "title", "evidence": [sentences], "metrics": {...}}``; levels are
medians of a window (the last quarter unless said)."""

from __future__ import annotations

import numpy as np

LEVELS = ("ok", "info", "warn", "crit")
# Thresholds a user may change (live alarms: ``rlscope.attach(trainer, alarms={"thresholds": {...}})``); the rest
# are fixed in the detectors (see the health module's docstring).
THRESHOLDS = {
    "zero_advantage": {"info": 0.30, "warn": 0.50, "crit": 0.75},  # share of all-equal-reward groups
    "entropy_collapse": {"floor_share": 0.10, "soon_share": 0.25},  # floor = share x start; "soon": within share x run
    "length": {"truncation_warn": 0.05, "truncation_crit": 0.15, "collapse_ratio": 0.5},
    "clip_saturation": {"info": 0.10, "warn": 0.20, "crit": 0.40},  # share of clipped tokens
    "plateau": {"flat_share": 0.30, "min_flat_steps": 50},  # flat for this share of the run and these steps: warn
    "reward_vs_heldout": {"min_evaluations": 8},
    "heldout_decline": {"min_evaluations": 5},
}


def thresholds(name: str, overrides: dict | None = None) -> dict:
    """The detector's thresholds, with ``overrides`` (unknown keys are an error naming the known ones)."""
    th = dict(THRESHOLDS[name])
    for key, value in (overrides or {}).items():
        if key not in th:
            raise ValueError(f"health: {name} has no threshold {key!r}; it has {sorted(th)}")
        th[key] = float(value)
    return th


def tail(y, share=0.25):
    """The median of the last ``share`` of ``y`` (at least 3 points)."""
    return float(np.median(y[-max(3, int(round(len(y) * share))):]))


def head(y, share=0.10):
    """The median of the first ``share`` of ``y`` (5 to 25 points)."""
    return float(np.median(y[:min(max(5, int(round(len(y) * share))), 25, len(y))]))


def finding(level: str, title: str, evidence: list[str], **metrics) -> dict:
    return {"severity": level, "title": title, "evidence": evidence, "metrics": metrics}


def worst(parts: list[tuple[str, str]], title: str, context: list[str], **metrics) -> dict:
    """A finding from several sub-checks ``(level, evidence)``: the worst sets the severity and leads the evidence."""
    parts = sorted(parts, key=lambda p: -LEVELS.index(p[0]))
    level = parts[0][0] if parts else "ok"
    return finding(level, title, [text for lvl, text in parts if lvl != "ok"] + context, **metrics)


def grade(x: float, crit: float, warn: float, info: float = float("inf")) -> str:
    """The severity of a share or ratio against its thresholds (higher is worse)."""
    return "crit" if x >= crit else "warn" if x >= warn else "info" if x >= info else "ok"
