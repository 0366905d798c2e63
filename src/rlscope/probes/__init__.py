"""Probes: pure functions that turn what training produced into named statistics, declared once, used live and offline.

A probe is one file in this package that registers itself::

    @register("entropy", source="tokens", inputs=("entropies", "mask", "correct"), outputs=("mean", ...),
              cost="cheap", cadence=Cadence(every=1))
    def entropy_stats(batch, state, top_share=0.2): ...

* ``source`` -- where its inputs come from (:data:`SOURCES`): ``tokens`` (the per-token tensors of the training loss,
  a :class:`~rlscope.probes.batch.TokenBatch`), ``weights`` (the selected matrices against W_0), ``samples`` (pass@k
  counts of sampled completions), ``gradients`` (per-parameter gradient and update norms of an optimizer step). The
  live engine (:mod:`rlscope.callbacks.engine`) feeds each probe its source's view; offline code feeds the same
  function the same view built from stored data.
* ``inputs`` -- the fields of the view it reads. The engine acts on them: only the inputs of due probes are gathered
  across ranks, and completion text is decoded only when a due probe reads a text feature.
* ``outputs`` -- the scalar statistics it returns, each written as ``rlscope/<name>/<stat>`` (plus ``seconds``, the
  time the engine measured); ``<...>`` marks a part that depends on the data or the options (``pass@<k>``,
  ``kind/<kind>/norm``). ``extras`` -- its non-scalar outputs (W&B media, store records).
* ``cost`` -- ``cheap`` (fine every step), ``medium``, ``heavy`` (the engine warns when a heavy probe runs every step).
* ``cadence`` -- the default :class:`~rlscope.cadence.Cadence`; users override it per probe.
* ``per_rank`` -- the probe runs on every rank with that rank's share of the view and combines the shares exactly
  through ``view.comm`` (:mod:`rlscope.probes.reduce`: sums, counts, selection -- nothing that grows with the tokens).
  Otherwise it runs on the main process on the whole view (for the tokens source: every rank's tokens gathered there).
  Either way it must give the statistics of the whole step; offline, a view holding everything has a ``LocalComm``.
* ``restore`` -- optional ``restore(reader, state)``: rebuild the probe's remembered state from a run store when a
  run is resumed (e.g. the pass@k base curve).
* ``persist`` -- keys of ``state`` holding tensors (``{key: {name: tensor or tuple}}``) that a resumed run needs
  and the store's records cannot give back (e.g. the previous dominant direction of dW): the engine saves them after
  each run of the probe (``<run>/state/<probe>/step<N>.safetensors``) and a resume loads those of the last run at
  or before its step.

``fn(view, state, **options) -> dict``: ``state`` is a dict the probe may use to remember values across calls; its
keyword options are the probe's options. Values are floats (metrics), or the output types below for what is not a
scalar. Probe modules import nothing from the trainer, W&B or the run store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from rlscope.cadence import Cadence
from rlscope.common import keyword_options
from rlscope.registry import Registry

SOURCES = ("tokens", "weights", "samples", "gradients")
COSTS = ("cheap", "medium", "heavy")


@dataclass(frozen=True)
class Probe:
    """A registered probe (see the module docstring)."""

    name: str
    fn: Callable
    source: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    extras: tuple[str, ...]
    cost: str
    cadence: Cadence
    restore: Callable | None = None
    doc: str = ""
    persist: tuple[str, ...] = ()
    per_rank: bool = False

    @property
    def options(self) -> dict[str, object]:
        """The probe function's keyword options (after ``view, state``) and their defaults."""
        return keyword_options(self.fn, skip=2)

    def metric_names(self) -> list[str]:
        """The metrics it writes: ``rlscope/<name>/<output>`` and ``rlscope/<name>/seconds``."""
        return [f"rlscope/{self.name}/{o}" for o in (*self.outputs, "seconds")]

    def describe(self) -> dict:
        """A JSON-ready description (``rlscope probes --json``)."""
        return {"name": self.name, "source": self.source, "inputs": list(self.inputs), "cost": self.cost,
                "per_rank": self.per_rank,
                "cadence": str(self.cadence), "options": {k: _jsonable(v) for k, v in self.options.items()},
                "metrics": self.metric_names(), "extras": [f"rlscope/{self.name}/{e}" for e in self.extras],
                "doc": self.doc}


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value


PROBES: Registry[Probe] = Registry("probe", package="rlscope.probes")


def register(name: str, *, source: str, inputs: tuple[str, ...], outputs: tuple[str, ...],
             extras: tuple[str, ...] = (), cost: str = "cheap", cadence: Cadence = Cadence(every=1),
             restore: Callable | None = None, persist: tuple[str, ...] = (), per_rank: bool = False):
    """Decorator: declare ``fn`` as the probe ``name`` (see the module docstring)."""
    if source not in SOURCES:
        raise ValueError(f"probe {name!r}: source must be one of {SOURCES}, got {source!r}")
    if cost not in COSTS:
        raise ValueError(f"probe {name!r}: cost must be one of {COSTS}, got {cost!r}")

    def deco(fn):
        doc = (fn.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        PROBES.register(name, Probe(name, fn, source, tuple(inputs), tuple(outputs), tuple(extras), cost, cadence,
                                    restore, " ".join(doc.split()), tuple(persist), bool(per_rank)))
        return fn

    return deco


def get_probe(name: str) -> Probe:
    return PROBES.get(name)


# -- outputs that are not scalars ------------------------------------------------------------------------------------


@dataclass
class Histogram:
    """A histogram (W&B only): ``counts`` per bin, bin ``edges`` (len(counts) + 1)."""

    counts: list
    edges: list


@dataclass
class Curves:
    """Curves over a shared x axis (W&B: a line plot and a Table): ``series`` maps a label to its y values."""

    x: list
    series: dict[str, list]
    title: str = ""
    xname: str = "x"


@dataclass
class Table:
    """Rows for a W&B Table: ``columns`` and one list of values per row."""

    columns: list[str]
    rows: list[list]


@dataclass
class Records:
    """Rows for a run-store stream (``<stream>.jsonl``), each stored with the probe's step."""

    stream: str
    rows: list[dict] = field(default_factory=list)


def scalars_of(result: dict) -> dict[str, float]:
    """The scalar outputs of a probe result."""
    return {k: float(v) for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


__all__ = ["COSTS", "Cadence", "Curves", "Histogram", "PROBES", "Probe", "Records", "SOURCES", "Table", "get_probe",
           "register", "scalars_of"]
