"""Verifiable tasks: the embedded synthetic ``chainsum`` and real ones (``gsm8k``, ``math``) via ``datasets``."""

from __future__ import annotations

import difflib

from rlscope.tasks.base import Task


def _registry():
    from rlscope.tasks.chainsum_task import ChainSumTask
    from rlscope.tasks.math_tasks import GSM8KTask, MATHTask

    return {"chainsum": ChainSumTask, "gsm8k": GSM8KTask, "math": MATHTask}


def task_names() -> list[str]:
    return sorted(_registry())


def get_task(name: str, **kwargs) -> Task:
    """Build a task by name; an unknown name raises with the closest known names."""
    reg = _registry()
    if name not in reg:
        close = difflib.get_close_matches(name, reg, n=2)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown task {name!r}; known tasks: {sorted(reg)}{hint}")
    return reg[name](**kwargs)


__all__ = ["Task", "get_task", "task_names"]
