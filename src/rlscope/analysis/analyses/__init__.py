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

import numpy as np

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
    """The analysis cannot say anything about this run; the message says why. ``values``: numbers worth keeping all
    the same (what the report draws), e.g. the fit that could not decide."""

    def __init__(self, reason: str, values: dict | None = None):
        super().__init__(reason)
        self.values = values or {}


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
_LABELS = {("heldout_accuracy", True): "held-out accuracy", ("heldout_accuracy", False): "held-out score",
           ("train_accuracy", True): "training accuracy", ("train_accuracy", False): "correctness reward",
           ("reward", True): "training reward", ("reward", False): "training reward"}


def fmt3(v) -> str:
    """A number in a verdict (3 significant digits), ``?`` when it could not be computed."""
    return "?" if v is None else f"{v:.3g}"


@dataclass(frozen=True)
class Performance:
    """The run's performance series and what it is, so that a verdict names it in its own terms.

    ``name``: the canonical name (held-out accuracy, training accuracy or reward; None when the run has none);
    ``raw``: the log's name; ``accuracy``: it is a share in [0, 1] -- an accuracy by name whose values all lie there.
    A "training accuracy" by name whose values leave [0, 1] (a correctness reward of 0 or 2, a 0-2 sum) is a
    correctness reward, not a share: no range is assumed for it, nor for a reward.
    """

    name: str | None
    raw: str | None
    steps: np.ndarray
    values: np.ndarray
    accuracy: bool = False

    @property
    def label(self) -> str:
        return _LABELS[(self.name, self.accuracy)] if self.name else "performance"

    @property
    def bounds(self) -> tuple[float, float] | None:
        """The values the metric can take: [0, 1] for an accuracy, unknown (None) otherwise."""
        return (0.0, 1.0) if self.accuracy else None

    def describe(self) -> str:
        """E.g. "held-out accuracy (val/acc, a share in [0, 1])", "training reward (reward, observed -9.7 to 10.9)"."""
        if self.name is None:
            return "performance"
        if self.accuracy:
            return f"{self.label} ({self.raw}, a share in [0, 1])"
        lo, hi = (float(np.min(self.values)), float(np.max(self.values))) if len(self.values) else (math.nan,) * 2
        note = ": not a share" if self.name != "reward" else ""
        return f"{self.label} ({self.raw}, observed {lo:.3g} to {hi:.3g}{note})"

    def __len__(self) -> int:
        return len(self.steps)


def performance(frame: RunFrame, min_heldout: int = 6, min_points: int = 2) -> Performance:
    """The run's performance: held-out accuracy when it has at least ``min_heldout`` RL points, else training accuracy,
    else the training reward (each with at least ``min_points``); an empty :class:`Performance` when it has none."""
    for name in PERFORMANCE:
        steps, values = frame.series(name)
        if len(steps) >= max(min_heldout if name == "heldout_accuracy" else min_points, 1):
            share = name != "reward" and bool(values.min() >= 0 and values.max() <= 1)
            return Performance(name, frame.name_of(name), steps, values, share)
    return Performance(None, None, np.zeros(0, np.int64), np.zeros(0))


def clip_to(bounds, ci: list) -> list:
    """An interval clipped to a metric's ``bounds`` (None: unknown, left as it is)."""
    if bounds is None or ci[0] is None:
        return ci
    return [min(max(ci[0], bounds[0]), bounds[1]), min(max(ci[1], bounds[0]), bounds[1])]


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
        return Result(analysis.name, "skipped", reason, {**empty, **exc.values}, reason)
    return Result(analysis.name, "ok", verdict, {**empty, **values})


def run_all(frame: RunFrame, names=None, options: dict | None = None) -> dict[str, Result]:
    """Every registered analysis (or ``names``) on ``frame``."""
    options = options or {}
    names = names or ANALYSES.names()
    return {n: run_analysis(ANALYSES.get(n), frame, **options.get(n, {})) for n in names}
