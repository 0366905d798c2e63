"""Analyses: one file each, registered like the probes, each a function from a :class:`RunFrame` to a :class:`Result`.

An analysis declares what it ``requires`` (groups of frame inputs: at least one name of each group must be present,
e.g. ``(("response_length",),)``; the names are canonical metric names, or ``passk`` / ``weights`` / ``rollouts``) and
the ``outputs`` its result always carries -- null, with the reason, when not computable. Inside, ``raise Skip(reason)``
when the inputs are there but unusable (too few points, no variation). Results carry numbers with intervals
(``<name>_ci`` = [low, high], 95%) and a one-sentence verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from rlscope.analysis.frame import RunFrame
from rlscope.registry import Registry

FRAME_PARTS = ("passk", "weights", "rollouts")
DESCRIBE = {"passk": "pass@k evaluations (rlscope's passk probe)", "rollouts": "rollout text (rlscope's store)",
            "weights": "weight-geometry rows (rlscope's weights probe)",
            "rlscope/weights/angle_left_mean": "weight-geometry probes (rlscope's weights probe)"}


def _describe(name: str) -> str:
    from rlscope.analysis.aliases import ALIASES

    if name in DESCRIBE:
        return DESCRIBE[name]
    return f"{name.replace('_', ' ')}" if name in ALIASES else name


class Skip(Exception):
    """The analysis cannot say anything about this run; the message says why."""


@dataclass(frozen=True)
class Analysis:
    name: str
    fn: Callable
    requires: tuple[tuple[str, ...], ...]
    outputs: tuple[str, ...]
    doc: str


@dataclass
class Result:
    """``status``: "ok" or "skipped"; ``verdict``: one sentence; ``values``: its numbers; ``reason``: why skipped."""

    name: str
    status: str
    verdict: str
    values: dict = field(default_factory=dict)
    reason: str | None = None

    def to_json(self) -> dict:
        return {"status": self.status, "verdict": self.verdict, "reason": self.reason,
                **{k: _clean(v) for k, v in self.values.items()}}


def _clean(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if hasattr(value, "item"):  # numpy scalars
        return _clean(value.item())
    return value


ANALYSES: Registry[Analysis] = Registry("analysis", package="rlscope.analysis.analyses", plural="analyses")


def register(name: str, *, requires: tuple[tuple[str, ...], ...] = (), outputs: tuple[str, ...] = ()):
    """Decorator: declare ``fn(frame, **options) -> (verdict, values)`` as the analysis ``name``."""
    clash = {"status", "verdict", "reason"} & set(outputs)
    if clash:
        raise ValueError(f"analysis {name!r}: outputs may not be named {sorted(clash)} (the result's own fields)")

    def deco(fn):
        doc = " ".join((fn.__doc__ or "").strip().split("\n\n")[0].split())
        ANALYSES.register(name, Analysis(name, fn, tuple(tuple(g) for g in requires), tuple(outputs), doc))
        return fn

    return deco


PERFORMANCE = ("heldout_accuracy", "train_accuracy", "reward")


def fmt3(v) -> str:
    """A number in a verdict (3 significant digits), ``?`` when it could not be computed."""
    return "?" if v is None else f"{v:.3g}"


def performance_series(frame: RunFrame, min_heldout: int = 6):
    """``(name, steps, values)`` of the run's performance: held-out accuracy when it has at least ``min_heldout``
    RL points, else training accuracy, else the training reward; ``(None, [], [])`` when the run has none."""
    for name in PERFORMANCE:
        steps, values = frame.series(name)
        if len(steps) >= (min_heldout if name == "heldout_accuracy" else 2):
            return name, steps, values
    return None, steps[:0], values[:0]


def _present(frame: RunFrame, name: str) -> bool:
    if name in FRAME_PARTS:
        part = getattr(frame, name)
        return part is not None and len(part) > 0
    return frame.has(name, min_points=2)


def run_analysis(analysis: Analysis, frame: RunFrame, **options) -> Result:
    """Run one analysis: skipped with a stated reason when its inputs are missing or unusable."""
    empty = {k: None for k in analysis.outputs}
    for group in analysis.requires:
        if not any(_present(frame, n) for n in group):
            what = " or ".join(_describe(n) for n in group)
            reason = f"not measurable: the run has no {what}"
            return Result(analysis.name, "skipped", reason, empty, reason)
    try:
        verdict, values = analysis.fn(frame, **options)
    except Skip as exc:
        reason = f"not measurable: {exc}"
        return Result(analysis.name, "skipped", reason, empty, reason)
    return Result(analysis.name, "ok", verdict, {**empty, **values})


def run_all(frame: RunFrame, names=None, options: dict | None = None) -> dict[str, Result]:
    """Every registered analysis (or ``names``) on ``frame``."""
    options = options or {}
    names = names or ANALYSES.names()
    return {n: run_analysis(ANALYSES.get(n), frame, **options.get(n, {})) for n in names}
