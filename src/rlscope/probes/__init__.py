"""Probes: pure functions on tensors/arrays that turn what a training step produced into named statistics.

A probe is declared once here (name, the inputs it reads, cost class, default cadence) and serves the live
:class:`rlscope.callbacks.Observatory` (fed from the taps) and offline recomputation alike. Probe modules import
nothing from the trainer, W&B or the run store.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Probe:
    """A registered probe.

    ``fn(batch, state, **options) -> dict[str, float | np.ndarray]``: ``batch`` is a :class:`~rlscope.probes.batch.TokenBatch`;
    ``state`` a dict the probe may use to remember values across calls (e.g. a threshold fixed at the first step).
    Scalar outputs become ``rlscope/<family>/<stat>``; array outputs (histograms) go to W&B only.
    """

    family: str
    fn: Callable
    inputs: tuple[str, ...]
    cost: str  # "cheap" (per step is fine), "medium", "heavy"
    every: int  # default cadence in optimizer steps
    doc: str = ""


REGISTRY: dict[str, Probe] = {}


def register(family: str, inputs: tuple[str, ...], cost: str = "cheap", every: int = 1):
    """Decorator: register ``fn`` as the probe of ``family``."""
    def deco(fn):
        REGISTRY[family] = Probe(family, fn, tuple(inputs), cost, every, (fn.__doc__ or "").strip().split("\n")[0])
        return fn
    return deco


def get_probe(name: str) -> Probe:
    _load_all()
    if name not in REGISTRY:
        close = difflib.get_close_matches(name, list(REGISTRY), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"unknown probe {name!r}; known probes: {sorted(REGISTRY)}.{hint}")
    return REGISTRY[name]


def token_probe_names() -> list[str]:
    _load_all()
    return [n for n, p in REGISTRY.items() if "logps" in p.inputs or "entropies" in p.inputs or "texts" in p.inputs]


def _load_all() -> None:
    from rlscope.probes import behavior, covariance, entropy  # noqa: F401  (registration side effect)
