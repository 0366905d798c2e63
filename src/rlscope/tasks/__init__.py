"""Verifiable tasks: the embedded synthetic ``chainsum`` and real ones (``gsm8k``, ``math``) via ``datasets``.

A task file registers its class in :data:`TASKS` (``@TASKS.register("name")``); :func:`get_task` builds one by name
and refuses unknown options with the usual message.
"""

from __future__ import annotations

from rlscope.registry import Registry, check_names
from rlscope.tasks.base import Task

TASKS: Registry[type[Task]] = Registry("task", package="rlscope.tasks")


def get_task(name: str, **options) -> Task:
    """Build the task called ``name`` with its options (e.g. ``get_task("chainsum", seed=0, n_heldout=256)``)."""
    cls = TASKS.get(name)
    check_names("option", sorted(options), cls.option_names(), where=f"of task {name!r}")
    return cls(**options)


__all__ = ["TASKS", "Task", "get_task"]
