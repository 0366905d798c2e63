"""Side-by-side summary of one metric across runs (e.g. the entropy of plain DAPO vs Clip-Cov vs KL-Cov)."""

from __future__ import annotations

import math
from pathlib import Path

from rlscope.store import RunReader


def summarize(run_dirs: list[str | Path], metric: str = "rlscope/entropy/mean", tail: int = 10) -> list[dict]:
    """Per run: first and last value of ``metric``, mean over the last ``tail`` steps, and the step range."""
    out = []
    for d in run_dirs:
        steps, values = RunReader(d).series(metric)
        if not steps:
            raise KeyError(f"run {d} has no metric {metric!r}")
        finite = [(s, v) for s, v in zip(steps, values) if v is not None and not math.isnan(v)]
        last = [v for _, v in finite[-tail:]]
        out.append({"run": Path(d).name, "metric": metric, "steps": [steps[0], steps[-1]],
                    "first": finite[0][1], "last": finite[-1][1], f"mean_last_{tail}": sum(last) / len(last)})
    return out
