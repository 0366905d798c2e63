"""Readers: one file per log format, each turning a run into a :class:`~rlscope.analysis.frame.RunFrame`.

A reader registers itself (``@READERS.register("csv")``) with ``detect(path) -> bool`` (cheap: a file name or the
first kilobytes) and ``read(path) -> RunFrame``. :func:`read_run` picks the format from the path (or takes ``fmt``);
an unknown format, and a file without a step axis, get one clear error naming the formats and the fix.
"""

from __future__ import annotations

from pathlib import Path

from rlscope.errors import UsageError
from rlscope.analysis.frame import RunFrame
from rlscope.registry import Registry


class Reader:
    """A log format: ``name``, ``describe`` (one line for messages and the docs), ``detect``, ``read``."""

    name = "reader"
    describe = ""

    def detect(self, path: Path) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def read(self, path: Path) -> RunFrame:  # pragma: no cover - abstract
        raise NotImplementedError


READERS: Registry[Reader] = Registry("log format", package="rlscope.analysis.readers")


def reader(cls: type[Reader]) -> type[Reader]:
    """Class decorator: register one instance of a reader under its ``name``."""
    READERS.register(cls.name, cls())
    return cls


class NoStepAxis(UsageError):
    """A log that holds metrics but no training step to put them on."""


# detection order: the most specific formats first (an rlscope run directory also holds a wandb/ directory)
ORDER = ("rlscope", "wandb", "trainer_state", "tensorboard", "trl_console", "verl_log", "passk_curve", "csv")


def detect_format(path: str | Path) -> str:
    if str(path).startswith("wandb://"):  # before Path(), which would fold the '//'
        return "wandb_api"
    path = Path(path)
    if not path.exists():
        from rlscope.errors import MissingInput

        raise MissingInput(f"no run or log at {path} (an rlscope run directory, a W&B offline run, "
                           f"trainer_state.json, TensorBoard events, a verl console log or a CSV file)")
    names = [*ORDER, *(n for n in READERS.names() if n not in ORDER)]
    for name in names:
        if READERS.get(name).detect(path):
            return name
    formats = "; ".join(f"{n}: {READERS.get(n).describe}" for n in names)
    raise UsageError(f"cannot tell the log format of {path}. Known formats -- {formats}. If it is one of them, say "
                     f"which with --format NAME; otherwise export the run as CSV (a step column and one column per "
                     f"metric).")


def read_run(path: str | Path, fmt: str | None = None, salvage: bool = False,
             logging_steps: int | None = None) -> RunFrame:
    """Read a run or log into a frame; ``fmt`` (a registered format name) skips detection. ``salvage``: read around
    corrupt records (an rlscope run directory; the frame's ``meta["skipped"]`` says what was left out) -- the other
    formats are read up to their first damaged record anyway. ``logging_steps``: the run's logging interval, for a
    format whose steps may come from the records' order (a TRL console log)."""
    import inspect

    fmt = fmt or detect_format(path)
    target = path if str(path).startswith("wandb://") else Path(path)
    reader_ = READERS.get(fmt)
    params = inspect.signature(reader_.read).parameters
    kw = {"logging_steps": logging_steps} if logging_steps is not None and "logging_steps" in params else {}
    if salvage and "salvage" in params:
        kw["salvage"] = True
    frame = reader_.read(target, **kw)
    if not frame.raw and not frame.passk:  # a pass@k curve table holds curves, no metric series
        raise NoStepAxis(f"{path} ({fmt}): no metric with a step was found")
    return frame
