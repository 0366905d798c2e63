"""Probe sources: where the live engine gets each probe's inputs (one file per source, registered in :data:`SOURCES`).

A source turns what a running trainer has into the *view* its probes read (``rlscope.probes`` declares which source a
probe reads). The engine (:mod:`rlscope.callbacks.engine`) calls, on every rank:

* ``bind(trainer, engine)`` -- once, when attached (install taps or hooks on the trainer);
* ``setup(ctx)`` -- at the start of training (snapshot a reference, bind the tokenizer);
* ``prepare(ctx, probes)`` -- before an optimizer step at which some of its probes (or its own extra work, see
  ``wants``) are due: arm what records during the step;
* ``collect(ctx, probes) -> view | None`` -- when probes are due: a collective on every rank; the view on the main
  process (None elsewhere), or None everywhere when there is nothing to probe. A source whose probes may run on every
  rank (declared ``per_rank``) returns :class:`RankViews` on every rank instead: each rank's share for those, the whole
  view on the main process for the others.

Options of a source are its constructor's keyword arguments (``rlscope.attach(trainer, tokens={"dump_every": 5})``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlscope.common import keyword_options
from rlscope.registry import Registry, check_names


@dataclass
class RankViews:
    """A source's views when some due probes run per rank: ``local`` -- this rank's share, on every rank (its ``comm``
    joins the ranks), for the ``per_rank`` probes (None when none is due); ``whole`` -- every rank's data, on the main
    process only (None elsewhere, or when only per-rank probes are due), for the others."""

    local: Any = None
    whole: Any = None

    def for_probe(self, probe):
        return self.local if probe.per_rank else self.whole


@dataclass
class Context:
    """Where the engine is when it calls a source.

    ``step``: the run's step (the trainer's step plus the run's offset, e.g. after an SFT warm start);
    ``trainer_step``: the trainer's global step; ``when``: "start" (before the first update), "step" or "end";
    ``model`` / ``tokenizer``: what the trainer hands its callbacks (the model is unwrapped: no DDP/DeepSpeed shell).
    """

    step: int
    trainer_step: int
    when: str
    model: Any
    tokenizer: Any
    is_main: bool
    engine: Any


class Source:
    """Base class (see the module docstring). ``name`` is the source's registered name."""

    name = "source"

    def bind(self, trainer, engine) -> None:
        self.engine = engine

    def setup(self, ctx: Context) -> None:
        """At the start of training (every rank)."""

    def wants(self, trainer_step: int) -> bool:
        """Whether the source has work of its own at ``trainer_step`` even when none of its probes is due."""
        return False

    def prepare(self, ctx: Context, probes: list) -> None:
        """Before an optimizer step at which ``probes`` (maybe none, see ``wants``) are due (every rank)."""

    def collect(self, ctx: Context, probes: list):  # pragma: no cover - abstract
        raise NotImplementedError

    def check(self, probe_name: str, options: dict) -> None:
        """Reject probe options that cannot work with this source's options (called when the engine is built)."""

    @classmethod
    def options(cls) -> dict[str, object]:
        """The source's options (constructor keywords) and their defaults."""
        return keyword_options(cls.__init__, skip=1)

    @classmethod
    def build(cls, options: dict) -> "Source":
        check_names("option", options, cls.options(), where=f"of source {cls.name!r}")
        return cls(**options)


SOURCES: Registry[type[Source]] = Registry("source", package="rlscope.callbacks.sources")
