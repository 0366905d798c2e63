"""A user's reward function, guarded: an exception inside it is re-raised naming the function, or the batch is scored
again one sample at a time and the samples it still raises on score NaN (``reward_errors: skip``). Used by
:class:`rlscope.trainers.dapo.DAPOTrainer`."""

from __future__ import annotations

import functools
from typing import Callable


class RewardFunctionError(RuntimeError):
    """A user reward function raised; the message names it."""


class GuardedReward:
    """A user reward function, wrapped. ``policy`` 'raise': an exception inside it is re-raised naming the function
    (TRL would surface a bare traceback). 'skip': the batch is scored again one sample at a time, and a sample the
    function still raises on scores None (TRL's NaN); its index lands in ``skipped`` (read and cleared by the trainer
    once per batch) and the first few errors per batch are logged with the sample."""

    LOGGED_PER_BATCH = 3

    def __init__(self, func: Callable, policy: str = "raise"):
        self.func, self.policy = func, policy
        self.__name__ = getattr(func, "__name__", type(func).__name__)
        functools.update_wrapper(self, func)
        self.skipped: list[int] = []

    def __call__(self, *args, **kwargs):
        try:
            return self.func(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 -- re-raised with the function's name, or retried per sample
            if self.policy != "skip":
                raise RewardFunctionError(f"reward function {self.__name__!r} raised {type(exc).__name__}: "
                                          f"{exc}") from exc
        return self._one_by_one(args, kwargs)

    def _one_by_one(self, args, kwargs) -> list:
        import logging

        n = len(kwargs.get("completions") or kwargs.get("prompts") or [])
        out = []
        for i in range(n):
            one = {k: [v[i]] if isinstance(v, (list, tuple)) and len(v) == n else v for k, v in kwargs.items()}
            try:
                out.append(self.func(*args, **one)[0])
            except Exception as exc:  # noqa: BLE001 -- this sample is unscorable
                out.append(None)
                self.skipped.append(i)
                if len(self.skipped) <= self.LOGGED_PER_BATCH:
                    prompt = str((kwargs.get("prompts") or [""] * n)[i])[-120:]
                    logging.getLogger("rlscope").warning(
                        "reward function %r raised %s: %s on sample %d of the batch (prompt ...%r); scored NaN "
                        "(reward_errors: skip)", self.__name__, type(exc).__name__, exc, i, prompt)
        return out
