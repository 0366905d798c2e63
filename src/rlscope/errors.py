"""Errors a user can fix, and how the command line shows them.

A problem with what the user gave -- a recipe, a flag, a path, a checkpoint -- raises :class:`UsageError` (or its
subclass :class:`rlscope.registry.UnknownName`) with one message naming the problem and the fix. The command line
(``rlscope ...``, ``python -m rlscope.train``) prints that message on one line and exits with status 2; ``--debug``
(anywhere on the command line) or ``RLSCOPE_DEBUG=1`` shows the traceback instead. Anything else is a fault in rlscope
or below it and keeps its traceback. The docs' "Bad input" table (docs/bad-input.md) lists the cases; ``tests/test_bad_input.py`` runs
every row.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

EXIT_USAGE = 2


class UsageError(ValueError):
    """What the user gave is wrong; the message says what and how to fix it. A ``ValueError``, so library callers
    that catch those keep working."""


class MissingInput(UsageError, FileNotFoundError):
    """A path the user gave that is not there (also a ``FileNotFoundError``)."""


def debug_requested(argv: list[str]) -> tuple[bool, list[str]]:
    """Whether ``--debug`` is on (the flag anywhere in ``argv``, or ``RLSCOPE_DEBUG=1``), and ``argv`` without it."""
    rest = [a for a in argv if a != "--debug"]
    return len(rest) < len(argv) or os.environ.get("RLSCOPE_DEBUG", "") not in ("", "0"), rest


def run_command(fn: Callable[[list[str]], int | None], argv: list[str]) -> int:
    """Run ``fn(argv)``: a :class:`UsageError` becomes one line on stderr and exit status 2 (with ``--debug``, the
    traceback). Returns the exit status."""
    debug, argv = debug_requested(argv)
    before = os.environ.get("RLSCOPE_DEBUG")
    if debug:
        os.environ["RLSCOPE_DEBUG"] = "1"  # child processes and accelerate-launched ranks see it too
    try:
        return int(fn(argv) or 0)
    except UsageError as exc:
        if debug:
            raise
        print(f"rlscope: error: {exc}\n(--debug shows the traceback)", file=sys.stderr)
        return EXIT_USAGE
    finally:  # only for this command: a later call in the same process (a notebook, a test) is not in debug mode
        if before is None:
            os.environ.pop("RLSCOPE_DEBUG", None)
        else:
            os.environ["RLSCOPE_DEBUG"] = before
